"""Audio clip datasets: file lists, labels, train/evaluation splits and unreadable-file handling."""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .audio_augment import SpecAugment, random_time_shift
from .audio_features import FbankConfig, normalize_fbank, pad_or_crop, raw_features
from .audio_io import AudioDecodeError, load_audio, probe_audio

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".au", ".aiff", ".aif")
ON_ERROR = ("fail", "skip")

Target = Union[int, torch.Tensor]


@dataclass(frozen=True)
class AudioItem:
    """One clip of a dataset: its file, its label names and an optional cross-validation fold."""

    path: str
    labels: tuple[str, ...]
    fold: Optional[str] = None


class AudioClipDataset(Dataset):
    """Clips decoded and turned into normalized log-mel features ``(target_frames, num_mel_bins)`` on access.

    Args:
        items: The clips.
        class_names: Label names in class-index order.
        features: Feature settings.
        multilabel: Return multi-hot float targets ``(num_classes,)`` instead of class indices.
        train: Apply dither, random crop, SpecAugment and time shift.
        spec_augment: Frequency and time masks, applied before normalization
            with the value 0 that zero padding also has (as in the AST recipe).
        time_shift: Maximum circular shift in frames after normalization.
        random_crop: Crop clips longer than ``target_frames`` at a random start
            in training (evaluation always keeps the first frames).
        on_error: ``"fail"`` raises :class:`~exdrop.data.audio_io.AudioDecodeError`
            for an unreadable clip; ``"skip"`` logs it and returns the next
            readable clip instead, remembering the failure for later epochs.
    """

    def __init__(
        self,
        items: Sequence[AudioItem],
        class_names: Sequence[str],
        features: FbankConfig,
        multilabel: bool = False,
        train: bool = False,
        spec_augment: SpecAugment = SpecAugment(),
        time_shift: int = 0,
        random_crop: bool = False,
        on_error: str = "fail",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r} is not valid; use one of {ON_ERROR}")
        self.items = list(items)
        self.class_names = list(class_names)
        self.class_index = {name: i for i, name in enumerate(self.class_names)}
        self.features = features
        self.multilabel = multilabel
        self.train = train
        self.spec_augment = spec_augment
        self.time_shift = time_shift
        self.random_crop = random_crop
        self.on_error = on_error
        self.failed: set[int] = set()  # per process: each DataLoader worker keeps its own

    def __len__(self) -> int:
        return len(self.items)

    def target(self, index: int) -> Target:
        """Return the class index, or the multi-hot vector for multi-label data, of clip ``index``."""
        labels = self.items[index].labels
        if not self.multilabel:
            return self.class_index[labels[0]]
        target = torch.zeros(len(self.class_names))
        target[[self.class_index[name] for name in labels]] = 1.0
        return target

    def raw_features(self, index: int) -> torch.Tensor:
        """Return the unpadded, unnormalized fbank ``(frames, bins)`` of clip ``index`` (no augmentation)."""
        waveform, sample_rate = load_audio(self.items[index].path)
        return raw_features(waveform, sample_rate, self.features, dither=0.0)

    def load(self, index: int) -> tuple[torch.Tensor, Target]:
        """Decode clip ``index`` and return ``(features, target)``; raises on unreadable files."""
        waveform, sample_rate = load_audio(self.items[index].path)
        config = self.features
        fbank = raw_features(waveform, sample_rate, config, dither=config.dither if self.train else 0.0)

        start = 0
        excess = fbank.shape[0] - config.target_frames
        if self.train and self.random_crop and excess > 0:
            start = int(torch.randint(0, excess + 1, ()))
        fbank = pad_or_crop(fbank, config.target_frames, start)

        if self.train and self.spec_augment.active:
            fbank = self.spec_augment(fbank, value=0.0)
        x = normalize_fbank(fbank, config.mean, config.std)
        if self.train:
            x = random_time_shift(x, self.time_shift)
        return x, self.target(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if self.on_error == "fail":
            return self.load(index)
        for offset in range(len(self.items)):
            candidate = (index + offset) % len(self.items)
            if candidate in self.failed:
                continue
            try:
                return self.load(candidate)
            except AudioDecodeError as err:
                self.failed.add(candidate)
                logger.warning("skipping unreadable clip: %s (%d skipped so far in this process)", err, len(self.failed))
        raise RuntimeError(f"none of the {len(self.items)} clips of this dataset could be decoded")


def drop_unreadable(items: Sequence[AudioItem], split: str) -> list[AudioItem]:
    """Probe every file and drop the ones that cannot be read, logging each one and the count."""
    kept, problems = [], []
    for item in items:
        try:
            probe_audio(item.path)
        except (AudioDecodeError, FileNotFoundError) as err:
            problems.append(str(err))
            continue
        kept.append(item)
    if problems:
        for message in problems:
            logger.warning("%s", message)
        logger.warning("skipped %d of %d %s clips that could not be read", len(problems), len(items), split)
    return kept


def scan_class_folders(
    root: Path, suffixes: Iterable[str] = AUDIO_SUFFIXES, exclude: Iterable[str] = ()
) -> list[AudioItem]:
    """List ``root/<class>/**/<audio file>``; the folder name is the label."""
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder not found: {root}")
    suffixes = tuple(s.lower() for s in suffixes)
    exclude = set(exclude)
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in exclude):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        items.extend(AudioItem(str(p), (folder.name,)) for p in files)
    if not items:
        raise ValueError(f"no audio files ({', '.join(suffixes)}) in class folders under {root}")
    return items


