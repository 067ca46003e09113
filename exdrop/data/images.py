"""Image datasets: ImageFolder trees, CIFAR pickle batches and a generated demo set."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .registry import REQUIRED, DataOption, DatasetBundle, register_dataset

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Options shared by every image kind: transforms follow timm's create_transform.
TRANSFORM_OPTIONS = {
    "img_size": DataOption(int, 224, "square input size in pixels; also passed to the model as img_size"),
    "scale": DataOption(list, [0.08, 1.0], "RandomResizedCrop area range for training"),
    "ratio": DataOption(list, [0.75, 1.3333], "RandomResizedCrop aspect-ratio range"),
    "hflip": DataOption(float, 0.5, "horizontal flip probability for training"),
    "color_jitter": DataOption(float, 0.0, "color jitter strength for training (0 disables)"),
    "auto_augment": DataOption(str, None, "timm auto-augment policy, e.g. 'rand-m9-mstd0.5'"),
    "re_prob": DataOption(float, 0.0, "random erasing probability for training"),
    "crop_pct": DataOption(float, 1.0, "evaluation center-crop fraction (timm's crop_pct)"),
    "interpolation": DataOption(str, "bicubic", "resize interpolation"),
    "mean": DataOption(list, [0.485, 0.456, 0.406], "normalization mean per channel"),
    "std": DataOption(list, [0.229, 0.224, 0.225], "normalization std per channel"),
}


def build_transforms(options: dict[str, Any]) -> tuple[Callable, Callable]:
    """Return timm's training and evaluation transforms for the configured options."""
    from timm.data import create_transform

    common = dict(
        input_size=(3, options["img_size"], options["img_size"]),
        interpolation=options["interpolation"],
        mean=tuple(options["mean"]),
        std=tuple(options["std"]),
    )
    train = create_transform(
        is_training=True,
        scale=tuple(options["scale"]),
        ratio=tuple(options["ratio"]),
        hflip=options["hflip"],
        color_jitter=options["color_jitter"] or None,
        auto_augment=options["auto_augment"],
        re_prob=options["re_prob"],
        **common,
    )
    evaluate = create_transform(is_training=False, crop_pct=options["crop_pct"], **common)
    return train, evaluate


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, raising an error that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RuntimeError(f"unreadable image {path}: {err}. Remove or replace the file.") from err


