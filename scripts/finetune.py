#!/usr/bin/env python
"""Fine-tune an exdrop model from a YAML config.

Examples:
    python scripts/finetune.py --config configs/demo.yaml
    python scripts/finetune.py --config configs/cifar10_vit.yaml dropout.mode=implicit train.epochs=5
    python scripts/finetune.py --resume runs/demo
    torchrun --nproc_per_node=2 scripts/finetune.py --config configs/demo.yaml

A run started with ``--resume`` continues in the run folder from its newest
complete epoch checkpoint, with the run's own config plus any overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from exdrop.train import ConfigError, load_config, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--init-checkpoint", help="timm-format weights to start from (sets model.checkpoint_path)")
    parser.add_argument("--output-dir", help="parent folder for the run folder (sets output.dir)")
    parser.add_argument("--resume", help="run folder or checkpoint folder to continue from")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides as section.key=value, e.g. train.lr=3e-4")
    args = parser.parse_intermixed_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    overrides = list(args.overrides)
    if args.init_checkpoint:
        overrides.append(f"model.checkpoint_path={args.init_checkpoint}")
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")

    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm
    config_path = args.config
    if config_path is None and args.resume:
        run = Path(args.resume)
        if not run.exists():
            print(f"error: resume folder not found: {run}", file=sys.stderr)
            return 2
        candidates = [run / "config.yaml", run.parent / "config.yaml", run.parent.parent / "config.yaml"]
        config_path = next((p for p in candidates if p.is_file()), None)
        if config_path is None:
            print(f"error: no config.yaml found for --resume {run}; pass --config", file=sys.stderr)
            return 2
    if config_path is None:
        parser.error("--config is required unless --resume is given")
    try:
        raw = load_config(config_path, overrides)
        result = train(raw, progress=progress, resume=args.resume)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    metrics = ", ".join(
        f"{key} {value:.2f}%" for key, value in result.final.items() if key in ("top1", "top5", "mAP")
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(f"final validation: {metrics} (run folder: {result.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
