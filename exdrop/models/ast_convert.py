"""Checkpoint converters for AST: original AST, transformers, timm DeiT/ViT and exdrop files.

Each ``convert_*`` function takes a state dict in one foreign layout and returns
one in :class:`~exdrop.models.ast.ASTModel`'s layout, recording what it did in
a :class:`~exdrop.models.checkpoint.LoadReport`. :func:`load_ast_checkpoint`
detects the layout from the keys.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .ast import ASTModel, patch_grid, resize_pos_embed
from .checkpoint import LoadReport, StateDict, load_checked, read_state_dict, strip_prefixes

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Grid = tuple[int, int]

FORMATS = ("exdrop", "original", "transformers", "timm")

# transformers' AST keys below the layer prefix -> ours. Two spellings exist:
# the module names of transformers 5 (q_proj, o_proj, mlp.fc1), which
# state_dict() returns, and the 4.x layout, which save_pretrained in 5.25 still writes.
_TRANSFORMERS_LAYER_KEYS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_TRANSFORMERS_QKV = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
}
_TRANSFORMERS_TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.layernorm.weight": "head.norm.weight",
    "classifier.layernorm.bias": "head.norm.bias",
    "classifier.dense.weight": "head.fc.weight",
    "classifier.dense.bias": "head.fc.bias",
}
_TRANSFORMERS_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def detect_format(state_dict: StateDict) -> str:
    """Name the layout of an AST-related state dict: one of :data:`FORMATS`.

    Raises:
        ValueError: When the keys match none of them.
    """
    keys = set(state_dict)
    if any(k.startswith(("v.", "mlp_head.")) for k in keys):
        return "original"
    if any("patch_embeddings.projection" in k for k in keys):
        return "transformers"
    if "patch_embed.proj.weight" in keys:
        return "exdrop" if "head.norm.weight" in keys else "timm"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        "not an AST, transformers AST or timm ViT/DeiT state dict (no patch embedding key found; "
        f"first keys: {sample})"
    )


def infer_source_grid(pos_embed: torch.Tensor, model: ASTModel, num_prefix_tokens: int = 2) -> Grid:
    """Guess the patch grid of a checkpoint's position embedding.

    Assumes the checkpoint used the model's mel bins and frequency stride, so
    that only the number of time patches can differ.
    """
    patches = pos_embed.shape[1] - num_prefix_tokens
    freq = model.grid_size[0]
    if patches <= 0 or patches % freq:
        raise ValueError(
            f"pos_embed with {patches} patch positions does not divide into {freq} frequency rows; "
            "the checkpoint used other mel bins or fstride. Load it with "
            "exdrop.models.ast_convert.load_ast_checkpoint(model, path, source_grid=(freq_patches, time_patches))."
        )
    return freq, patches // freq


def fit_pos_embed(
    state_dict: StateDict, model: ASTModel, report: LoadReport, source_grid: Optional[Grid] = None
) -> StateDict:
    """Cut or interpolate an AST ``pos_embed`` of ``source_grid`` to the model's grid."""
    pos = state_dict.get("pos_embed")
    if pos is None:
        return state_dict
    grid = source_grid or infer_source_grid(pos, model)
    if tuple(grid) != model.grid_size:
        state_dict["pos_embed"] = resize_pos_embed(pos, tuple(grid), model.grid_size)
        report.resampled.append(
            f"pos_embed: patch grid {grid[0]}x{grid[1]} -> {model.grid_size[0]}x{model.grid_size[1]} "
            "(freq x time, center cut or bilinear as AST)"
        )
    return state_dict


