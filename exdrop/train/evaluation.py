"""Evaluation of a finished run: accuracy, per-class results, confusion matrix, mAP."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch.utils.data import DataLoader

from ..data.registry import get_dataset_kind
from ..models.registry import create_model
from .loop import average_views, classification_metrics, collect_logits
from .metrics import average_precision

logger = logging.getLogger(__name__)


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return counts ``(num_classes, num_classes)``: rows are true classes, columns predictions."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def plot_confusion(matrix: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Save a confusion-matrix heatmap, rows normalized to recall, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    recall = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(recall.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if recall[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def resolve_weights(run_dir: Path, which: str) -> Path:
    """Map ``final``, ``ema``, ``best``, ``last`` or a file path to a weights file of the run."""
    from .checkpoint import list_checkpoints

    named = {
        "final": run_dir / "model.safetensors",
        "ema": run_dir / "model_ema.safetensors",
        "best": run_dir / "checkpoints" / "best" / "model.safetensors",
    }
    if which == "last":
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        path = checkpoints[-1] / "model.safetensors" if checkpoints else run_dir / "checkpoints" / "missing"
    else:
        path = named.get(which, Path(which))
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path} (choose final, ema, best, last or a file)")
    return path


def evaluate_run(
    run_dir: Path,
    weights: str = "final",
    output_dir: Optional[Path] = None,
    batch_size: Optional[int] = None,
    num_workers: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a run folder's model on its evaluation split and write ``evaluation.json``.

    Single-label data gets top-1/top-5, per-class accuracy and
    ``confusion_matrix.png``; multi-label data gets mAP and per-class AP.
    Predictions of the dataset's evaluation views are averaged.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "run_info.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found; pass a run folder written by finetune.py")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    output_dir = Path(output_dir) if output_dir else run_dir

    kind = get_dataset_kind(cfg["data"]["kind"])
    bundle = kind.build({k: v for k, v in cfg["data"].items() if k in kind.options})
    weights_path = resolve_weights(run_dir, weights)
    model = create_model(
        cfg["model"]["name"], num_classes=info["num_classes"], checkpoint_path=str(weights_path),
        **info["model_kwargs"],
    ).to(device)
    views = bundle.eval_views
    size = batch_size or cfg["data"].get("eval_batch_size") or cfg["data"]["batch_size"]
    size = max(views, size - size % views)
    loader = DataLoader(bundle.val, batch_size=size, shuffle=False, num_workers=num_workers,
                        collate_fn=bundle.collate_fn)
    logits, targets = collect_logits(model, loader, torch.device(device))
    logits, targets = average_views(logits, targets, views)

    names = list(info["class_names"]) or [str(i) for i in range(info["num_classes"])]
    results: dict[str, Any] = {
        "run": str(run_dir), "weights": str(weights_path), "samples": int(targets.shape[0]), "views": views,
        **classification_metrics(logits, targets, bundle.multilabel),
    }
    if bundle.multilabel:
        ap = average_precision(logits.sigmoid(), targets)
        results["per_class_ap"] = {names[i]: (None if ap[i].isnan() else 100.0 * float(ap[i])) for i in range(len(names))}
    else:
        matrix = confusion_matrix(logits.argmax(dim=1), targets, info["num_classes"])
        per_class = matrix.diag().float() / matrix.sum(dim=1).clamp(min=1)
        results["per_class_accuracy"] = {names[i]: 100.0 * float(per_class[i]) for i in range(len(names))}
        results["confusion_matrix"] = matrix.tolist()
        results["confusion_matrix_png"] = str(plot_confusion(matrix, names, output_dir / "confusion_matrix.png"))
    (output_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    return results
