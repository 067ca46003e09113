"""The fine-tuning loop shared by image, audio and video configs.

One process or many under ``torchrun``: ``data.batch_size`` is the global batch
of one micro-step, split evenly over ranks, and an optimizer step takes
``train.grad_accum`` micro-steps. Every epoch reseeds the random generators from
``(seed, epoch, rank)`` and the sampler from ``(seed, epoch)``, so a run resumed
from an epoch checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ..data.registry import DatasetBundle, get_dataset_kind
from ..models.registry import create_model
from ..penalties import COMPONENTS
from .checkpoint import (
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    mark_best,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from .config import ConfigError, dump_config, resolve_config
from .distributed import DistInfo, all_reduce_sums, barrier, cleanup, gather_objects, init_distributed
from .io import save_weights, write_text
from .metrics import mean_average_precision, topk_correct
from .reporting import MetricsWriter, plot_run, read_records
from .schedules import coefficient_factors

logger = logging.getLogger(__name__)

ProgressFactory = Callable[..., Iterable]


@dataclass
class RunResult:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: Folder with ``config.yaml``, ``metrics.jsonl``/``.csv``,
            ``run_info.json``, ``checkpoints/`` and ``model.safetensors``.
        final: The last evaluation record (``top1``, ``top5`` or ``mAP``, ``loss``).
        history: All per-epoch records, as written to ``metrics.jsonl``.
    """

    run_dir: Path
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible NumPy/random seed derived from torch's.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def task_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy for class indices or soft targets, BCE for multi-hot targets."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if targets.dtype.is_floating_point:  # soft targets from mixup
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@torch.no_grad()
def collect_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; return float32 logits and targets on the CPU."""
    model.eval()
    all_logits, all_targets = [], []
    for inputs, targets in loader:
        with _autocast(device, bf16):
            logits = model(inputs.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)


def average_views(logits: torch.Tensor, targets: torch.Tensor, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the predictions of ``views`` consecutive samples (multi-clip, multi-crop)."""
    if views <= 1:
        return logits, targets
    if logits.shape[0] % views:
        raise ValueError(f"{logits.shape[0]} evaluation samples is not a multiple of eval_views={views}")
    return logits.view(-1, views, logits.shape[-1]).mean(dim=1), targets[::views]


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """``loss`` and ``top1``/``top5`` in percent, or ``mAP`` in percent for multi-label targets."""
    loss = float(task_loss(logits, targets, multilabel, 0.0))
    if multilabel:
        return {"loss": loss, "mAP": 100.0 * mean_average_precision(logits.sigmoid(), targets)}
    correct = topk_correct(logits, targets, (1, 5))
    n = targets.shape[0]
    return {"loss": loss, "top1": 100.0 * correct[1] / n, "top5": 100.0 * correct[5] / n}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    multilabel: bool = False,
    views: int = 1,
    bf16: bool = False,
) -> dict[str, float]:
    """Evaluate a classifier on one process; predictions of ``views`` consecutive samples are averaged."""
    logits, targets = collect_logits(model, loader, device, bf16)
    logits, targets = average_views(logits, targets, views)
    return classification_metrics(logits, targets, multilabel)


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
    for key in ("top1", "top5", "mAP", "ema_top1", "ema_mAP"):
        if key in record:
            parts.append(f"val {key} {record[key]:.2f}%")
    parts.append(f"{record['train_samples_per_s']:.1f} samples/s")
    return " | ".join(parts)


