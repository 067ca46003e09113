"""Registered ViT, DeiT and DeiT III names, read from timm's own model definitions.

timm defines each name as a small function that passes architecture arguments
to ``_create_vision_transformer`` (ViT) or ``_create_deit`` (DeiT). We call
those functions with the creators swapped for a recorder, so that every name
gets exactly timm's arguments without building a model, and register the
names whose arguments :class:`VisionTransformer` supports.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional
from unittest import mock

import torch.nn as nn

from .checkpoint import LoadReport, hub_weights_file, load_checked, read_state_dict, strip_prefixes
from .registry import ModelEntry, register_family, register_model
from .vision_transformer import VisionTransformer, adapt_state_dict

logger = logging.getLogger(__name__)

NAME_PATTERNS = ("vit_*", "deit_*", "deit3_*")

# Arguments that select a part VisionTransformer does not implement.
_UNSUPPORTED_ARGUMENTS = ("block_fn", "mlp_layer", "attn_layer", "embed_layer", "embed_norm_layer")


def _record_timm_arguments() -> dict[str, dict[str, Any]]:
    """Return timm name -> constructor arguments for the ViT and DeiT model functions."""
    import timm
    import timm.models.deit as timm_deit
    import timm.models.vision_transformer as timm_vit
    from timm.models import model_entrypoint

    recorded: dict[str, dict[str, Any]] = {}

    def recorder(distilled_default: bool):
        def record(variant: str, pretrained: bool = False, **kwargs: Any) -> None:
            if not distilled_default:
                kwargs.pop("distilled", None)
            recorded[variant] = kwargs

        return record

    creators = {"_create_vision_transformer", "_create_deit"}
    with mock.patch.object(timm_vit, "_create_vision_transformer", recorder(False)), \
            mock.patch.object(timm_deit, "_create_deit", recorder(True)):
        for pattern in NAME_PATTERNS:
            for name in timm.list_models(pattern):
                fn = model_entrypoint(name)
                # Other functions (hybrids, NaFlex, ...) would build a real model: skip them.
                if not creators & set(fn.__code__.co_names):
                    continue
                try:
                    fn()
                except Exception as err:  # a timm function we cannot replay is simply not registered
                    logger.debug("skipping timm model %s: %s", name, err)
    return recorded


def _supported(kwargs: dict[str, Any]) -> bool:
    if any(key in kwargs for key in _UNSUPPORTED_ARGUMENTS):
        return False
    if kwargs.get("global_pool", "token") not in ("", "token", "avg", "avgmax", "max"):
        return False
    if kwargs.get("scale_attn_norm") or kwargs.get("scale_mlp_norm"):
        return False
    if kwargs.get("use_naflex"):
        return False
    return True


def timm_pretrained_cfg(source: str, tag: Optional[str]) -> Optional[Any]:
    """Return timm's ``PretrainedCfg`` for ``source[.tag]``, or ``None`` when timm has none."""
    from timm.models import get_pretrained_cfg

    full = f"{source}.{tag}" if tag else source
    try:
        return get_pretrained_cfg(full, allow_unregistered=False)
    except Exception:  # unknown tag or model
        return None


def _weights_path(entry: ModelEntry, tag: Optional[str], cfg: Any) -> Path:
    full = f"{entry.name}.{tag}" if tag else entry.name
    if cfg is None:
        raise ValueError(
            f"timm has no pretrained config for {full!r}; pass checkpoint_path=... with a local file"
        )
    if not cfg.hf_hub_id:
        raise ValueError(
            f"pretrained weights of {full!r} are only published at {cfg.url or 'an unknown address'}, "
            "not on the Hugging Face hub; download the file and pass checkpoint_path=..."
        )
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return hub_weights_file(cfg.hf_hub_id, filenames)


def load_timm_checkpoint(model: VisionTransformer, path: Path | str) -> LoadReport:
    """Load a timm-layout ViT/DeiT checkpoint file into ``model``, adapting sizes and heads."""
    report = LoadReport()
    state_dict = read_state_dict(path)
    state_dict = strip_prefixes(state_dict, ("module.", "_orig_mod."), report)
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError(
            f"{path}: not a timm ViT/DeiT checkpoint (no 'patch_embed.proj.weight' key). "
            "Load the original file with timm and save model.state_dict() to convert it."
        )
    state_dict = adapt_state_dict(state_dict, model, report)
    load_checked(model, state_dict, report, source=str(path))
    return report


def _create(
    entry: ModelEntry,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    dropout: Any = None,
    tag: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    cfg = timm_pretrained_cfg(entry.pretrained_source, tag) if entry.pretrained_source else None
    if tag and cfg is None:
        raise ValueError(f"unknown pretrained tag {tag!r} for {entry.name!r}")
    args = {**entry.model_args, **kwargs}
    if cfg is not None:
        _apply_cfg_defaults(cfg, args)
    model = VisionTransformer(dropout=dropout, **args)
    model.pretrained_cfg = _data_cfg(cfg, model)

    path = checkpoint_path or (_weights_path(entry, tag, cfg) if pretrained else None)
    if path is not None:
        load_timm_checkpoint(model, path)
    return model


def _apply_cfg_defaults(cfg: Any, args: dict[str, Any]) -> None:
    """Fill arguments the way timm's builder does from the pretrained config.

    timm takes ``num_classes``, ``global_pool``, ``in_chans`` and, for models with
    a fixed input size, ``img_size`` from the config unless they are given.
    """
    if cfg.num_classes is not None and cfg.num_classes >= 0:
        args.setdefault("num_classes", cfg.num_classes)
    if getattr(cfg, "global_pool", None) is not None:
        args.setdefault("global_pool", cfg.global_pool)
    if cfg.input_size is not None:
        args.setdefault("in_chans", cfg.input_size[0])
        if cfg.fixed_input_size:
            args.setdefault("img_size", tuple(cfg.input_size[-2:]))


def _data_cfg(cfg: Any, model: VisionTransformer) -> dict[str, Any]:
    """timm-style pretrained config, with the model's actual input size and classes."""
    out: dict[str, Any] = cfg.to_dict() if cfg is not None else {
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic", "crop_pct": 0.9,
    }
    height, width = model.patch_embed.img_size
    out["input_size"] = (model.in_chans, height, width)
    out["num_classes"] = model.num_classes
    return out


def _register_all() -> None:
    for name, kwargs in sorted(_record_timm_arguments().items()):
        if _supported(kwargs):
            register_model(ModelEntry(
                name=name, family="vit", create=_create, model_args=kwargs, pretrained_source=name,
            ))


register_family(_register_all)