def read_manifest(
    manifest: Path,
    root: Path,
    path_column: str = "path",
    label_column: str = "label",
    fold_column: Optional[str] = "fold",
    label_separator: str = ";",
) -> list[AudioItem]:
    """Read a CSV manifest with a header; relative paths are taken from ``root``.

    Several labels in one cell are separated by ``label_separator``.
    """
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (path_column, label_column):
            if column not in columns:
                raise ValueError(
                    f"{manifest}: column {column!r} not found; the header has {', '.join(columns) or 'no columns'}"
                )
        has_fold = fold_column is not None and fold_column in columns
        items = []
        for line, row in enumerate(reader, start=2):
            labels = tuple(name.strip() for name in (row[label_column] or "").split(label_separator) if name.strip())
            if not row[path_column] or not labels:
                raise ValueError(f"{manifest}, line {line}: empty path or label")
            path = Path(row[path_column])
            fold = row[fold_column].strip() if has_fold and row[fold_column] is not None else None
            items.append(AudioItem(str(path if path.is_absolute() else root / path), labels, fold))
    if not items:
        raise ValueError(f"{manifest} lists no clips")
    return items


def split_by_fold(items: Sequence[AudioItem], val_fold: Union[int, str]) -> tuple[list[AudioItem], list[AudioItem]]:
    """Hold out the clips of one fold (ESC-50 style cross-validation)."""
    if any(item.fold is None for item in items):
        raise ValueError("val_fold is set but the manifest has no fold for every row (check fold_column)")
    wanted = str(val_fold)
    train = [item for item in items if item.fold != wanted]
    val = [item for item in items if item.fold == wanted]
    if not val:
        folds = sorted({item.fold for item in items})
        raise ValueError(f"val_fold {wanted!r} matches no clip; the folds are {', '.join(folds)}")
    return train, val


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    return {line.strip().replace("\\", "/") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def split_by_lists(
    items: Sequence[AudioItem],
    root: Path,
    val_list: Optional[Path],
    test_list: Optional[Path],
    eval_split: str = "test",
) -> tuple[list[AudioItem], list[AudioItem]]:
    """Split with Speech Commands style lists of paths relative to ``root``.

    Clips in neither list are training clips. ``eval_split`` selects the
    ``val`` or the ``test`` list as the evaluation set.
    """
    if eval_split not in ("val", "test"):
        raise ValueError(f"eval_split={eval_split!r} is not valid; use 'val' or 'test'")
    val_names = _read_list(val_list) if val_list else set()
    test_names = _read_list(test_list) if test_list else set()
    held_out = val_names | test_names
    wanted = test_names if eval_split == "test" else val_names
    if not wanted:
        raise ValueError(f"eval_split={eval_split!r} but no {eval_split}_list was given")

    train, evaluation = [], []
    for item in items:
        relative = Path(item.path).resolve().relative_to(root.resolve()).as_posix()
        if relative in wanted:
            evaluation.append(item)
        elif relative not in held_out:
            train.append(item)
    if not evaluation:
        raise ValueError(f"no clip under {root} is named in the {eval_split} list; paths must be relative to root")
    return train, evaluation


def split_by_fraction(
    items: Sequence[AudioItem], val_fraction: float, seed: int = 0
) -> tuple[list[AudioItem], list[AudioItem]]:
    """Hold out ``val_fraction`` of the clips of each (first) label, chosen with a seeded shuffle."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_label: dict[str, list[AudioItem]] = defaultdict(list)
    for item in items:
        by_label[item.labels[0]].append(item)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda item: item.path)
        rng.shuffle(group)
        n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def class_names_of(items: Iterable[AudioItem], given: Optional[Sequence[str]] = None) -> list[str]:
    """Return ``given`` after checking it covers every label, or the sorted label names."""
    found = sorted({label for item in items for label in item.labels})
    if not given:
        return found
    unknown = sorted(set(found) - set(given))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown[:5])} are not in class_names; add them or fix the data")
    return list(given)


__all__ = [
    "AUDIO_SUFFIXES",
    "AudioClipDataset",
    "AudioItem",
    "class_names_of",
    "drop_unreadable",
    "read_manifest",
    "scan_class_folders",
    "split_by_fold",
    "split_by_fraction",
    "split_by_lists",
]