class Trainer:
    """State of one training run; :func:`train` is the entry point."""

    def __init__(self, cfg: dict[str, Any], progress: Optional[ProgressFactory], resume: Optional[Path]) -> None:
        self.cfg = cfg
        self.tcfg = cfg["train"]
        self.progress = progress
        self.dist, self.device = init_distributed(self.tcfg["device"])
        if self.tcfg["threads"]:
            torch.set_num_threads(self.tcfg["threads"])
        self.seed = self.tcfg["seed"]
        seed_everything(self.seed)

        self.resume_from = find_resume_checkpoint(resume) if resume is not None else None

        kind = get_dataset_kind(cfg["data"]["kind"])
        self.bundle = kind.build({k: v for k, v in cfg["data"].items() if k in kind.options})
        self.model = build_model(cfg, self.bundle).to(self.device)
        self.ema = self._make_ema()
        self.train_model = self._wrap(self.model)
        self.train_loader, self.train_sampler, self.val_loader = self._loaders()
        self.optimizer, self.scheduler = self._optimizer()
        self.mixup = self._make_mixup()
        self.coefficients = dict(self.model.dropout_config.coefficients) if hasattr(self.model, "dropout_config") else {}

        self.start_epoch, self.step, self.best = 1, 0, -math.inf
        self.run_dir = self._run_dir()
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self.writer = MetricsWriter(self.run_dir, self.tcfg["tensorboard"], resume=self.resume_from is not None) \
            if self.dist.is_main else None

    # ----- construction -----------------------------------------------------------------
    def _make_ema(self) -> Optional[nn.Module]:
        if not self.tcfg["ema"]:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.tcfg["ema_decay"], device=self.device)

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.tcfg["compile"]:
            wrapped = torch.compile(wrapped)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    def _loaders(self) -> tuple[DataLoader, DistributedSampler, DataLoader]:
        data = self.cfg["data"]
        world = self.dist.world_size
        if data["batch_size"] % world:
            raise ConfigError(f"data.batch_size={data['batch_size']} is not divisible by the {world} processes")
        per_rank = data["batch_size"] // world

        workers = data["num_workers"]
        common = dict(
            num_workers=workers,
            collate_fn=self.bundle.collate_fn,
            worker_init_fn=_worker_init if workers > 0 else None,
        )
        # The same sampler for one process and many, so both see the same global batches.
        sampler = DistributedSampler(
            self.bundle.train, num_replicas=world, rank=self.dist.rank, shuffle=True, seed=self.seed,
            drop_last=len(self.bundle.train) >= data["batch_size"],
        )
        train_loader = DataLoader(
            self.bundle.train, batch_size=per_rank, sampler=sampler,
            drop_last=len(self.bundle.train) >= data["batch_size"], **common,
        )

        views = self.bundle.eval_views
        eval_batch = data["eval_batch_size"] or data["batch_size"]
        eval_batch = max(views, eval_batch - eval_batch % views)
        # Each rank evaluates a contiguous share of whole view groups; rank 0 gathers them.
        groups = len(self.bundle.val) // views
        start = groups * self.dist.rank // world * views
        stop = groups * (self.dist.rank + 1) // world * views
        val_set = torch.utils.data.Subset(self.bundle.val, range(start, stop)) if world > 1 else self.bundle.val
        val_loader = DataLoader(val_set, batch_size=eval_batch, shuffle=False, **common)
        return train_loader, sampler, val_loader

    def _optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        t = self.tcfg
        optimizer = create_optimizer_v2(
            self.model, opt=t["opt"], lr=t["lr"], weight_decay=t["weight_decay"], layer_decay=t["layer_decay"],
        )
        steps_per_epoch = max(1, len(self.train_loader) // t["grad_accum"])
        self.steps_per_epoch = steps_per_epoch
        total = steps_per_epoch * t["epochs"]
        if t["max_steps"] is not None:
            total = min(total, t["max_steps"])
        self.total_steps = total
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total),
            lr_min=t["min_lr"],
            warmup_t=int(t["warmup_epochs"] * steps_per_epoch),
            warmup_lr_init=t["warmup_lr"],
            t_in_epochs=False,
        )
        return optimizer, scheduler

    def _make_mixup(self) -> Optional[Callable]:
        t = self.tcfg
        if not (t["mixup"] > 0 or t["cutmix"] > 0):
            return None
        if self.bundle.multilabel:
            raise ConfigError("train.mixup/train.cutmix work with single-label data only")
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=t["mixup"], cutmix_alpha=t["cutmix"], prob=t["mixup_prob"],
            label_smoothing=t["label_smoothing"], num_classes=self.bundle.num_classes,
        )

    def _run_dir(self) -> Path:
        if self.resume_from is not None:
            run = self.resume_from.parent.parent if self.resume_from.parent.name == "checkpoints" else self.resume_from.parent
            return run
        out = self.cfg["output"]
        name = out["name"] or f"{self.cfg['model']['name']}-{self.cfg['dropout']['mode']}-{time.strftime('%Y%m%d-%H%M%S')}"
        # A new run never mixes with the checkpoints of an earlier run of the same name:
        # it gets the first free folder name-1, name-2, ... instead.
        base, suffix = name, 0
        while list_checkpoints(Path(out["dir"]) / name / "checkpoints"):
            suffix += 1
            name = f"{base}-{suffix}"
        if suffix:
            logger.warning("run folder %s already has checkpoints; this run writes to %s (use --resume to continue "
                           "the earlier run)", Path(out["dir"]) / base, Path(out["dir"]) / name)
        names = gather_objects(name, self.dist)  # rank 0's time stamp names the folder
        path = Path(out["dir"]) / names[0]
        if self.dist.is_main:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _restore(self, path: Path) -> None:
        saved = load_checkpoint(path)
        self.model.load_state_dict(saved["model"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.module.load_state_dict(saved["ema"])
        state = saved["state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.step = state["step"]
        self.best = state.get("best", -math.inf)
        logger.info("resumed from %s at epoch %d, step %d", path, state["epoch"], self.step)

    # ----- training ---------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg_text = dump_config(self.cfg)
        if self.dist.is_main:
            write_text(self.run_dir / "config.yaml", cfg_text)
            write_text(self.run_dir / "run_info.json", json.dumps({
                "num_classes": self.bundle.num_classes,
                "class_names": list(self.bundle.class_names),
                "multilabel": self.bundle.multilabel,
                "model_kwargs": {**self.bundle.model_kwargs, **self.cfg["model"]["kwargs"]},
                "eval_views": self.bundle.eval_views,
            }, indent=2))
            n_params = sum(p.numel() for p in self.model.parameters())
            logger.info("run folder %s; model %s with %.2fM parameters on %s x%d; dropout mode %s",
                        self.run_dir, self.cfg["model"]["name"], n_params / 1e6, self.device,
                        self.dist.world_size, self.cfg["dropout"]["mode"])

        history: list[dict[str, Any]] = []
        if self.resume_from is not None:
            # Records written after the restored checkpoint (its epoch crashed) are dropped.
            history = [r for r in read_records(self.run_dir / "metrics.jsonl") if r["epoch"] < self.start_epoch]
            if self.dist.is_main:
                write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        final: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, self.tcfg["epochs"] + 1):
                if self.step >= self.total_steps:
                    break
                record = self._train_epoch(epoch)
                last = epoch == self.tcfg["epochs"] or self.step >= self.total_steps
                if epoch % self.tcfg["eval_every"] == 0 or last:
                    record.update(self._evaluate())
                    final = {k: record[k] for k in record if k in ("epoch", "step", "loss", "top1", "top5", "mAP", "ema_top1", "ema_mAP")}
                if self.dist.is_main:
                    self.writer.write(record)
                    logger.info(_format_epoch(record))
                    self._checkpoint(epoch, record, cfg_text)
                history.append(record)
                barrier(self.dist)
            if self.dist.is_main:
                save_weights(self.model, self.run_dir / "model.safetensors")
                if self.ema is not None:
                    save_weights(self.ema.module, self.run_dir / "model_ema.safetensors")
                if self.tcfg["plots"]:
                    plot_run(self.run_dir, history)
                logger.info("saved %s", self.run_dir / "model.safetensors")
        finally:
            if self.writer is not None:
                self.writer.close()
        if not final and history:
            final = {k: history[-1][k] for k in history[-1] if k in ("epoch", "step", "loss", "top1", "top5", "mAP")}
        return RunResult(run_dir=self.run_dir, final=final, history=history)

    def _checkpoint(self, epoch: int, record: dict[str, Any], cfg_text: str) -> None:
        keep = self.tcfg["keep_checkpoints"]
        if keep <= 0:
            return
        metric = record.get("mAP", record.get("top1"))
        improved = metric is not None and metric > self.best
        if improved:
            self.best = metric
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": self.step,
            "best": self.best,
        }
        folder = self.run_dir / "checkpoints"
        path = save_checkpoint(folder, epoch, self.model, state, cfg_text,
                               ema=self.ema.module if self.ema is not None else None)
        if improved:
            mark_best(folder, path)
        prune_checkpoints(folder, keep)

    def _recovery_hint(self) -> str:
        checkpoints = list_checkpoints(self.run_dir / "checkpoints")
        if checkpoints:
            return (f"The last complete checkpoint, {checkpoints[-1]}, is intact: lower train.lr or the "
                    f"dropout coefficients and continue with --resume {self.run_dir}.")
        return "No checkpoint was written before this step: lower train.lr or the dropout coefficients and start again."

    def _coefficients(self) -> Optional[dict[str, float]]:
        warmup = self.tcfg["coefficient_warmup"]
        if not warmup:
            return None
        position = self.step / self.steps_per_epoch  # epochs, fractional
        factors = coefficient_factors(warmup, self.tcfg["coefficient_warmup_shape"], position)
        return {c: self.coefficients[c] * factors.get(c, 1.0) for c in self.coefficients}

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        t = self.tcfg
        self.train_model.train()
        seed_everything(self.seed + 1000 * epoch + self.dist.rank)
        self.train_sampler.set_epoch(epoch)

        sums: dict[str, float] = {"task": 0.0, "batches": 0.0, "samples": 0.0}
        block_sums: list[dict[str, float]] = []
        start = time.perf_counter()
        iterator: Iterable = self.train_loader
        if self.progress is not None and self.dist.is_main:
            iterator = self.progress(self.train_loader, total=len(self.train_loader), desc=f"epoch {epoch}", leave=False)

        accum = t["grad_accum"]
        micro = 0
        self.optimizer.zero_grad(set_to_none=True)
        for inputs, targets in iterator:
            if self.step >= self.total_steps:
                break
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.bundle.train_batch_transform is not None:
                inputs, targets = self.bundle.train_batch_transform(inputs, targets)
            if self.mixup is not None:
                inputs, targets = self.mixup(inputs, targets)

            micro += 1
            sync_now = micro % accum == 0
            no_sync = self.train_model.no_sync if (self.dist.enabled and not sync_now) else contextlib.nullcontext
            with no_sync():
                with _autocast(self.device, t["bf16"]):
                    logits, penalty = self.train_model(inputs, return_penalty=True)
                coefficients = self._coefficients()
                if coefficients is not None:
                    penalty = penalty.reweighted(coefficients)
                loss_task = task_loss(logits, targets, self.bundle.multilabel, t["label_smoothing"])
                loss = loss_task + penalty.total
                if not torch.isfinite(loss):
                    parts = {"task": float(loss_task.detach()), **penalty.detached()}
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {parts}. {self._recovery_hint()}")
                (loss / accum).backward()

            sums["task"] += float(loss_task.detach())
            sums["batches"] += 1
            sums["samples"] += inputs.shape[0]
            for name, value in penalty.detached().items():
                sums[f"penalty.{name}"] = sums.get(f"penalty.{name}", 0.0) + value
            for index, block in enumerate(penalty.per_block_floats()):
                if index >= len(block_sums):
                    block_sums.append({})
                for name, value in block.items():
                    block_sums[index][name] = block_sums[index].get(name, 0.0) + value

            if sync_now:
                if t["grad_clip"]:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t["grad_clip"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.scheduler.step_update(self.step)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
            if hasattr(iterator, "set_postfix"):
                iterator.set_postfix(loss=f"{float(loss_task.detach()):.3f}", penalty=f"{float(penalty.total.detach()):.4f}")

        elapsed = time.perf_counter() - start
        flat_blocks = {f"block{i}.{k}": v for i, b in enumerate(block_sums) for k, v in b.items()}
        totals = all_reduce_sums({**sums, **flat_blocks, "elapsed": elapsed}, self.dist, self.device)
        batches = max(totals["batches"], 1.0)
        penalty_means = {k[len("penalty."):]: v / batches for k, v in totals.items() if k.startswith("penalty.")}
        ordered = {"total": penalty_means.pop("total", 0.0)}
        ordered.update({c: penalty_means.pop(c) for c in COMPONENTS if c in penalty_means})
        ordered.update(penalty_means)
        per_block = [
            {k: totals[f"block{i}.{k}"] / batches for k in block} for i, block in enumerate(block_sums)
        ]
        wall = totals["elapsed"] / self.dist.world_size
        return {
            "epoch": epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_task_loss": totals["task"] / batches,
            "train_penalty": ordered,
            "train_penalty_per_block": per_block,
            "train_samples_per_s": totals["samples"] / wall if wall > 0 else math.nan,
            "train_time_s": wall,
        }

    def _evaluate(self) -> dict[str, float]:
        views, bf16, multilabel = self.bundle.eval_views, self.tcfg["bf16"], self.bundle.multilabel
        out = {}
        models = [("", self.model)] + ([("ema_", self.ema.module)] if self.ema is not None else [])
        for prefix, model in models:
            logits, targets = collect_logits(model, self.val_loader, self.device, bf16)
            parts = gather_objects((logits, targets), self.dist)
            logits = torch.cat([p[0] for p in parts])
            targets = torch.cat([p[1] for p in parts])
            logits, targets = average_views(logits, targets, views)
            metrics = classification_metrics(logits, targets, multilabel)
            if prefix:
                metrics = {k: v for k, v in metrics.items() if k != "loss"}
            out.update({f"{prefix}{k}": v for k, v in metrics.items()})
        return out


def train(
    raw_cfg: dict[str, Any],
    progress: Optional[ProgressFactory] = None,
    resume: Optional[str | Path] = None,
) -> RunResult:
    """Fine-tune a model as configured and write a run folder.

    Args:
        raw_cfg: Nested config dict (see :mod:`exdrop.train.config`); it is
            validated completely before any data is read.
        progress: Optional progress-bar factory such as ``tqdm.tqdm``; called as
            ``progress(iterable, total=..., desc=..., leave=False)``.
        resume: A run folder or checkpoint folder to continue from; the run
            continues in that folder.
    """
    cfg = resolve_config(raw_cfg)
    trainer = Trainer(cfg, progress, Path(resume) if resume is not None else None)
    try:
        return trainer.run()
    finally:
        cleanup(trainer.dist)
