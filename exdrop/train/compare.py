"""Compare off, implicit and explicit dropout on one config over seeds, with optional sweeps.

Each setting and seed is one ordinary run folder under ``<out>/runs``. A run
that finished has a ``done.json``; a run with checkpoints but no ``done.json``
is resumed; so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..penalties import COMPONENTS
from .checkpoint import list_checkpoints
from .loop import train
from .reporting import read_records

logger = logging.getLogger(__name__)

MODES = ("off", "implicit", "explicit")


@dataclass(frozen=True)
class Setting:
    """One column of the comparison: a mode and the rates/coefficients it overrides."""

    mode: str
    rates: Optional[dict[str, float]] = None
    coefficients: Optional[dict[str, float]] = None
    label: str = ""

    @property
    def name(self) -> str:
        """Folder-safe name, e.g. ``explicit`` or ``explicit-rate-q-0.2``."""
        return self.mode + (f"-{self.label}" if self.label else "")


def sweep_settings(
    base_rates: dict[str, float],
    rates: Sequence[float] = (),
    coefficients: Sequence[float] = (),
    per_component: bool = False,
) -> list[Setting]:
    """Settings for a sweep over rates (implicit and explicit) and coefficients (explicit).

    Args:
        base_rates: The config's rates; with ``per_component`` only components
            whose rate is non-zero there are swept one at a time.
        rates: Rates to try.
        coefficients: Coefficients to try.
        per_component: Sweep one component at a time (others keep the config's
            values) instead of all components together.
    """
    groups: list[tuple[str, list[str]]]
    if per_component:
        groups = [(c, [c]) for c in COMPONENTS if base_rates.get(c, 0.0) > 0.0] or [(c, [c]) for c in COMPONENTS]
    else:
        groups = [("all", list(COMPONENTS))]
    out = []
    for tag, names in groups:
        for rate in rates:
            new_rates = {**base_rates, **{c: rate for c in names}}
            for mode in ("implicit", "explicit"):
                out.append(Setting(mode, rates=new_rates, label=f"rate-{tag}-{rate:g}"))
        for coefficient in coefficients:
            out.append(Setting("explicit", coefficients={c: coefficient for c in names},
                               label=f"coef-{tag}-{coefficient:g}"))
    return out


def _config_for(base: dict[str, Any], setting: Setting, seed: int, runs_dir: Path) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    dropout = dict(cfg.get("dropout") or {})
    dropout["mode"] = setting.mode
    if setting.rates is not None:
        dropout["rates"] = setting.rates
    if setting.coefficients is not None:
        old = dropout.get("coefficients", 1.0)
        merged = {c: float(old) for c in COMPONENTS} if not isinstance(old, dict) else dict(old)
        merged.update(setting.coefficients)
        dropout["coefficients"] = merged
    cfg["dropout"] = dropout
    cfg.setdefault("train", {})["seed"] = seed
    cfg["output"] = {**cfg.get("output", {}), "dir": str(runs_dir), "name": f"{setting.name}-seed{seed}"}
    return cfg


def _first_difference(old: Any, new: Any, where: str = "") -> Optional[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if old == new else f"{where}: {old!r} in the saved run, {new!r} now"


# Train options that change what a run writes, never the weights it ends with.
_REPORTING_ONLY = ("tensorboard", "plots", "keep_checkpoints")


def _drop_unused(cfg: dict[str, Any]) -> dict[str, Any]:
    """Remove reporting options and the settings that the run's dropout mode never reads.

    Coefficients and their warmup only act in explicit mode, and rates do
    nothing in off mode, so a finished run stays reusable when only those
    change (for example after retuning the explicit coefficient).
    """
    cfg = {section: dict(values) if isinstance(values, dict) else values for section, values in cfg.items()}
    for key in _REPORTING_ONLY:
        (cfg.get("train") or {}).pop(key, None)
    dropout = cfg.get("dropout") or {}
    mode = dropout.get("mode")
    if mode != "explicit":
        dropout.pop("coefficients", None)
        for key in ("coefficient_warmup", "coefficient_warmup_shape"):
            (cfg.get("train") or {}).pop(key, None)
    if mode == "off":
        dropout.pop("rates", None)
    return cfg


def _check_same_config(run_dir: Path, cfg: dict[str, Any], finished: bool = True) -> None:
    """Refuse to reuse or resume a run whose config differs from the requested one."""
    import yaml

    from .config import ConfigError, resolve_config

    saved = run_dir / "config.yaml"
    if finished and (not saved.is_file() or not (run_dir / "model.safetensors").is_file()):
        raise FileNotFoundError(
            f"{run_dir} has done.json but no config.yaml or model.safetensors; delete the folder to run it again"
        )
    if not saved.is_file():
        return
    old = yaml.safe_load(saved.read_text())
    new = yaml.safe_load(yaml.safe_dump(resolve_config(cfg), sort_keys=False))
    old_mode, new_mode = old.get("dropout", {}).get("mode"), new.get("dropout", {}).get("mode")
    if old_mode != new_mode:
        difference = f"dropout.mode: {old_mode!r} in the saved run, {new_mode!r} now"
    else:
        difference = _first_difference(_drop_unused(old), _drop_unused(new))
    if difference:
        state = "finished" if finished else "interrupted"
        raise ConfigError(
            f"{state} run {run_dir} used another config ({difference}); "
            "use a new --out folder for the changed config, or delete that run folder"
        )


def _epoch_time(run_dir: Path, default: float) -> float:
    """Median training seconds per epoch of a run, read from its ``metrics.jsonl``.

    The median rather than the mean, so that one slow epoch (a machine busy
    with something else for a while, a first epoch that fills caches) does not
    decide the reported speed.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return default
    times = [r["train_time_s"] for r in read_records(path) if "train_time_s" in r]
    return statistics.median(times) if times else default


