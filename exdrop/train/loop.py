"""The fine-tuning loop shared by image, audio and video configs."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.registry import DatasetBundle, get_dataset_kind
from ..models.registry import create_model
from ..penalties import COMPONENTS
from .config import dump_config, resolve_config
from .io import append_jsonl, save_weights, write_text
from .metrics import mean_average_precision, topk_correct

logger = logging.getLogger(__name__)

ProgressFactory = Callable[..., Iterable]


@dataclass
class RunResult:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: Folder with ``config.yaml``, ``metrics.jsonl``, ``run_info.json``
            and ``model.safetensors``.
        final: The last evaluation record (``top1``, ``top5`` or ``mAP``, ``loss``).
        history: All per-epoch records, as written to ``metrics.jsonl``.
    """

    run_dir: Path
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible NumPy/random seed derived from torch's.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_device(name: str) -> torch.device:
    """Turn ``"auto"`` into CUDA when available, else CPU; check that CUDA exists when asked for."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available; use train.device=cpu")
    return device


def make_loaders(bundle: DatasetBundle, data_cfg: dict[str, Any], seed: int) -> tuple[DataLoader, DataLoader]:
    """Build the training (shuffled, last partial batch dropped when possible) and evaluation loaders."""
    workers = data_cfg["num_workers"]
    common = dict(
        num_workers=workers,
        collate_fn=bundle.collate_fn,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=workers > 0,
    )
    generator = torch.Generator().manual_seed(seed)
    batch_size = data_cfg["batch_size"]
    train_loader = DataLoader(
        bundle.train, batch_size=batch_size, shuffle=True, generator=generator,
        drop_last=len(bundle.train) > batch_size, **common,
    )
    eval_batch = data_cfg["eval_batch_size"] or batch_size
    if bundle.eval_views > 1:
        eval_batch = max(bundle.eval_views, eval_batch - eval_batch % bundle.eval_views)
    val_loader = DataLoader(bundle.val, batch_size=eval_batch, shuffle=False, **common)
    return train_loader, val_loader


def task_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy for class indices or soft targets, BCE for multi-hot targets."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if targets.dtype.is_floating_point:  # soft targets from mixup
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    multilabel: bool = False,
    views: int = 1,
    bf16: bool = False,
) -> dict[str, float]:
    """Evaluate a classifier; predictions of ``views`` consecutive samples are averaged.

    Returns:
        ``loss`` and ``top1``/``top5`` in percent, or ``mAP`` in percent for
        multi-label data.
    """
    model.eval()
    all_logits, all_targets = [], []
    for inputs, targets in loader:
        with _autocast(device, bf16):
            logits = model(inputs.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    logits = torch.cat(all_logits)
    targets = torch.cat(all_targets)
    if views > 1:
        if logits.shape[0] % views:
            raise ValueError(f"{logits.shape[0]} evaluation samples is not a multiple of eval_views={views}")
        logits = logits.view(-1, views, logits.shape[-1]).mean(dim=1)
        targets = targets[::views]

    loss = float(task_loss(logits, targets, multilabel, 0.0))
    if multilabel:
        return {"loss": loss, "mAP": 100.0 * mean_average_precision(logits.sigmoid(), targets)}
    correct = topk_correct(logits, targets, (1, 5))
    n = targets.shape[0]
    return {"loss": loss, "top1": 100.0 * correct[1] / n, "top5": 100.0 * correct[5] / n}


def _run_dir(cfg: dict[str, Any]) -> Path:
    out = cfg["output"]
    name = out["name"] or f"{cfg['model']['name']}-{cfg['dropout']['mode']}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out["dir"]) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_model(cfg: dict[str, Any], bundle: DatasetBundle) -> nn.Module:
    """Create the configured model for the dataset's classes and input shape."""
    model_cfg = cfg["model"]
    kwargs = {**bundle.model_kwargs, **model_cfg["kwargs"]}
    return create_model(
        model_cfg["name"],
        pretrained=model_cfg["pretrained"],
        checkpoint_path=model_cfg["checkpoint_path"],
        num_classes=bundle.num_classes,
        dropout=cfg["dropout"],
        **kwargs,
    )


def _format_epoch(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['train_task_loss']:.4f}"]
    penalty = record.get("train_penalty", {})
    if penalty.get("total", 0.0) > 0.0:
        parts.append(f"penalty {penalty['total']:.4f} (" + ", ".join(
            f"{name} {value:.4f}" for name, value in penalty.items() if name != "total") + ")")
    for key in ("top1", "top5", "mAP"):
        if key in record:
            parts.append(f"val {key} {record[key]:.2f}%")
    parts.append(f"{record['train_samples_per_s']:.1f} samples/s")
    return " | ".join(parts)


