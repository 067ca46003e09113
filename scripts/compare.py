#!/usr/bin/env python
"""Run one config in off, implicit and explicit mode over several seeds and tabulate the results.

Writes comparison.md, comparison.csv and comparison.png to --out; every run is
an ordinary run folder under --out/runs. Running the same command again skips
finished runs and resumes interrupted ones.

Examples:
    python scripts/compare.py --config configs/demo.yaml --out runs/compare-demo --seeds 0,1,2
    python scripts/compare.py --config configs/demo.yaml --out runs/sweep --sweep-rates 0.05,0.2 \\
        --sweep-per-component
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exdrop.penalties import DropoutConfig  # noqa: E402
from exdrop.train import ConfigError, load_config, resolve_config  # noqa: E402
from exdrop.train.compare import MODES, compare, sweep_settings  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _modes(text: str) -> list[str]:
    modes = [v for v in text.split(",") if v]
    for mode in modes:
        if mode not in MODES:
            raise argparse.ArgumentTypeError(f"unknown mode {mode!r}; use {','.join(MODES)}")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config to compare")
    parser.add_argument("--out", required=True, help="output folder for runs, tables and the plot")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--modes", type=_modes, default=list(MODES), help="comma-separated modes (default off,implicit,explicit)")
    parser.add_argument("--sweep-rates", type=_floats, default=[], help="comma-separated extra rates, e.g. 0.05,0.2")
    parser.add_argument("--sweep-coefficients", type=_floats, default=[], help="comma-separated extra coefficients")
    parser.add_argument("--sweep-per-component", action="store_true",
                        help="sweep one component at a time instead of all together")
    parser.add_argument("overrides", nargs="*", help="config overrides as section.key=value")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)

    try:
        raw = load_config(args.config, args.overrides)
        resolve_config(raw)  # fail on config errors before the first run
        base_rates = DropoutConfig.coerce(raw.get("dropout")).rates
        settings = sweep_settings(dict(base_rates), args.sweep_rates, args.sweep_coefficients, args.sweep_per_component)
        rows = compare(raw, Path(args.out), args.seeds, args.modes, settings)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "comparison.md").read_text())
    print(f"{len(rows)} settings; tables and plot in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
