#!/usr/bin/env python
"""Compute the mean and standard deviation of a dataset's log-mel features for data.mean/data.std.

The statistics are taken over every (frame, mel bin) value of the unnormalized
Kaldi fbank of the training clips, before padding. With ``--include-padding``
the clips are padded or cropped to ``target_frames`` first, so the zero frames
of padding count too.

Examples:
    python scripts/audio_stats.py --config configs/fsdd_ast_tiny.yaml
    python scripts/audio_stats.py --config configs/fsdd_ast_tiny.yaml --split val data.num_mel_bins=64
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from exdrop.data.audio_datasets import AudioClipDataset  # noqa: E402
from exdrop.data.registry import get_dataset_kind  # noqa: E402
from exdrop.train import ConfigError, load_config  # noqa: E402
from exdrop.train.config import resolve_config  # noqa: E402


def feature_moments(dataset: AudioClipDataset, include_padding: bool, limit: int | None, progress: bool) -> tuple[float, float, int]:
    """Return ``(mean, std, values)`` of the raw features of the first ``limit`` clips of ``dataset``."""
    total = total_sq = 0.0
    count = 0
    bins = dataset.features.num_mel_bins
    target = dataset.features.target_frames
    indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="clips")
    for index in indices:
        fbank = dataset.raw_features(index).double()  # (frames, bins), float64 to keep the sums exact enough
        if include_padding:
            fbank = fbank[:target]
            count += target * bins  # padded frames are zeros: they add to the count only
        else:
            count += fbank.numel()
        total += float(fbank.sum())
        total_sq += float((fbank * fbank).sum())
    if count == 0:
        raise ValueError("the dataset has no clips")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0)
    return mean, math.sqrt(variance), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config whose data section names an audio dataset kind")
    parser.add_argument("--split", choices=("train", "val"), default="train", help="split to measure (default: train)")
    parser.add_argument("--include-padding", action="store_true", help="count the zero frames of padding to target_frames")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides as section.key=value, e.g. data.root=/data/fsdd")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # One clip's fbank is too small to gain from intra-op threads; extra threads only add overhead.
    torch.set_num_threads(1)

    try:
        cfg = resolve_config(load_config(args.config, args.overrides))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    kind = get_dataset_kind(cfg["data"]["kind"])
    options = {key: value for key, value in cfg["data"].items() if key in kind.options}
    bundle = kind.build(options)
    dataset = bundle.train if args.split == "train" else bundle.val
    if not isinstance(dataset, AudioClipDataset):
        print(f"error: data.kind {cfg['data']['kind']!r} is not an audio dataset kind", file=sys.stderr)
        return 2

    mean, std, count = feature_moments(dataset, args.include_padding, args.limit, not args.no_progress)
    print(f"# {args.split} split of {args.config}: {count} feature values")
    print(f"mean: {mean:.7f}")
    print(f"std: {std:.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