def convert_original(
    state_dict: StateDict, model: ASTModel, report: LoadReport, source_grid: Optional[Grid] = None
) -> StateDict:
    """Convert the original AST layout (``v.*`` timm DeiT, ``mlp_head.0/1``) to exdrop's."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key in ("v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias"):
            report.dropped.append(f"{key} (ImageNet head of the DeiT encoder, unused by AST)")
            continue
        if key.startswith("v."):
            new_key = key[2:]
        elif key.startswith("mlp_head.0."):
            new_key = "head.norm." + key[len("mlp_head.0."):]
        elif key.startswith("mlp_head.1."):
            new_key = "head.fc." + key[len("mlp_head.1."):]
        else:
            new_key = key
        if new_key != key:
            report.renamed.append((key, new_key))
        out[new_key] = value
    return fit_pos_embed(out, model, report, source_grid)


def transformers_grid(config: dict[str, Any]) -> Grid:
    """Return the patch grid of a transformers ``ASTConfig`` dict."""
    return patch_grid(
        int(config.get("num_mel_bins", 128)),
        int(config.get("max_length", 1024)),
        int(config.get("patch_size", 16)),
        int(config.get("frequency_stride", 10)),
        int(config.get("time_stride", 10)),
    )


def convert_transformers(
    state_dict: StateDict,
    model: ASTModel,
    report: LoadReport,
    config: Optional[dict[str, Any]] = None,
    source_grid: Optional[Grid] = None,
) -> StateDict:
    """Convert transformers' ``ASTForAudioClassification``/``ASTModel`` weights (5.x or 4.x keys).

    The separate ``q``, ``k`` and ``v`` projections are concatenated into
    ``qkv`` in that order. ``config`` (the ``config.json`` dict) gives the
    source patch grid; without it the grid is inferred from the model.
    """
    prefix = "audio_spectrogram_transformer."
    flat: StateDict = {}
    for key, value in state_dict.items():
        flat[key[len(prefix):] if key.startswith(prefix) else key] = value

    out: StateDict = {}
    qkv_parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # layer -> weight|bias -> q|k|v
    for key, value in flat.items():
        if key in _TRANSFORMERS_TOP_KEYS:
            new_key = _TRANSFORMERS_TOP_KEYS[key]
            report.renamed.append((key, new_key))
            out[new_key] = value
            continue
        match = _TRANSFORMERS_LAYER.match(key)
        if match is None:
            report.dropped.append(f"{key} (not part of transformers' AST)")
            continue
        layer, module, kind = match.groups()
        qkv_name = next((c for c, names in _TRANSFORMERS_QKV.items() if module in names), None)
        if qkv_name is not None:
            qkv_parts.setdefault(layer, {}).setdefault(kind, {})[qkv_name] = value
            continue
        if module not in _TRANSFORMERS_LAYER_KEYS:
            report.dropped.append(f"{key} (not part of transformers' AST)")
            continue
        new_key = f"blocks.{layer}.{_TRANSFORMERS_LAYER_KEYS[module]}.{kind}"
        report.renamed.append((key, new_key))
        out[new_key] = value

    for layer, kinds in qkv_parts.items():
        for kind, parts in kinds.items():
            if set(parts) != {"q", "k", "v"}:
                raise ValueError(
                    f"transformers AST layer {layer}: {kind} of {', '.join(sorted(parts))} found, "
                    "but query, key and value are all needed"
                )
            new_key = f"blocks.{layer}.attn.qkv.{kind}"
            out[new_key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
            report.renamed.append((f"layer {layer} query/key/value {kind}", new_key))

    if source_grid is None and config is not None:
        source_grid = transformers_grid(config)
        if int(config.get("frequency_stride", 10)) != model.fstride or int(config.get("time_stride", 10)) != model.tstride:
            logger.warning(
                "checkpoint strides (f%s, t%s) differ from the model's (f%d, t%d); position embeddings "
                "are resized but were learned for other patch positions",
                config.get("frequency_stride"), config.get("time_stride"), model.fstride, model.tstride,
            )
    return fit_pos_embed(out, model, report, source_grid)


def convert_timm_vit(state_dict: StateDict, model: ASTModel, report: LoadReport) -> StateDict:
    """Initialize AST from ImageNet ViT/DeiT weights as the original AST does.

    The RGB patch kernel is summed over its input channels into one channel.
    The square grid of patch positions is center-cut or bilinearly stretched to
    the spectrogram grid. The ImageNet heads are dropped and the final norm is
    kept. A ViT without a distillation token gives its class token (and that
    token's position embedding) to both prefix positions.
    """
    from timm.layers import resample_patch_embed

    out = dict(state_dict)
    for key in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias", "fc_norm.weight", "fc_norm.bias"):
        if key in out:
            out.pop(key)
            report.dropped.append(f"{key} (ImageNet head, replaced by the AST head)")
    if "reg_token" in out:
        raise ValueError("timm ViTs with register tokens are not supported as AST initialization")

    weight = out["patch_embed.proj.weight"]  # (D, C, p, p)
    if weight.shape[1] != 1:
        out["patch_embed.proj.weight"] = weight.sum(dim=1, keepdim=True)
        report.resampled.append(f"patch_embed.proj.weight: summed over {weight.shape[1]} input channels")
    if weight.shape[-1] != model.patch_size or weight.shape[-2] != model.patch_size:
        out["patch_embed.proj.weight"] = resample_patch_embed(
            out["patch_embed.proj.weight"], [model.patch_size, model.patch_size], verbose=False
        )
        report.resampled.append(f"patch_embed.proj.weight: kernel {tuple(weight.shape[-2:])} -> {model.patch_size}")

    if "cls_token" not in out:
        raise ValueError("the timm checkpoint has no class token; AST needs a class-token ViT or DeiT")
    has_dist = "dist_token" in out
    if not has_dist:
        out["dist_token"] = out["cls_token"].clone()
        report.renamed.append(("cls_token", "dist_token (copy, the ViT has no distillation token)"))

    pos = out["pos_embed"]  # (1, prefix + S*S, D), or (1, S*S, D) for no_embed_class models
    prefix = 1 + int(has_dist)
    side = math.isqrt(pos.shape[1] - prefix)
    if side * side == pos.shape[1] - prefix:
        prefix_pos = pos[:, :prefix] if has_dist else pos[:, :1].repeat(1, 2, 1)
        patches = pos[:, prefix:]
    else:
        side = math.isqrt(pos.shape[1])
        if side * side != pos.shape[1]:
            raise ValueError(
                f"timm pos_embed with {pos.shape[1]} positions is not a square patch grid; "
                "only square-input ViT/DeiT checkpoints can initialize AST"
            )
        prefix_pos = torch.zeros(1, 2, pos.shape[2], dtype=pos.dtype)
        patches = pos
    out["pos_embed"] = resize_pos_embed(torch.cat([prefix_pos, patches], dim=1), (side, side), model.grid_size)
    report.resampled.append(
        f"pos_embed: image grid {side}x{side} -> spectrogram grid {model.grid_size[0]}x{model.grid_size[1]}"
    )
    return out


def read_transformers_config(path: PathLike) -> Optional[dict[str, Any]]:
    """Return the ``config.json`` beside a transformers weights file (or in a folder), if present."""
    path = Path(path)
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    if not config_path.is_file():
        return None
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("model_type") != "audio-spectrogram-transformer":
        return None
    return config


def checkpoint_numerics(path: PathLike) -> dict[str, Any]:
    """Return the LayerNorm epsilons and activation that a transformers checkpoint's config sets.

    Empty for other files: the registered AST names already use the original
    AST's values (1e-6 in the blocks, 1e-5 in the head).

    NOTE: a transformers weights file without its ``config.json`` is loaded with
    those values; pass ``norm_eps=1e-12, head_norm_eps=1e-12`` to reproduce
    transformers' logits exactly (the difference is about 1e-5 otherwise).
    """
    config = read_transformers_config(path)
    if config is None:
        return {}
    eps = float(config.get("layer_norm_eps", 1e-12))
    return {"norm_eps": eps, "head_norm_eps": eps, "act_layer": config.get("hidden_act", "gelu")}


def transformers_config_to_args(config: dict[str, Any]) -> dict[str, Any]:
    """Translate a transformers ``ASTConfig`` dict into :class:`ASTModel` arguments."""
    patch = config.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ValueError(f"non-square AST patches {patch} are not supported")
        patch = patch[0]
    hidden = int(config.get("hidden_size", 768))
    num_labels = len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 527))
    eps = float(config.get("layer_norm_eps", 1e-12))
    return dict(
        num_classes=num_labels,
        input_fdim=int(config.get("num_mel_bins", 128)),
        input_tdim=int(config.get("max_length", 1024)),
        patch_size=int(patch),
        fstride=int(config.get("frequency_stride", 10)),
        tstride=int(config.get("time_stride", 10)),
        embed_dim=hidden,
        depth=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 12)),
        mlp_ratio=int(config.get("intermediate_size", 4 * hidden)) / hidden,
        qkv_bias=bool(config.get("qkv_bias", True)),
        norm_eps=eps,
        head_norm_eps=eps,
        act_layer=config.get("hidden_act", "gelu"),
    )


def load_ast_checkpoint(
    model: ASTModel,
    path: PathLike,
    source_grid: Optional[Grid] = None,
    config: Optional[dict[str, Any]] = None,
) -> LoadReport:
    """Load an AST, transformers AST or timm ViT/DeiT file into ``model``, detecting the layout.

    Args:
        model: The model to fill.
        path: ``.safetensors`` or ``.pth``/``.bin`` file.
        source_grid: Patch grid ``(freq, time)`` of the checkpoint's position
            embedding when it cannot be inferred (other mel bins or fstride).
        config: transformers ``config.json`` dict; read from beside ``path`` when omitted.

    Returns:
        What was renamed, resampled, dropped or left missing (also logged).
    """
    report = LoadReport()
    state_dict = read_state_dict(path)
    state_dict = strip_prefixes(state_dict, ("module.", "_orig_mod."), report)
    layout = detect_format(state_dict)
    logger.info("%s: %s layout", path, layout)

    if layout == "original":
        state_dict = convert_original(state_dict, model, report, source_grid)
    elif layout == "transformers":
        config = config if config is not None else read_transformers_config(path)
        state_dict = convert_transformers(state_dict, model, report, config, source_grid)
    elif layout == "timm":
        state_dict = convert_timm_vit(state_dict, model, report)
    else:
        state_dict = fit_pos_embed(dict(state_dict), model, report, source_grid)
    load_checked(model, state_dict, report, source=str(path))
    return report


def from_transformers_pretrained(path: PathLike, dropout: Any = None, **overrides: Any) -> ASTModel:
    """Build an :class:`ASTModel` from a transformers ``save_pretrained`` folder (or its weights file).

    The architecture, LayerNorm epsilon and labels come from ``config.json``;
    ``overrides`` replace any argument (``input_tdim=...`` resizes the position
    embeddings, ``num_classes=...`` starts a new head).
    """
    path = Path(path)
    config = read_transformers_config(path)
    if config is None:
        raise FileNotFoundError(
            f"no transformers AST config.json found at {path if path.is_dir() else path.parent}; "
            "use create_model('ast_..._f10_t10', checkpoint_path=...) for a bare weights file"
        )
    if path.is_dir():
        candidates = [path / name for name in ("model.safetensors", "pytorch_model.bin")]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
    else:
        weights = path

    args = {**transformers_config_to_args(config), **overrides}
    model = ASTModel(dropout=dropout, **args)
    load_ast_checkpoint(model, weights, config=config)
    id2label = config.get("id2label") or {}
    if len(id2label) == model.num_classes:
        model.pretrained_cfg["label_names"] = [id2label[str(i)] for i in range(model.num_classes)]
    return model


__all__ = [
    "FORMATS",
    "checkpoint_numerics",
    "convert_original",
    "convert_timm_vit",
    "convert_transformers",
    "detect_format",
    "fit_pos_embed",
    "from_transformers_pretrained",
    "load_ast_checkpoint",
    "read_transformers_config",
    "transformers_config_to_args",
]
