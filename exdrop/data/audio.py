"""Audio dataset kinds for AST: ``fsdd``, ``audio_folder`` and ``audio_manifest``.

Every kind shares the feature and augmentation options below and passes
``input_tdim`` and ``input_fdim`` to the model, so that the model's position
embeddings match the features.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..models.ast import AUDIOSET_MEAN, AUDIOSET_STD
from .audio_augment import Mixup, SpecAugment
from .audio_datasets import (
    AUDIO_SUFFIXES,
    ON_ERROR,
    AudioClipDataset,
    AudioItem,
    class_names_of,
    drop_unreadable,
    read_manifest,
    scan_class_folders,
    split_by_fold,
    split_by_fraction,
    split_by_lists,
)
from .audio_features import FbankConfig, waveform_to_features
from .audio_io import load_audio
from .registry import REQUIRED, DataOption, DatasetBundle, register_dataset

logger = logging.getLogger(__name__)

FEATURE_OPTIONS = {
    "sample_rate": DataOption(int, 16000, "rate in Hz that clips are resampled to before the fbank"),
    "num_mel_bins": DataOption(int, 128, "mel bins; passed to the model as input_fdim"),
    "target_frames": DataOption(int, 1024, "frames (10 ms each) after padding or cropping; passed to the model as input_tdim"),
    "mean": DataOption(float, AUDIOSET_MEAN, "mean of the log-mel features (scripts/audio_stats.py computes it)"),
    "std": DataOption(float, AUDIOSET_STD, "standard deviation of the log-mel features; features are divided by 2*std"),
    "dither": DataOption(float, 0.0, "Kaldi dither amplitude for training clips (evaluation always uses 0)"),
    "freq_mask": DataOption(int, 0, "SpecAugment: maximum frequency-mask width in mel bins (0: off)"),
    "time_mask": DataOption(int, 0, "SpecAugment: maximum time-mask width in frames (0: off)"),
    "num_masks": DataOption(int, 1, "SpecAugment: masks of each kind per clip"),
    "time_shift": DataOption(int, 0, "maximum random circular time shift in frames (0: off)"),
    "random_crop": DataOption(bool, False, "crop long training clips at a random start instead of the first frames"),
    "mixup_prob": DataOption(float, 0.0, "probability of mixing a training batch (0: off)"),
    "mixup_alpha": DataOption(float, 10.0, "Beta(alpha, alpha) parameter of the mixup weight"),
    "on_error": DataOption(str, "fail", "unreadable clip: 'fail' raises, 'skip' logs it and leaves it out"),
    "class_names": DataOption(list, None, "label names in class-index order (default: sorted labels found)"),
}

SPLIT_OPTIONS = {
    "val_fold": DataOption((int, str), None, "hold out this fold for evaluation (ESC-50 cross-validation)"),
    "val_list": DataOption(str, None, "file of validation paths relative to root (Speech Commands validation_list.txt)"),
    "test_list": DataOption(str, None, "file of test paths relative to root (Speech Commands testing_list.txt)"),
    "eval_split": DataOption(str, "test", "with val_list/test_list: evaluate on 'val' or 'test'"),
    "val_fraction": DataOption(float, 0.2, "without folds or lists: fraction of each class held out"),
    "seed": DataOption(int, 0, "seed of the val_fraction split"),
}


def feature_config(options: dict[str, Any]) -> FbankConfig:
    """Return the :class:`FbankConfig` of validated data options."""
    return FbankConfig(
        sample_rate=options["sample_rate"],
        num_mel_bins=options["num_mel_bins"],
        target_frames=options["target_frames"],
        mean=options["mean"],
        std=options["std"],
        dither=options["dither"],
    )


def load_audio_input(path: str, options: dict[str, Any]) -> torch.Tensor:
    """Turn one audio file into model input ``(target_frames, num_mel_bins)`` (for ``scripts/predict.py``)."""
    waveform, sample_rate = load_audio(path)
    defaults = {key: option.default for key, option in FEATURE_OPTIONS.items()}
    return waveform_to_features(waveform, sample_rate, feature_config({**defaults, **options}), dither=0.0)


def make_bundle(
    train_items: Sequence[AudioItem],
    val_items: Sequence[AudioItem],
    options: dict[str, Any],
    multilabel: bool = False,
    source: str = "audio",
) -> DatasetBundle:
    """Build the datasets, mixup and model arguments shared by every audio kind."""
    if options["on_error"] not in ON_ERROR:
        raise ValueError(f"data.on_error={options['on_error']!r} is not valid; use one of {', '.join(ON_ERROR)}")
    if not train_items or not val_items:
        raise ValueError(f"{source}: {len(train_items)} training and {len(val_items)} evaluation clips; both must be non-empty")
    class_names = class_names_of(list(train_items) + list(val_items), options["class_names"])
    if not multilabel:
        several = next((item for item in train_items if len(item.labels) > 1), None)
        if several is not None:
            raise ValueError(
                f"{several.path} has labels {', '.join(several.labels)}; set multilabel: true for multi-label data"
            )
    if options["on_error"] == "skip":
        train_items = drop_unreadable(train_items, "training")
        val_items = drop_unreadable(val_items, "evaluation")

    features = feature_config(options)
    common = dict(class_names=class_names, features=features, multilabel=multilabel, on_error=options["on_error"])
    train_set = AudioClipDataset(
        train_items,
        train=True,
        spec_augment=SpecAugment(options["freq_mask"], options["time_mask"], options["num_masks"]),
        time_shift=options["time_shift"],
        random_crop=options["random_crop"],
        **common,
    )
    val_set = AudioClipDataset(val_items, train=False, **common)
    mixup = None
    if options["mixup_prob"] > 0:
        mixup = Mixup(len(class_names), prob=options["mixup_prob"], alpha=options["mixup_alpha"], multilabel=multilabel)
    logger.info("%s: %d training and %d evaluation clips, %d classes%s",
                source, len(train_set), len(val_set), len(class_names), " (multi-label)" if multilabel else "")
    return DatasetBundle(
        train=train_set,
        val=val_set,
        num_classes=len(class_names),
        class_names=class_names,
        multilabel=multilabel,
        model_kwargs={"input_tdim": features.target_frames, "input_fdim": features.num_mel_bins},
        train_batch_transform=mixup,
    )


def _under_root(name: Optional[str], root: Path) -> Optional[Path]:
    """Resolve a list file name relative to ``root`` unless it is absolute."""
    if name is None:
        return None
    path = Path(name)
    return path if path.is_absolute() else root / path


def _split(items: list[AudioItem], options: dict[str, Any], root: Path) -> tuple[list[AudioItem], list[AudioItem]]:
    """Apply the first configured split: fold, then lists, then a stratified fraction."""
    if options["val_fold"] is not None:
        return split_by_fold(items, options["val_fold"])
    if options["val_list"] or options["test_list"]:
        val_list = _under_root(options["val_list"], root)
        test_list = _under_root(options["test_list"], root)
        return split_by_lists(items, root, val_list, test_list, options["eval_split"])
    return split_by_fraction(items, options["val_fraction"], options["seed"])


FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def scan_fsdd(root: Path, test_max_index: int = 4) -> tuple[list[AudioItem], list[AudioItem]]:
    """List FSDD recordings ``{digit}_{speaker}_{index}.wav``; indices up to ``test_max_index`` are test clips."""
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"FSDD folder not found: {root}")
    train, test = [], []
    for path in sorted(folder.glob("*.wav")):
        match = FSDD_NAME.match(path.stem)
        if match is None:
            logger.warning("ignoring %s: not named {digit}_{speaker}_{index}.wav", path)
            continue
        digit, _, index = match.groups()
        item = AudioItem(str(path), (digit,))
        (test if int(index) <= test_max_index else train).append(item)
    if not train and not test:
        raise ValueError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}")
    return train, test


@register_dataset(
    "fsdd",
    {
        "root": DataOption(str, REQUIRED, "FSDD folder (or its recordings/ subfolder)", is_path=True),
        "test_max_index": DataOption(int, 4, "recordings with index <= this are the test split (the usual 0-4)"),
        **FEATURE_OPTIONS,
    },
    help="Free Spoken Digit Dataset: labels from file names {digit}_{speaker}_{index}.wav",
    load_input=load_audio_input,
)
def build_fsdd(options: dict[str, Any]) -> DatasetBundle:
    """Build FSDD with the usual split: recordings with index 0-4 for testing, 5-49 for training."""
    train, test = scan_fsdd(Path(options["root"]), options["test_max_index"])
    return make_bundle(train, test, options, source=f"fsdd {options['root']}")


@register_dataset(
    "audio_folder",
    {
        "root": DataOption(str, REQUIRED, "folder of class folders, or of train_dir/val_dir", is_path=True),
        "train_dir": DataOption(str, None, "training subfolder of root holding class folders (with val_dir)"),
        "val_dir": DataOption(str, None, "evaluation subfolder of root holding class folders"),
        "exclude_dirs": DataOption(list, ["_background_noise_"], "folder names under root that are not classes"),
        "extensions": DataOption(list, list(AUDIO_SUFFIXES), "audio file suffixes to include"),
        **SPLIT_OPTIONS,
        **FEATURE_OPTIONS,
    },
    help="One folder per class (GTZAN genres, Speech Commands words); split by subfolders, lists or fraction",
    load_input=load_audio_input,
)
def build_audio_folder(options: dict[str, Any]) -> DatasetBundle:
    """Build datasets from ``root/<class>/<clip>`` or ``root/{train_dir,val_dir}/<class>/<clip>``."""
    root = Path(options["root"])
    scan = dict(suffixes=options["extensions"], exclude=options["exclude_dirs"])
    if options["train_dir"] or options["val_dir"]:
        if not (options["train_dir"] and options["val_dir"]):
            raise ValueError("set both data.train_dir and data.val_dir, or neither")
        train = scan_class_folders(root / options["train_dir"], **scan)
        val = scan_class_folders(root / options["val_dir"], **scan)
    else:
        train, val = _split(scan_class_folders(root, **scan), options, root)
    return make_bundle(train, val, options, source=f"audio_folder {root}")


@register_dataset(
    "audio_manifest",
    {
        "manifest": DataOption(str, REQUIRED, "CSV file with a header: path,label[,fold]", is_path=True),
        "val_manifest": DataOption(str, None, "separate evaluation CSV (AudioSet style); no split is then made", is_path=True),
        "root": DataOption(str, None, "folder that relative paths start from (default: the manifest's folder)", is_path=True),
        "path_column": DataOption(str, "path", "CSV column with the file path (ESC-50: filename)"),
        "label_column": DataOption(str, "label", "CSV column with the label(s) (ESC-50: category)"),
        "fold_column": DataOption(str, "fold", "CSV column with the cross-validation fold"),
        "label_separator": DataOption(str, ";", "separator of several labels in one cell"),
        "multilabel": DataOption(bool, False, "several labels per clip: multi-hot targets, BCE loss, mAP"),
        **SPLIT_OPTIONS,
        **FEATURE_OPTIONS,
    },
    help="CSV manifest (ESC-50 folds, Speech Commands lists, AudioSet-style multi-label)",
    load_input=load_audio_input,
)
def build_audio_manifest(options: dict[str, Any]) -> DatasetBundle:
    """Build datasets from a CSV manifest, split by fold, lists, fraction or a second manifest."""
    manifest = Path(options["manifest"])
    root = Path(options["root"]) if options["root"] else manifest.parent
    read = dict(
        path_column=options["path_column"],
        label_column=options["label_column"],
        fold_column=options["fold_column"],
        label_separator=options["label_separator"],
    )
    items = read_manifest(manifest, root, **read)
    if options["val_manifest"]:
        val_manifest = Path(options["val_manifest"])
        val_root = Path(options["root"]) if options["root"] else val_manifest.parent
        train, val = items, read_manifest(val_manifest, val_root, **read)
    else:
        train, val = _split(items, options, root)
    return make_bundle(train, val, options, multilabel=options["multilabel"], source=f"audio_manifest {manifest}")


__all__ = [
    "FEATURE_OPTIONS",
    "SPLIT_OPTIONS",
    "build_audio_folder",
    "build_audio_manifest",
    "build_fsdd",
    "feature_config",
    "load_audio_input",
    "make_bundle",
    "scan_fsdd",
]