class ImageListDataset(Dataset):
    """Images given as ``(path, label)`` pairs, decoded on access."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Optional[Callable] = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = load_image(path)
        return (self.transform(img) if self.transform else img), label


class ArrayImageDataset(Dataset):
    """Images held in memory: a ``(N, H, W, 3)`` uint8 array or a list of ``(H, W, 3)`` arrays."""

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: Sequence[int],
        transform: Optional[Callable] = None,
    ) -> None:
        self.images = images
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform else img), self.labels[index]


def _limit_per_class(samples: Sequence[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    counts: dict[int, int] = {}
    kept = []
    for path, label in samples:
        if counts.get(label, 0) < limit:
            kept.append((path, label))
            counts[label] = counts.get(label, 0) + 1
    return kept


def _decoded(samples: Sequence[tuple[str, int]], transform: Callable) -> ArrayImageDataset:
    images = [np.asarray(load_image(path)) for path, _ in samples]
    return ArrayImageDataset(images, [label for _, label in samples], transform)


def scan_image_folder(root: Path, classes: Optional[Sequence[str]] = None) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``root/<class>/<image>`` files; class indices follow sorted class names."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"no class folders in {root}; expected {root}/<class>/<image files>")
    samples = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} is missing (the training split has it)")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend((str(p), index) for p in files)
    if not samples:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return samples, list(classes)


@register_dataset(
    "image_folder",
    {
        "root": DataOption(str, REQUIRED, "folder holding the split folders", is_path=True),
        "train_split": DataOption(str, "train", "training split folder under root"),
        "val_split": DataOption(str, "val", "evaluation split folder under root"),
        "cache": DataOption(bool, False, "decode every image once into memory (small data sets)"),
        "max_per_class": DataOption(int, None, "use at most this many images per class from each split"),
        **TRANSFORM_OPTIONS,
    },
    help="ImageFolder layout: root/<split>/<class>/<image>",
    load_input=lambda path, options: build_transforms(options)[1](load_image(path)),
)
def build_image_folder(options: dict[str, Any]) -> DatasetBundle:
    """Build train and evaluation sets from ``root/<split>/<class>/*.jpg``."""
    root = Path(options["root"])
    train_samples, classes = scan_image_folder(root / options["train_split"])
    val_samples, _ = scan_image_folder(root / options["val_split"], classes)
    if options["max_per_class"] is not None:
        train_samples = _limit_per_class(train_samples, options["max_per_class"])
        val_samples = _limit_per_class(val_samples, options["max_per_class"])
    train_tf, eval_tf = build_transforms(options)
    logger.info("image_folder %s: %d training and %d evaluation images, %d classes",
                root, len(train_samples), len(val_samples), len(classes))
    if options["cache"]:
        train_set: Dataset = _decoded(train_samples, train_tf)
        val_set: Dataset = _decoded(val_samples, eval_tf)
    else:
        train_set, val_set = ImageListDataset(train_samples, train_tf), ImageListDataset(val_samples, eval_tf)
    return DatasetBundle(
        train=train_set,
        val=val_set,
        num_classes=len(classes),
        class_names=classes,
        model_kwargs={"img_size": options["img_size"]},
    )


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise RuntimeError(f"corrupt CIFAR batch file {path}: {err}") from err


def read_cifar(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int], list[str]]:
    """Read the python-pickle release of CIFAR-10 or CIFAR-100 from ``root``.

    ``root`` is the extracted ``cifar-10-batches-py`` (``data_batch_1..5``,
    ``test_batch``, ``batches.meta``) or ``cifar-100-python`` (``train``, ``test``,
    ``meta``) folder. Images come back as ``(N, 32, 32, 3)`` uint8.
    """
    if (root / "data_batch_1").exists():
        train_files = sorted(root.glob("data_batch_*"))
        test_files = [root / "test_batch"]
        meta, label_key, names_key = root / "batches.meta", b"labels", b"label_names"
    elif (root / "train").is_file():
        train_files, test_files = [root / "train"], [root / "test"]
        meta, label_key, names_key = root / "meta", b"fine_labels", b"fine_label_names"
    else:
        raise FileNotFoundError(
            f"no CIFAR pickle files found in {root}: expected CIFAR-10 (data_batch_1, ...) or CIFAR-100 (train, test)"
        )

    def load(files: list[Path]) -> tuple[np.ndarray, list[int]]:
        arrays, labels = [], []
        for path in files:
            batch = _read_pickle(path)
            if b"data" not in batch or label_key not in batch:
                raise RuntimeError(f"CIFAR batch file {path} has no {b'data'!r}/{label_key!r} entries")
            arrays.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch[label_key])
        return np.concatenate(arrays).transpose(0, 2, 3, 1).copy(), labels

    train_x, train_y = load(train_files)
    test_x, test_y = load(test_files)
    names = [n.decode() for n in _read_pickle(meta)[names_key]] if meta.exists() else []
    return train_x, train_y, test_x, test_y, names


@register_dataset(
    "cifar_pickle",
    {
        "root": DataOption(str, REQUIRED, "cifar-10-batches-py or cifar-100-python folder", is_path=True),
        **TRANSFORM_OPTIONS,
    },
    help="CIFAR-10/100 python-pickle release",
    load_input=lambda path, options: build_transforms(options)[1](load_image(path)),
)
def build_cifar(options: dict[str, Any]) -> DatasetBundle:
    """Build CIFAR train and test sets from the pickle batches."""
    train_x, train_y, test_x, test_y, names = read_cifar(Path(options["root"]))
    num_classes = max(train_y) + 1
    train_tf, eval_tf = build_transforms(options)
    return DatasetBundle(
        train=ArrayImageDataset(train_x, train_y, train_tf),
        val=ArrayImageDataset(test_x, test_y, eval_tf),
        num_classes=num_classes,
        class_names=names or [str(i) for i in range(num_classes)],
        model_kwargs={"img_size": options["img_size"]},
    )


SHAPE_CLASSES = ("horizontal_stripes", "vertical_stripes", "disk", "ring", "cross", "checkerboard")


def _draw_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one ``(size, size, 3)`` uint8 image of a shape class with random colors, position and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fg = rng.uniform(0.4, 1.0, size=3)
    bg = rng.uniform(0.0, 0.35, size=3)
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    radius = rng.uniform(0.2, 0.32) * size
    period = rng.uniform(0.15, 0.3) * size
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "horizontal_stripes":
        mask = np.sin(2 * math.pi * yy / period + phase) > 0
    elif kind == "vertical_stripes":
        mask = np.sin(2 * math.pi * xx / period + phase) > 0
    elif kind == "disk":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    elif kind == "ring":
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask = np.abs(dist - radius) < 0.25 * radius
    elif kind == "cross":
        width = 0.12 * size
        mask = ((np.abs(yy - cy) < width) | (np.abs(xx - cx) < width)) & (
            (np.abs(yy - cy) < radius * 1.3) & (np.abs(xx - cx) < radius * 1.3)
        )
    else:  # checkerboard
        mask = ((np.floor((yy + phase) / period) + np.floor((xx + phase) / period)) % 2) == 0
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0.0, 0.08, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def generate_shapes(num_images: int, size: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Generate a balanced set of shape images and labels, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    labels = [i % len(SHAPE_CLASSES) for i in range(num_images)]
    images = np.stack([_draw_shape(SHAPE_CLASSES[label], size, rng) for label in labels])
    return images, labels


@register_dataset(
    "synthetic_shapes",
    {
        "num_train": DataOption(int, 1800, "generated training images"),
        "num_val": DataOption(int, 600, "generated evaluation images"),
        "seed": DataOption(int, 0, "generator seed; evaluation images use seed + 1"),
        **{**TRANSFORM_OPTIONS, "img_size": DataOption(int, 32, "image size in pixels")},
    },
    help="six classes of generated shapes and textures, made in memory (no files needed)",
    load_input=lambda path, options: build_transforms(options)[1](load_image(path)),
)
def build_synthetic_shapes(options: dict[str, Any]) -> DatasetBundle:
    """Build the generated shapes dataset used by the demo config."""
    size = options["img_size"]
    train_x, train_y = generate_shapes(options["num_train"], size, options["seed"])
    val_x, val_y = generate_shapes(options["num_val"], size, options["seed"] + 1)
    train_tf, eval_tf = build_transforms(options)
    return DatasetBundle(
        train=ArrayImageDataset(train_x, train_y, train_tf),
        val=ArrayImageDataset(val_x, val_y, eval_tf),
        num_classes=len(SHAPE_CLASSES),
        class_names=list(SHAPE_CLASSES),
        model_kwargs={"img_size": size},
    )
