"""Model registry: names -> builders, as in timm, for every model family."""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch.nn as nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model name.

    Attributes:
        name: Registered name, e.g. ``vit_base_patch16_224``.
        family: Model family (``vit``, ``ast``, ``video``), for listings.
        create: Builder called as ``create(entry, pretrained=..., checkpoint_path=...,
            dropout=..., tag=..., **kwargs)``; it returns the model.
        model_args: Architecture keyword arguments of this name.
        pretrained_source: The timm name whose pretrained config (hub id, tags,
            mean and std) ``pretrained=True`` uses, or ``None`` when the name has
            no pretrained weights of its own.
    """

    name: str
    family: str
    create: Callable[..., nn.Module]
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_source: Optional[str] = None


_REGISTRY: dict[str, ModelEntry] = {}
_LAZY_FAMILIES: list[Callable[[], None]] = []
_LOADED = False


def register_model(entry: ModelEntry) -> None:
    """Add one name to the registry; a name may be registered once."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model name {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def register_family(loader: Callable[[], None]) -> None:
    """Register a function that fills the registry on first use (kept lazy for import speed)."""
    _LAZY_FAMILIES.append(loader)


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for loader in _LAZY_FAMILIES:
        loader()


def split_name_tag(name: str) -> tuple[str, Optional[str]]:
    """Split ``"vit_base_patch16_224.augreg_in1k"`` into the name and the pretrained tag."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry of a name (a pretrained tag after a dot is ignored)."""
    _ensure_loaded()
    base, _ = split_name_tag(name)
    if base not in _REGISTRY:
        close = difflib.get_close_matches(base, list(_REGISTRY), n=5, cutoff=0.6)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"unknown model name {base!r}.{hint} Call exdrop.list_models() for all names."
        )
    return _REGISTRY[base]


def list_models(pattern: Optional[str] = None, family: Optional[str] = None) -> list[str]:
    """Return registered names, sorted, filtered by a shell-style ``pattern`` and ``family``."""
    _ensure_loaded()
    names = sorted(
        name for name, entry in _REGISTRY.items() if family is None or entry.family == family
    )
    if pattern:
        names = fnmatch.filter(names, pattern)
    return names


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    num_classes: Optional[int] = None,
    img_size: Optional[Any] = None,
    dropout: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model by name, optionally with weights.

    Args:
        name: Registered name, optionally with a pretrained tag
            (``"vit_base_patch16_224.augreg_in21k"``).
        pretrained: Load the weights of timm's pretrained config for this name from
            the Hugging Face hub cache (downloads only when the hub is reachable).
        checkpoint_path: A local ``.safetensors`` or ``.pth`` file to load instead.
        num_classes: Classifier width; a checkpoint head of another width is dropped.
        img_size: Input size; position embeddings of a checkpoint are resampled.
        dropout: :class:`~exdrop.DropoutConfig`, a dict with its fields, a mode
            string or ``None`` (off, unless timm's dropout rates are given).
        **kwargs: Architecture overrides and family options (timm's
            ``drop_path_rate``, ``attn_drop_rate``, ``proj_drop_rate``, ...).
    """
    entry = get_entry(name)
    _, tag = split_name_tag(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    return entry.create(
        entry,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        dropout=dropout,
        tag=tag,
        **kwargs,
    )
