"""Training checkpoints that survive crashes: one folder each, renamed into place when complete.

Layout of ``<run>/checkpoints/epoch-0003/``: ``model.safetensors``, optionally
``ema.safetensors``, ``state.pt`` (optimizer, scheduler, RNG states, epoch,
step, best metric) and ``config.yaml``. The folder is written as
``.epoch-0003.tmp`` and renamed when every file is on disk, so a crash leaves
either a complete checkpoint or a temporary folder that loading ignores.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^epoch-(\d+)$")
BEST = "best"


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Capture Python, NumPy and torch (CPU and CUDA) random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    folder: Path,
    epoch: int,
    model: nn.Module,
    state: dict[str, Any],
    config_text: str,
    ema: Optional[nn.Module] = None,
) -> Path:
    """Write ``folder/epoch-NNNN`` atomically and return its path.

    Args:
        folder: The run's ``checkpoints`` folder.
        epoch: Completed epochs; names the checkpoint.
        model: The (unwrapped) model.
        state: Optimizer, scheduler, RNG, counters; saved with ``torch.save``.
        config_text: The resolved config as YAML.
        ema: The EMA model, if any.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"epoch-{epoch:04d}"
    tmp = folder / f".epoch-{epoch:04d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_state_dict_cpu(ema), str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_text)
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # an earlier run of the same epoch, replaced as a whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(folder)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` epoch checkpoints (the ``best`` copy is kept)."""
    checkpoints = list_checkpoints(folder)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        shutil.rmtree(path)
        logger.info("removed old checkpoint %s", path)


def mark_best(folder: Path, checkpoint: Path) -> Path:
    """Copy ``checkpoint`` to ``folder/best`` atomically (copy, then rename)."""
    tmp = folder / ".best.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp)
    best = folder / BEST
    old = folder / ".best.old"
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    if old.exists():
        shutil.rmtree(old)
    return best


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint folder into ``{"model", "ema", "state", "config_text"}``.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint folder.
    """
    from safetensors.torch import load_file

    model_file, state_file = path / "model.safetensors", path / "state.pt"
    if not model_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (model.safetensors and state.pt are required)"
        )
    ema_file = path / "ema.safetensors"
    return {
        "model": load_file(str(model_file)),
        "ema": load_file(str(ema_file)) if ema_file.is_file() else None,
        # state.pt is written by save_checkpoint and contains optimizer and RNG state objects,
        # which weights_only=True cannot load. Load checkpoints only from trusted run folders.
        "state": torch.load(state_file, map_location="cpu", weights_only=False),
        "config_text": (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else "",
    }


def find_resume_checkpoint(target: Path) -> Path:
    """Turn ``--resume`` input (a run folder or a checkpoint folder) into the newest checkpoint."""
    if not target.exists():
        raise FileNotFoundError(f"resume folder not found: {target}")
    if (target / "state.pt").is_file():
        return target
    checkpoints = list_checkpoints(target / "checkpoints") or list_checkpoints(target)
    if not checkpoints:
        raise FileNotFoundError(
            f"no complete checkpoint under {target}: expected {target / 'checkpoints'}/epoch-NNNN folders "
            "written by a run with train.keep_checkpoints > 0. Start the run again without --resume."
        )
    return checkpoints[-1]
