#!/usr/bin/env python
"""Print the top-k labels for input files with a model from a run folder.

The run folder written by ``scripts/finetune.py`` contains the config, the
class names and the weights. Each file is read the way the run's
``data.kind`` reads its evaluation data (image, audio or video).

Example:
    python scripts/predict.py --run runs/demo image.png --topk 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exdrop.data.registry import get_dataset_kind  # noqa: E402
from exdrop.models import create_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder with config.yaml, run_info.json, model.safetensors")
    parser.add_argument("--topk", type=int, default=5, help="number of labels to print per file")
    parser.add_argument("files", nargs="+", help="input files")
    args = parser.parse_args(argv)

    run = Path(args.run)
    needed = [run / "config.yaml", run / "run_info.json", run / "model.safetensors"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        print(f"error: not a complete run folder, missing {', '.join(missing)}", file=sys.stderr)
        return 2
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    info = json.loads((run / "run_info.json").read_text())

    kind = get_dataset_kind(cfg["data"]["kind"])
    if kind.load_input is None:
        print(f"error: data.kind {kind.name!r} has no single-file reader for prediction", file=sys.stderr)
        return 2
    options = {k: v for k, v in cfg["data"].items() if k in kind.options}

    model = create_model(
        cfg["model"]["name"], num_classes=info["num_classes"], checkpoint_path=str(run / "model.safetensors"),
        **info["model_kwargs"],
    ).eval()
    names = info["class_names"] or [str(i) for i in range(info["num_classes"])]

    status = 0
    for path in args.files:
        if not Path(path).is_file():
            print(f"{path}: error: file not found", file=sys.stderr)
            status = 1
            continue
        try:
            x = kind.load_input(path, options)
        except (OSError, RuntimeError, ValueError) as err:
            print(f"{path}: error: {err} (this run reads {kind.name} input)", file=sys.stderr)
            status = 1
            continue
        # An input with a views axis has one more dim than a sample, and its views form the batch.
        batch = x if x.dim() == _sample_dims(kind.name, x) + 1 else x.unsqueeze(0)
        with torch.no_grad():
            logits = model(batch).float()
        scores = logits.sigmoid().mean(0) if info["multilabel"] else logits.softmax(-1).mean(0)
        top = scores.topk(min(args.topk, scores.numel()))
        labels = ", ".join(f"{names[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {labels}")
    return status


def _sample_dims(kind: str, x: torch.Tensor) -> int:
    """Dims of one sample without views: video (C, T, H, W), image (C, H, W), audio features (T, F)."""
    if kind.startswith("video"):
        return 4
    if kind.startswith(("audio", "fsdd")):
        return 2
    return 3


if __name__ == "__main__":
    sys.exit(main())