def run_one(base: dict[str, Any], setting: Setting, seed: int, runs_dir: Path) -> dict[str, Any]:
    """Run (or resume, or reuse) one setting and seed; return its ``done.json`` content."""
    cfg = _config_for(base, setting, seed, runs_dir)
    run_dir = runs_dir / cfg["output"]["name"]
    done = run_dir / "done.json"
    if done.is_file():
        _check_same_config(run_dir, cfg)
        logger.info("reusing finished run %s", run_dir)
        summary = json.loads(done.read_text())
        summary["train_time_per_epoch_s"] = _epoch_time(run_dir, summary.get("train_time_per_epoch_s", math.nan))
        return summary
    resume = run_dir if list_checkpoints(run_dir / "checkpoints") else None
    if resume is not None:
        _check_same_config(run_dir, cfg, finished=False)
    start = time.perf_counter()
    result = train(cfg, resume=resume)
    wall = time.perf_counter() - start
    epochs = list(result.history)
    summary = {
        "setting": setting.name,
        "mode": setting.mode,
        "seed": seed,
        "final": result.final,
        "epochs": len(epochs),
        "train_time_per_epoch_s": _epoch_time(run_dir, math.nan),
        "wall_time_s": wall,
        "resumed": resume is not None,
    }
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reduce results to one row per setting: mean and standard deviation over seeds."""
    rows = []
    for name in dict.fromkeys(r["setting"] for r in results):
        group = [r for r in results if r["setting"] == name]
        row: dict[str, Any] = {"setting": name, "mode": group[0]["mode"], "seeds": len(group)}
        for key in ("top1", "top5", "mAP", "loss"):
            values = [r["final"].get(key) for r in group if key in r["final"]]
            if values:
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        row["epoch_time_s_mean"], row["epoch_time_s_std"] = _mean_std([r["train_time_per_epoch_s"] for r in group])
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md``."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    csv_path = out_dir / "comparison.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    metrics = [m for m in ("top1", "top5", "mAP", "loss") if f"{m}_mean" in columns]
    header = ["setting", "seeds"] + [f"{m} (mean ± std)" for m in metrics] + ["train s/epoch (run medians, mean ± std)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["setting"], str(row["seeds"])]
        for m in metrics:
            unit = "" if m == "loss" else "%"
            cells.append(f"{row.get(f'{m}_mean', math.nan):.2f}{unit} ± {row.get(f'{m}_std', math.nan):.2f}")
        cells.append(f"{row['epoch_time_s_mean']:.1f} ± {row['epoch_time_s_std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out_dir / "comparison.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot_comparison(rows: list[dict[str, Any]], out_dir: Path) -> Optional[Path]:
    """Bar chart of the main metric per setting with standard-deviation error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "mAP" if any("mAP_mean" in r for r in rows) else "top1"
    rows = [r for r in rows if f"{metric}_mean" in r]
    if not rows:
        return None
    colors = {"off": "#888888", "implicit": "#1f77b4", "explicit": "#d62728"}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r[f"{metric}_mean"] for r in rows], yerr=[r[f"{metric}_std"] for r in rows],
           color=[colors.get(r["mode"], "#2ca02c") for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)), [r["setting"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel(f"final validation {metric} (%)")
    fig.tight_layout()
    path = out_dir / "comparison.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(
    base: dict[str, Any],
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2),
    modes: Sequence[str] = MODES,
    settings: Sequence[Setting] = (),
) -> list[dict[str, Any]]:
    """Run every mode (and extra sweep setting) for every seed, then write tables and a plot."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs"
    all_settings = [Setting(mode) for mode in modes] + list(settings)
    results = []
    for setting in all_settings:
        for seed in seeds:
            logger.info("comparison run %s, seed %d", setting.name, seed)
            results.append(run_one(base, setting, seed, runs_dir))
    rows = summarize(results)
    write_tables(rows, out_dir)
    plot_comparison(rows, out_dir)
    return rows
