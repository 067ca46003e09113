#!/usr/bin/env python
"""Evaluate a run folder's model and write evaluation.json (and confusion_matrix.png).

Single-label data: top-1, top-5, per-class accuracy and a confusion matrix.
Multi-label data: mAP and per-class average precision. Video runs average the
predictions of their evaluation clips and crops.

Example:
    python scripts/evaluate.py --run runs/demo --weights best
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exdrop.train.evaluation import evaluate_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by scripts/finetune.py")
    parser.add_argument("--weights", default="final", help="final, ema, best, last, or a .safetensors file")
    parser.add_argument("--output-dir", help="where to write evaluation.json (default: the run folder)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        results = evaluate_run(Path(args.run), args.weights, args.output_dir, args.batch_size,
                               args.num_workers, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in results.items() if k in ("samples", "views", "loss", "top1", "top5", "mAP")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.output_dir or args.run) / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