def train(raw_cfg: dict[str, Any], progress: Optional[ProgressFactory] = None) -> RunResult:
    """Fine-tune a model as configured and write a run folder.

    Args:
        raw_cfg: Nested config dict (see :mod:`exdrop.train.config`); it is
            validated completely before any data is read.
        progress: Optional progress-bar factory such as ``tqdm.tqdm``; called as
            ``progress(iterable, total=..., desc=..., leave=False)``.
    """
    cfg = resolve_config(raw_cfg)
    train_cfg = cfg["train"]
    if train_cfg["threads"]:
        torch.set_num_threads(train_cfg["threads"])
    seed_everything(train_cfg["seed"])
    device = resolve_device(train_cfg["device"])

    kind = get_dataset_kind(cfg["data"]["kind"])
    data_options = {k: v for k, v in cfg["data"].items() if k in kind.options}
    bundle = kind.build(data_options)
    model = build_model(cfg, bundle).to(device)
    train_loader, val_loader = make_loaders(bundle, cfg["data"], train_cfg["seed"])

    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    optimizer = create_optimizer_v2(
        model, opt=train_cfg["opt"], lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"]
    )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * train_cfg["epochs"]
    if train_cfg["max_steps"] is not None:
        total_steps = min(total_steps, train_cfg["max_steps"])
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        lr_min=train_cfg["min_lr"],
        warmup_t=int(train_cfg["warmup_epochs"] * steps_per_epoch),
        warmup_lr_init=train_cfg["warmup_lr"],
        t_in_epochs=False,
    )

    run_dir = _run_dir(cfg)
    write_text(run_dir / "config.yaml", dump_config(cfg))
    write_text(run_dir / "run_info.json", json.dumps({
        "num_classes": bundle.num_classes,
        "class_names": list(bundle.class_names),
        "multilabel": bundle.multilabel,
        "model_kwargs": {**bundle.model_kwargs, **cfg["model"]["kwargs"]},
        "eval_views": bundle.eval_views,
    }, indent=2))
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("run folder %s; model %s with %.2fM parameters on %s; dropout mode %s",
                run_dir, cfg["model"]["name"], n_params / 1e6, device, cfg["dropout"]["mode"])

    history: list[dict[str, Any]] = []
    step = 0
    final: dict[str, Any] = {}
    for epoch in range(1, train_cfg["epochs"] + 1):
        record = _train_one_epoch(
            model, train_loader, optimizer, scheduler, bundle, train_cfg, device, epoch, step, total_steps, progress
        )
        step = record["step"]
        last_epoch = epoch == train_cfg["epochs"] or step >= total_steps
        if epoch % train_cfg["eval_every"] == 0 or last_epoch:
            metrics = evaluate(model, val_loader, device, bundle.multilabel, bundle.eval_views, train_cfg["bf16"])
            record.update(metrics)
            final = {"epoch": epoch, "step": step, **metrics}
        append_jsonl(metrics_path, record)
        history.append(record)
        logger.info(_format_epoch(record))
        if last_epoch:
            break

    save_weights(model, run_dir / "model.safetensors")
    logger.info("saved %s", run_dir / "model.safetensors")
    return RunResult(run_dir=run_dir, final=final, history=history)


def _train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    bundle: DatasetBundle,
    train_cfg: dict[str, Any],
    device: torch.device,
    epoch: int,
    step: int,
    total_steps: int,
    progress: Optional[ProgressFactory],
) -> dict[str, Any]:
    """Run one epoch; return its record with mean task loss, penalties and throughput."""
    model.train()
    sums = {"task": 0.0}
    penalty_sums: dict[str, float] = {}
    block_sums: list[dict[str, float]] = []
    batches = samples = 0
    start = time.perf_counter()

    iterator: Iterable = loader
    if progress is not None:
        iterator = progress(loader, total=len(loader), desc=f"epoch {epoch}", leave=False)
    for inputs, targets in iterator:
        if step >= total_steps:
            break
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if bundle.train_batch_transform is not None:
            inputs, targets = bundle.train_batch_transform(inputs, targets)

        with _autocast(device, train_cfg["bf16"]):
            logits, penalty = model(inputs, return_penalty=True)
        loss_task = task_loss(logits, targets, bundle.multilabel, train_cfg["label_smoothing"])
        loss = loss_task + penalty.total
        if not torch.isfinite(loss):
            parts = {"task": float(loss_task), **penalty.detached()}
            raise FloatingPointError(f"non-finite loss at step {step}: {parts}")

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg["grad_clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg["grad_clip"])
        optimizer.step()
        step += 1
        scheduler.step_update(step)

        batches += 1
        samples += inputs.shape[0]
        sums["task"] += float(loss_task.detach())
        for name, value in penalty.detached().items():
            penalty_sums[name] = penalty_sums.get(name, 0.0) + value
        for index, block in enumerate(penalty.per_block_floats()):
            if index >= len(block_sums):
                block_sums.append({})
            for name, value in block.items():
                block_sums[index][name] = block_sums[index].get(name, 0.0) + value
        if progress is not None and hasattr(iterator, "set_postfix"):
            iterator.set_postfix(loss=f"{float(loss_task):.3f}", penalty=f"{float(penalty.total):.4f}")

    elapsed = time.perf_counter() - start
    batches = max(batches, 1)
    penalty_means = {name: value / batches for name, value in penalty_sums.items()}
    # Components appear in forward order; prefixed terms (video) follow their own order.
    ordered = {"total": penalty_means.pop("total", 0.0)}
    ordered.update({c: penalty_means.pop(c) for c in COMPONENTS if c in penalty_means})
    ordered.update(penalty_means)
    return {
        "epoch": epoch,
        "step": step,
        "lr": optimizer.param_groups[0]["lr"],
        "train_task_loss": sums["task"] / batches,
        "train_penalty": ordered,
        "train_penalty_per_block": [
            {name: value / batches for name, value in block.items()} for block in block_sums
        ],
        "train_samples_per_s": samples / elapsed if elapsed > 0 else math.nan,
        "train_time_s": elapsed,
    }
