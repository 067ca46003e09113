"""Video datasets: class folders, list files and a forward/reversed task on real videos.

Samples are ``(clip, label)`` with ``clip`` a float tensor ``(3, T, H, W)``.
Decoding happens in ``__getitem__``, so it runs in DataLoader workers; the
datasets hold only paths and settings and pickle cheaply.
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .registry import REQUIRED, DataOption, DatasetBundle, register_dataset
from .video_decode import VideoDecodeError, VideoTooShortError, probe_video, read_frames
from .video_transforms import ClipTransform, FrameSampler

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp")
ON_ERROR = ("fail", "skip")

CLIP_OPTIONS = {
    "num_frames": DataOption(int, 16, "frames per clip; also passed to the model as num_frames"),
    "sampling": DataOption(str, "dense", "'dense' (frames stride apart) or 'uniform' (one frame per segment, TSN)"),
    "stride": DataOption(int, 4, "frame step of dense clips"),
    "img_size": DataOption(int, 224, "clip height and width in pixels; also passed to the model as img_size"),
    "scale": DataOption(list, [0.25, 1.0], "training random-resized-crop area range"),
    "ratio": DataOption(list, [0.75, 1.3333], "training random-resized-crop aspect-ratio range"),
    "hflip": DataOption(float, 0.5, "training horizontal flip probability (one decision per clip)"),
    "crop_pct": DataOption(float, 0.875, "evaluation crop as a fraction of the resized short side"),
    "mean": DataOption(list, [0.485, 0.456, 0.406], "normalization mean per channel"),
    "std": DataOption(list, [0.229, 0.224, 0.225], "normalization std per channel"),
    "num_clips": DataOption(int, 1, "evaluation clips per video; their predictions are averaged"),
    "num_crops": DataOption(int, 1, "evaluation spatial crops per clip (1 or 3); predictions are averaged"),
    "on_error": DataOption(str, "fail", "unreadable or too-short video: 'fail' raises, 'skip' logs and leaves it out"),
    "check_videos": DataOption(bool, True, "probe every video when the dataset is built (catches bad files early)"),
}


def _sampler(options: dict[str, Any]) -> FrameSampler:
    return FrameSampler(num_frames=options["num_frames"], mode=options["sampling"], stride=options["stride"])


def _transform(options: dict[str, Any], train: bool) -> ClipTransform:
    return ClipTransform(
        size=options["img_size"], train=train, scale=tuple(options["scale"]), ratio=tuple(options["ratio"]),
        hflip=options["hflip"], crop_pct=options["crop_pct"], mean=tuple(options["mean"]), std=tuple(options["std"]),
    )


def _decode_short_side(options: dict[str, Any]) -> int:
    """Decode at the evaluation resize target, so 1080p frames never reach Python at full size."""
    return max(options["img_size"], round(options["img_size"] / options["crop_pct"]))


def _check_on_error(value: str) -> None:
    if value not in ON_ERROR:
        raise ValueError(f"on_error={value!r} is invalid; use 'fail' or 'skip'")


def check_videos(
    samples: Sequence[tuple[str, int]], min_frames: int, on_error: str, what: str = "videos"
) -> list[tuple[str, int]]:
    """Probe each video; drop unreadable or too-short ones (``skip``) or raise on the first (``fail``)."""
    _check_on_error(on_error)
    kept, bad = [], []
    for path, label in samples:
        try:
            info = probe_video(path)
            if info.num_frames < min_frames:
                raise VideoTooShortError(path, f"{info.num_frames} frames, a clip needs {min_frames}")
        except VideoDecodeError as err:
            if on_error == "fail":
                advice = "Replace the video or remove it from the dataset, or set data.on_error: skip to leave it out"
                raise type(err)(err.path, f"{err.reason}. {advice}") from err
            logger.warning("skipping %s", err)
            bad.append(err.path)
            continue
        kept.append((path, label))
    if bad:
        logger.warning("skipped %d of %d %s that could not be used", len(bad), len(samples), what)
    if not kept:
        raise ValueError(f"no usable {what} left out of {len(samples)}")
    return kept


class VideoClipDataset(Dataset):
    """Clips of labeled videos, ``num_clips * num_crops`` views per video in evaluation.

    Item ``i`` is view ``i % views`` of video ``i // views``. With
    ``on_error="skip"``, a video that fails to decode in a worker is logged
    and replaced by the same view of the next video. Each process keeps its
    own count of skipped videos.

    Args:
        samples: ``(path, class index)`` pairs.
        sampler: Frame-index sampler.
        transform: Clip transform.
        train: Random clips and augmentation.
        num_clips: Evaluation clips per video.
        num_crops: Evaluation crops per clip.
        on_error: ``"fail"`` or ``"skip"``.
        short_side: Decode-time short side in pixels (``None`` keeps the size).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        sampler: FrameSampler,
        transform: ClipTransform,
        train: bool = False,
        num_clips: int = 1,
        num_crops: int = 1,
        on_error: str = "fail",
        short_side: Optional[int] = None,
    ) -> None:
        _check_on_error(on_error)
        self.samples = list(samples)
        self.sampler = sampler
        self.transform = transform
        self.train = train
        self.num_clips = 1 if train else num_clips
        self.num_crops = 1 if train else num_crops
        self.on_error = on_error
        self.short_side = short_side
        self.skipped = 0
        self._lengths: dict[str, int] = {}  # frame counts, filled per process

    @property
    def views(self) -> int:
        """Views per video (consecutive items)."""
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.samples) * self.views

    def load_view(self, path: str, view: int, rng: Optional[random.Random]) -> torch.Tensor:
        """Decode and transform one view of one video."""
        clip, crop = divmod(view, self.num_crops)
        if path not in self._lengths:
            self._lengths[path] = probe_video(path).num_frames
        num_video_frames = self._lengths[path]
        if num_video_frames < self.sampler.num_frames:
            raise VideoTooShortError(path, f"{num_video_frames} frames, a clip needs {self.sampler.num_frames}")
        indices = self.sampler(num_video_frames, clip=clip, num_clips=self.num_clips, rng=rng)
        frames = read_frames(path, indices, short_side=self.short_side)
        return self.transform(frames, crop=crop, num_crops=self.num_crops, rng=rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        video, view = divmod(index, self.views)
        rng = random.Random(random.getrandbits(64)) if self.train else None
        for attempt in range(len(self.samples)):
            path, label = self.samples[(video + attempt) % len(self.samples)]
            try:
                return self.load_view(path, view, rng), label
            except VideoDecodeError as err:
                if self.on_error == "fail":
                    raise
                self.skipped += 1
                logger.warning("skipping %s (%d skipped in this process)", err, self.skipped)
        raise RuntimeError("every video of the dataset failed to decode; see the warnings above")


def scan_video_folder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``root/<class>/<video>`` files (UCF101/HMDB51 layout) with class indices."""
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    samples = [
        (str(path), index)
        for index, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in VIDEO_SUFFIXES
    ]
    if not samples:
        raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in class folders under {root}")
    return samples, classes


def read_video_list(list_file: Path, data_root: Optional[Path] = None) -> list[tuple[str, str]]:
    """Read ``path label`` lines or a CSV with ``path``/``video`` and ``label``/``class`` columns.

    Relative paths are taken from ``data_root`` (default: the list file's folder).
    Labels stay strings here; integer labels keep their numeric order later.
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"video list file not found: {list_file}")
    base = data_root or list_file.parent
    rows: list[tuple[str, str]] = []
    if list_file.suffix.lower() == ".csv":
        with open(list_file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            path_key = next((k for k in ("path", "video", "filename", "file") if k in fields), None)
            label_key = next((k for k in ("label", "class", "category") if k in fields), None)
            if path_key is None or label_key is None:
                raise ValueError(f"{list_file}: CSV needs a path/video column and a label/class column, has {fields}")
            rows = [(row[path_key], row[label_key]) for row in reader]
    else:
        for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{number}: expected 'path label', got {line!r}")
            rows.append((parts[0], parts[1]))
    return [(str(Path(path) if Path(path).is_absolute() else base / path), label) for path, label in rows]


def _label_names(labels: Sequence[str]) -> list[str]:
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return [str(i) for i in range(max(int(label) for label in unique) + 1)]
    return sorted(unique)


def _clip_bundle(
    train: list[tuple[str, int]], val: list[tuple[str, int]], classes: list[str], options: dict[str, Any]
) -> DatasetBundle:
    _check_on_error(options["on_error"])
    if options["check_videos"]:
        train = check_videos(train, options["num_frames"], options["on_error"], "training videos")
        val = check_videos(val, options["num_frames"], options["on_error"], "evaluation videos")
    common = dict(sampler=_sampler(options), on_error=options["on_error"], short_side=_decode_short_side(options))
    train_set = VideoClipDataset(train, transform=_transform(options, True), train=True, **common)
    val_set = VideoClipDataset(
        val, transform=_transform(options, False), num_clips=options["num_clips"], num_crops=options["num_crops"],
        **common,
    )
    return DatasetBundle(
        train=train_set, val=val_set, num_classes=len(classes), class_names=classes,
        model_kwargs={"num_frames": options["num_frames"], "img_size": options["img_size"]},
        eval_views=val_set.views,
    )


def load_video_input(path: str, options: dict[str, Any]) -> torch.Tensor:
    """Decode one file into its evaluation views ``(V, 3, T, H, W)`` for prediction."""
    dataset = VideoClipDataset(
        [(path, 0)], sampler=_sampler(options), transform=_transform(options, False),
        num_clips=options["num_clips"], num_crops=options["num_crops"], short_side=_decode_short_side(options),
    )
    return torch.stack([dataset.load_view(path, view, rng=None) for view in range(dataset.views)])


@register_dataset(
    "video_folder",
    options={
        "root": DataOption(str, REQUIRED, "folder holding the split folders", is_path=True),
        "train_split": DataOption(str, "train", "training split folder under root, with one folder per class"),
        "val_split": DataOption(str, "val", "evaluation split folder under root, with the same class folders"),
        **CLIP_OPTIONS,
    },
    help="videos in root/<split>/<class>/*.mp4 (UCF101, HMDB51 layout)",
    load_input=load_video_input,
)
def build_video_folder(options: dict[str, Any]) -> DatasetBundle:
    """Build training and evaluation clip datasets from class folders."""
    root = Path(options["root"])
    train, classes = scan_video_folder(root / options["train_split"])
    val, val_classes = scan_video_folder(root / options["val_split"])
    if val_classes != classes:
        raise ValueError(
            f"class folders differ between {root / options['train_split']} and {root / options['val_split']}: "
            f"{sorted(set(classes) ^ set(val_classes))[:5]}"
        )
    return _clip_bundle(train, val, classes, options)


@register_dataset(
    "video_list",
    options={
        "train_list": DataOption(str, REQUIRED, "training list: 'path label' lines or a CSV", is_path=True),
        "val_list": DataOption(str, REQUIRED, "evaluation list in the same format", is_path=True),
        "data_root": DataOption(str, None, "folder for relative paths (default: the list file's folder)", is_path=True),
        **CLIP_OPTIONS,
    },
    help="videos named in list files (Kinetics style: 'path label' or CSV)",
    load_input=load_video_input,
)
def build_video_list(options: dict[str, Any]) -> DatasetBundle:
    """Build training and evaluation clip datasets from two list files."""
    data_root = Path(options["data_root"]) if options["data_root"] else None
    train_rows = read_video_list(Path(options["train_list"]), data_root)
    val_rows = read_video_list(Path(options["val_list"]), data_root)
    classes = _label_names([label for _, label in train_rows + val_rows])
    index = {name: i for i, name in enumerate(classes)}
    train = [(path, index[label]) for path, label in train_rows]
    val = [(path, index[label]) for path, label in val_rows]
    return _clip_bundle(train, val, classes, options)

