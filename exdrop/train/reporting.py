"""Run metrics as JSONL, CSV, TensorBoard events and PNG plots."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from .io import append_jsonl

logger = logging.getLogger(__name__)


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """Flatten nested metrics (``train_penalty.q``) for CSV and TensorBoard; per-block lists are left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "train_penalty_per_block":
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                out[f"{key}.{sub}"] = sub_value
        else:
            out[key] = value
    return out


class MetricsWriter:
    """Append epoch records to ``metrics.jsonl`` and ``metrics.csv``, and to TensorBoard when installed."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume: bool = False) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if not resume:
            self.jsonl.write_text("")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to JSONL and CSV only")
            else:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Record one epoch."""
        append_jsonl(self.jsonl, record)
        self._rewrite_csv()
        if self.writer is not None:
            step = record.get("step", record.get("epoch", 0))
            for key, value in flatten_record(record).items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key.replace(".", "/"), value, step)
            self.writer.flush()

    def _rewrite_csv(self) -> None:
        # Columns can appear later (validation every N epochs), so the CSV is rebuilt from the JSONL.
        rows = [flatten_record(r) for r in read_records(self.jsonl)]
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read a metrics JSONL file."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, records: Optional[Sequence[dict[str, Any]]] = None) -> list[Path]:
    """Write ``curves.png``, ``penalty_components.png`` and ``penalty_layers.png`` for a run.

    Returns the files written (the penalty plots only when the run had penalties).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = list(records if records is not None else read_records(run_dir / "metrics.jsonl"))
    if not records:
        return []
    written = []
    epochs = [r["epoch"] for r in records]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_task_loss"] for r in records], label="train task loss")
    val = [r for r in records if "loss" in r]
    ax_loss.plot([r["epoch"] for r in val], [r["loss"] for r in val], label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend()
    for key in ("top1", "top5", "mAP", "ema_top1"):
        points = [(r["epoch"], r[key]) for r in records if key in r]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=f"validation {key}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    ax_acc.legend()
    written.append(_save(fig, run_dir / "curves.png"))

    components = [k for k in records[-1].get("train_penalty", {}) if k != "total"]
    if components:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in components:
            ax.plot(epochs, [r["train_penalty"].get(name, 0.0) for r in records], label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("penalty (coefficient applied)")
        ax.set_yscale("log")
        ax.legend()
        written.append(_save(fig, run_dir / "penalty_components.png"))

        # Heatmap: per-block penalty (all components summed) over epochs.
        grid = np.array([
            [sum(block.values()) for block in r.get("train_penalty_per_block", [])] for r in records
        ])
        if grid.ndim == 2 and grid.size:
            fig, ax = plt.subplots(figsize=(6, 4))
            image = ax.imshow(grid.T, aspect="auto", origin="lower", cmap="viridis",
                              extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, grid.shape[1] - 0.5))
            ax.set_xlabel("epoch")
            ax.set_ylabel("block")
            fig.colorbar(image, ax=ax, label="penalty per block")
            written.append(_save(fig, run_dir / "penalty_layers.png"))
    return written
