"""Reading checkpoint files and hub caches, and reporting what a load changed.

Family-specific converters (timm ViT, AST, VideoMAE, ...) build on these: each
returns a clean state dict for its model plus a :class:`LoadReport`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# Container keys that training scripts wrap around the weights, tried in order.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "module", "model_ema", "state_dict_ema")


@dataclass
class LoadReport:
    """Record of the keys a checkpoint conversion and load changed.

    Attributes:
        renamed: ``(old, new)`` key pairs.
        resampled: Keys whose tensors were interpolated to a new shape, with a note.
        dropped: Checkpoint keys not loaded (unused by the model, or a head of
            another width), with the reason.
        missing: Model keys the checkpoint did not provide; they keep their init.
    """

    renamed: list[tuple[str, str]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def log(self, source: str) -> None:
        """Log a summary at INFO and each dropped or missing key at WARNING/INFO."""
        logger.info(
            "loaded %s: %d keys renamed, %d resampled, %d dropped, %d missing",
            source, len(self.renamed), len(self.resampled), len(self.dropped), len(self.missing),
        )
        if self.renamed:
            shown = ", ".join(f"{a} -> {b}" for a, b in self.renamed[:6])
            more = f" (and {len(self.renamed) - 6} more)" if len(self.renamed) > 6 else ""
            logger.info("renamed: %s%s", shown, more)
        for item in self.resampled:
            logger.info("resampled %s", item)
        for item in self.dropped:
            logger.info("dropped %s", item)
        for key in self.missing:
            logger.warning("missing from checkpoint, left at init: %s", key)


def _unwrap(obj: object, path: Path) -> StateDict:
    """Find the tensor dict inside a training checkpoint."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], path)
    raise ValueError(
        f"{path}: no state dict found (expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in _CONTAINER_KEYS)})"
    )


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Read a ``.safetensors`` file or a PyTorch pickle (``.pth``, ``.pt``, ``.bin``, ``.ckpt``).

    Pickles are read with ``weights_only=True``: a file that needs arbitrary code
    to unpickle is rejected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint file is empty: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path}: could not be read as a PyTorch checkpoint with weights_only=True ({err}). "
                "Re-save it as a plain state dict or as .safetensors."
            ) from err
        return _unwrap(obj, path)
    raise ValueError(
        f"{path}: unsupported checkpoint suffix {path.suffix!r}; use .safetensors, .pth, .pt, .bin or .ckpt"
    )


def strip_prefixes(
    state_dict: StateDict, prefixes: Iterable[str], report: LoadReport
) -> StateDict:
    """Remove wrapper prefixes such as ``module.`` (DDP) from every key that has one."""
    out: StateDict = {}
    prefixes = tuple(prefixes)
    for key, value in state_dict.items():
        new_key = key
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if new_key.startswith(prefix):
                    new_key = new_key[len(prefix):]
                    changed = True
        if new_key != key:
            report.renamed.append((key, new_key))
        out[new_key] = value
    return out


def hub_weights_file(
    repo_id: str,
    filenames: Iterable[str] = ("model.safetensors", "pytorch_model.bin"),
    revision: Optional[str] = None,
) -> Path:
    """Find a weights file of a Hugging Face hub repo, from the local cache first.

    The cache (``HF_HUB_CACHE`` or ``HF_HOME``) is searched without touching the
    network. Only when nothing is cached and ``HF_HUB_OFFLINE`` is not set is a
    download tried.
    """
    from huggingface_hub import hf_hub_download

    filenames = list(filenames)
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=True))
        except Exception:  # not cached: huggingface_hub raises several error types here
            continue

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    errors = []
    if not offline:
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo_id, filename, revision=revision))
            except Exception as err:
                errors.append(f"{filename}: {type(err).__name__}")
    detail = f" Download failed ({'; '.join(errors)})." if errors else " HF_HUB_OFFLINE is set, so no download was tried."
    raise FileNotFoundError(
        f"pretrained weights for hub repo {repo_id!r} ({' or '.join(filenames)}) are not in the "
        f"Hugging Face cache.{detail} Pass checkpoint_path=... with a local .safetensors or .pth "
        "file, or fill the cache on a machine with hub access."
    )


def load_checked(model: nn.Module, state_dict: StateDict, report: LoadReport, source: str) -> None:
    """Load ``state_dict`` non-strictly, record what is missing or unused, and log the report."""
    model_state = model.state_dict()
    for key in sorted(state_dict):
        if key not in model_state:
            report.dropped.append(f"{key} (not a parameter of this model)")
            state_dict.pop(key)
        elif state_dict[key].shape != model_state[key].shape:
            report.dropped.append(
                f"{key} (shape {tuple(state_dict[key].shape)} in the checkpoint, "
                f"{tuple(model_state[key].shape)} in the model)"
            )
            state_dict.pop(key)
    result = model.load_state_dict(state_dict, strict=False)
    report.missing.extend(result.missing_keys)
    report.log(source)
    # A head of another width is expected to be missing; most of the model is not.
    if len(result.missing_keys) > len(model_state) // 2:
        raise ValueError(
            f"{source} does not match this model: {len(result.missing_keys)} of {len(model_state)} "
            f"parameters are missing from it and {len(report.dropped)} of its keys were dropped. "
            "Check the model name and architecture arguments, or the checkpoint format."
        )
