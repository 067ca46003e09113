"""Checkpoint formats of the video models, image-ViT inflation and position-embedding resampling.

Formats read, detected by their keys:

* ``videomae``, ``vivit``, ``timesformer``: transformers'
  ``*ForVideoClassification`` state dicts, both the layout that
  ``save_pretrained`` writes and the in-memory layout of transformers 5.x
  (``query.bias`` vs ``q_bias``, ``vivit.layers`` vs ``vivit.encoder.layer``).
  A ``config.json`` next to the weights file sets the architecture.
* ``joint``, ``divided``: exdrop's own layout, which is also the layout of the
  original VideoMAE (``attn.q_bias``/``attn.v_bias``) and TimeSformer repositories.
* ``image_vit``: a timm image ViT, inflated into the video model.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .checkpoint import LoadReport, StateDict, hub_weights_file, load_checked, read_state_dict, strip_prefixes
from .registry import ModelEntry
from .video import VIDEO_ARCHITECTURES, VideoVisionTransformer

logger = logging.getLogger(__name__)

TRANSFORMERS_FORMATS = ("videomae", "vivit", "timesformer")
INFLATION_METHODS = ("center", "average")
_ARCHITECTURE_OF_FORMAT = {"videomae": "joint", "vivit": "joint", "timesformer": "divided", "joint": "joint", "divided": "divided"}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "encoder.")


def to_model_layout(video: torch.Tensor, layout: str = "BTCHW") -> torch.Tensor:
    """Rearrange a video batch from ``layout`` (letters B, T, C, H, W) to the models' ``(B, C, T, H, W)``.

    transformers' video models take ``BTCHW``; decoded frames are often ``BTHWC``.
    """
    layout = layout.upper()
    if sorted(layout) != sorted("BTCHW") or video.ndim != 5:
        raise ValueError(f"layout {layout!r} must be a permutation of 'BTCHW' for a 5-D tensor, got {video.ndim}-D")
    return rearrange(video, f"{' '.join(layout)} -> B C T H W")


def detect_format(state_dict: StateDict) -> str:
    """Return the checkpoint format of a state dict (see the module docstring)."""
    keys = list(state_dict)
    for name in TRANSFORMERS_FORMATS:
        if any(key.startswith(f"{name}.") for key in keys):
            return name
    if "time_embed" in state_dict or any(".temporal_attn." in key for key in keys):
        return "divided"
    patch = state_dict.get("patch_embed.proj.weight")
    if patch is not None and patch.ndim == 5:
        return "joint"
    if patch is not None and patch.ndim == 4 and any(key.startswith("blocks.") for key in keys):
        return "image_vit"
    raise ValueError(
        "checkpoint is not a known video or image ViT format: expected transformers VideoMAE, "
        "TimeSformer or ViViT keys ('videomae.', 'timesformer.', 'vivit.'), exdrop/original VideoMAE or "
        "TimeSformer keys, or a timm image ViT ('patch_embed.proj.weight'); "
        f"first keys: {', '.join(keys[:5])}"
    )


def read_transformers_config(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    """Return the ``config.json`` next to a weights file (or inside a folder), or ``None``."""
    path = Path(path)
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if not config_file.is_file():
        return None
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def kwargs_from_transformers_config(fmt: str, config: dict[str, Any]) -> dict[str, Any]:
    """Translate a transformers video config into exdrop constructor arguments."""
    hidden = config["hidden_size"]
    args: dict[str, Any] = dict(
        img_size=config.get("image_size", 224),
        num_frames=config["num_frames"],
        in_chans=config.get("num_channels", 3),
        embed_dim=hidden,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / hidden,
        norm_eps=config["layer_norm_eps"],
        act_layer=config.get("hidden_act", "gelu"),
    )
    if fmt == "videomae":
        if not config.get("use_mean_pooling", True):
            raise ValueError("VideoMAE configs with use_mean_pooling=false have no class token to read; not supported")
        args.update(
            patch_size=config["patch_size"], tubelet_size=config["tubelet_size"], class_token=False,
            pos_embed="sincos", global_pool="avg", qkv_bias=config.get("qv_bias", True),
            fc_norm_eps=1e-5,  # transformers builds fc_norm with nn.LayerNorm's default epsilon
        )
    elif fmt == "vivit":
        tubelet = config["tubelet_size"]
        args.update(
            tubelet_size=tubelet[0], patch_size=tuple(tubelet[1:]), class_token=True, pos_embed="learn",
            global_pool="token", qkv_bias=config.get("qkv_bias", True),
        )
    else:
        if config.get("attention_type", "divided_space_time") != "divided_space_time":
            raise ValueError(
                f"TimeSformer attention_type={config['attention_type']!r} is not supported; "
                "only 'divided_space_time' is"
            )
        args.update(patch_size=config["patch_size"], qkv_bias=config.get("qkv_bias", True))
    return args


# Block parameters: transformers' sub-module path -> exdrop's, per format.
_BLOCK_RENAMES = {
    "videomae": [
        ("attention.output.dense.", "attn.proj."), ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."), ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ],
    "vivit": [
        ("attention.o_proj.", "attn.proj."), ("attention.output.dense.", "attn.proj."),
        ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."), ("mlp.", "mlp."),
        ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ],
    "timesformer": [
        ("attention.attention.qkv.", "attn.qkv."), ("attention.output.dense.", "attn.proj."),
        ("temporal_attention.attention.qkv.", "temporal_attn.qkv."),
        ("temporal_attention.output.dense.", "temporal_attn.proj."), ("temporal_dense.", "temporal_fc."),
        ("temporal_layernorm.", "temporal_norm1."), ("layernorm_before.", "norm1."),
        ("layernorm_after.", "norm2."), ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
    ],
}
_TOP_RENAMES = {
    "videomae": {"videomae.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
                 "videomae.layernorm.": "norm.", "fc_norm.": "fc_norm.", "classifier.": "head."},
    "vivit": {"vivit.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
              "vivit.embeddings.cls_token": "cls_token", "vivit.embeddings.position_embeddings": "pos_embed",
              "vivit.layernorm.": "norm.", "classifier.": "head."},
    "timesformer": {"timesformer.embeddings.patch_embeddings.projection.": "patch_embed.proj.",
                    "timesformer.embeddings.cls_token": "cls_token",
                    "timesformer.embeddings.position_embeddings": "pos_embed",
                    "timesformer.embeddings.time_embeddings": "time_embed",
                    "timesformer.layernorm.": "norm.", "classifier.": "head."},
}
_BLOCK_KEY = re.compile(r"^(?:videomae\.encoder\.layer|vivit\.layers|vivit\.encoder\.layer|timesformer\.encoder\.layer)\.(\d+)\.(.+)$")
# Separate q/k/v projections (fused into qkv below): transformers' name -> component.
_QKV_PARTS = {
    "attention.attention.query.": "q", "attention.attention.key.": "k", "attention.attention.value.": "v",
    "attention.q_proj.": "q", "attention.k_proj.": "k", "attention.v_proj.": "v",
}
_QV_BIAS = {"attention.attention.q_bias": "q", "attention.attention.v_bias": "v"}


def convert_transformers(state_dict: StateDict, fmt: str, report: LoadReport) -> StateDict:
    """Rename a transformers VideoMAE/ViViT/TimeSformer state dict to exdrop's layout.

    Separate ``query``/``key``/``value`` projections are fused into ``qkv``. A
    missing key bias (VideoMAE has none) becomes zeros. That changes nothing,
    because a key bias shifts every score of a query by the same amount.
    """
    out: StateDict = {}
    qkv_parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            new_key = next((new + key[len(old):] for old, new in _TOP_RENAMES[fmt].items() if key.startswith(old)), None)
            if new_key is None:
                report.dropped.append(f"{key} (not part of the classification model)")
                continue
        else:
            index, rest = int(match.group(1)), match.group(2)
            part = next(((old, c) for old, c in _QKV_PARTS.items() if rest.startswith(old)), None)
            if part is not None:
                qkv_parts.setdefault(index, {})[f"{part[1]}.{rest[len(part[0]):]}"] = value
                continue
            if rest in _QV_BIAS:
                qkv_parts.setdefault(index, {})[f"{_QV_BIAS[rest]}.bias"] = value
                continue
            new_rest = next((new + rest[len(old):] for old, new in _BLOCK_RENAMES[fmt] if rest.startswith(old)), None)
            if new_rest is None:
                report.dropped.append(f"{key} (unknown block parameter)")
                continue
            new_key = f"blocks.{index}.{new_rest}"
        out[new_key] = value
        report.renamed.append((key, new_key))

    for index, parts in sorted(qkv_parts.items()):
        out[f"blocks.{index}.attn.qkv.weight"] = torch.cat([parts["q.weight"], parts["k.weight"], parts["v.weight"]])
        if "q.bias" in parts or "v.bias" in parts:
            zeros = torch.zeros_like(parts["q.weight"][:, 0])
            biases = [parts.get(f"{c}.bias", zeros) for c in "qkv"]
            out[f"blocks.{index}.attn.qkv.bias"] = torch.cat(biases)
        report.renamed.append((f"layer {index} query/key/value", f"blocks.{index}.attn.qkv"))
    return out


def convert_original(state_dict: StateDict, report: LoadReport) -> StateDict:
    """Fuse the original VideoMAE ``attn.q_bias``/``attn.v_bias`` into ``attn.qkv.bias``."""
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith("attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q_bias, v_bias = out.pop(key), out.pop(prefix + "v_bias")
        out[prefix + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
        report.renamed.append((f"{prefix}q_bias/v_bias", f"{prefix}qkv.bias"))
    return out


def _image_prefix_tokens(pos: torch.Tensor) -> tuple[int, int]:
    """Return ``(prefix tokens, grid side)`` of a square image position embedding."""
    for prefix in range(0, 9):
        side = math.isqrt(pos.shape[1] - prefix)
        if side * side == pos.shape[1] - prefix:
            return prefix, side
    raise ValueError(f"image pos_embed with {pos.shape[1]} tokens is not a square grid plus prefix tokens")


def inflate_image_vit(
    state_dict: StateDict, model: nn.Module, method: str, report: LoadReport
) -> StateDict:
    """Turn a timm image-ViT state dict into one for a video model.

    Joint models get a tubelet kernel from the 2D patch kernel: ``"center"``
    puts it on the central frame of the tubelet (zeros elsewhere) and
    ``"average"`` spreads it evenly (kernel / t on every frame). Either way a
    clip of identical frames embeds exactly as the image does. Learned spatial
    positions are copied to every temporal position. A model without a class
    token then returns the image model's logits on such a clip. With a class
    token it does not, because the patch copies take attention weight from it.

    Divided models copy each block's spatial attention into its temporal
    attention and set ``temporal_fc`` to zero, and ``time_embed`` to zero, so
    that the temporal branch adds nothing: every frame then goes through the
    image model's blocks, with the class token averaged over frames after each
    block. On a clip of identical frames the model returns the image model's logits.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    if method not in INFLATION_METHODS:
        raise ValueError(f"inflation={method!r} is not supported; use one of {INFLATION_METHODS}")
    joint = isinstance(model, VideoVisionTransformer)
    out: StateDict = {key: value for key, value in state_dict.items() if key.startswith("blocks.")}

    weight = state_dict["patch_embed.proj.weight"]
    patch = tuple(model.patch_embed.proj.kernel_size[-2:])
    if tuple(weight.shape[-2:]) != patch:
        weight = resample_patch_embed(weight, list(patch), verbose=False)
        report.resampled.append(f"patch_embed.proj.weight: kernel -> {patch}")
    if joint:
        frames = model.patch_embed.tubelet_size
        if method == "center":
            inflated = torch.zeros(weight.shape[0], weight.shape[1], frames, *weight.shape[-2:], dtype=weight.dtype)
            inflated[:, :, frames // 2] = weight
        else:
            inflated = weight.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
        weight = inflated
        report.resampled.append(f"patch_embed.proj.weight: 2D kernel inflated to {frames} frames ({method})")
    out["patch_embed.proj.weight"] = weight
    if "patch_embed.proj.bias" in state_dict:
        out["patch_embed.proj.bias"] = state_dict["patch_embed.proj.bias"]

    pos = state_dict.get("pos_embed")
    grid = model.patch_embed.grid_size
    spatial_grid = list(grid[-2:])
    if pos is not None and isinstance(model.pos_embed, nn.Parameter):
        prefix, side = _image_prefix_tokens(pos)
        cls_pos = pos[:, :1] if prefix else torch.zeros_like(pos[:, :1])
        spatial = resample_abs_pos_embed(pos[:, prefix:], new_size=spatial_grid, old_size=[side, side], num_prefix_tokens=0)
        if joint:
            spatial = spatial.repeat(1, grid[0], 1)  # (t h w) order: the same grid for every t
            report.resampled.append(f"pos_embed: {side}x{side} image grid copied to {grid[0]}x{grid[1]}x{grid[2]}")
        elif [side, side] != spatial_grid:
            report.resampled.append(f"pos_embed: grid {side}x{side} -> {spatial_grid[0]}x{spatial_grid[1]}")
        out["pos_embed"] = torch.cat([cls_pos, spatial], dim=1) if model.num_prefix_tokens else spatial
    elif pos is not None:
        report.dropped.append("pos_embed (the model uses fixed sin-cos position embeddings)")
    if "cls_token" in state_dict and getattr(model, "cls_token", None) is not None:
        out["cls_token"] = state_dict["cls_token"]

    # The image model's final norm is the video model's norm before (token) or after (avg) pooling.
    final_norm = "fc_norm" if joint and model.global_pool == "avg" else "norm"
    for source in ("norm", "fc_norm"):
        for suffix in ("weight", "bias"):
            if f"{source}.{suffix}" in state_dict:
                out[f"{final_norm}.{suffix}"] = state_dict[f"{source}.{suffix}"]
                if source != final_norm:
                    report.renamed.append((f"{source}.{suffix}", f"{final_norm}.{suffix}"))
    for suffix in ("weight", "bias"):
        if f"head.{suffix}" in state_dict:
            out[f"head.{suffix}"] = state_dict[f"head.{suffix}"]

    if not joint:
        out["time_embed"] = torch.zeros_like(model.time_embed)
        for index, block in enumerate(model.blocks):
            for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
                source = f"blocks.{index}.attn.{name}"
                if source in out:
                    out[f"blocks.{index}.temporal_attn.{name}"] = out[source].clone()
            for suffix in ("weight", "bias"):
                if f"blocks.{index}.norm1.{suffix}" in out:
                    out[f"blocks.{index}.temporal_norm1.{suffix}"] = out[f"blocks.{index}.norm1.{suffix}"].clone()
            out[f"blocks.{index}.temporal_fc.weight"] = torch.zeros_like(block.temporal_fc.weight)
            out[f"blocks.{index}.temporal_fc.bias"] = torch.zeros_like(block.temporal_fc.bias)
        report.resampled.append("temporal_attn <- attn, temporal_fc = 0, time_embed = 0 (starts as the image model)")
    return out


def resample_joint_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int, int], new_grid: tuple[int, int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """Resample learned ``(1, prefix + T*H*W, D)`` positions: bicubic over space, linear over time."""
    prefix, tokens = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    t, h, w = old_grid
    grid = rearrange(tokens, "1 (t h w) d -> t d h w", t=t, h=h, w=w).float()
    if (h, w) != tuple(new_grid[1:]):
        grid = F.interpolate(grid, size=new_grid[1:], mode="bicubic", align_corners=False)
    grid = rearrange(grid, "t d h w -> (h w) d t")
    if t != new_grid[0]:
        grid = F.interpolate(grid, size=new_grid[0], mode="linear", align_corners=False)
    tokens = rearrange(grid, "(h w) d t -> 1 (t h w) d", h=new_grid[1], w=new_grid[2]).to(pos.dtype)
    return torch.cat([prefix, tokens], dim=1)


def resample_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linearly resample ``(1, T, D)`` time embeddings to ``num_frames`` rows."""
    resized = F.interpolate(time_embed.transpose(1, 2).float(), size=num_frames, mode="linear", align_corners=False)
    return resized.transpose(1, 2).to(time_embed.dtype)


def _joint_source_grid(num_tokens: int, model: VideoVisionTransformer) -> tuple[int, int, int]:
    """Guess the token grid of a checkpoint from its token count and the model's grid."""
    t, h, w = model.patch_embed.grid_size
    if num_tokens % (h * w) == 0:
        return (num_tokens // (h * w), h, w)
    if num_tokens % t == 0 and math.isqrt(num_tokens // t) ** 2 == num_tokens // t:
        side = math.isqrt(num_tokens // t)
        return (t, side, side)
    raise ValueError(
        f"cannot tell the frames and image size of a pos_embed with {num_tokens} tokens when both differ "
        f"from the model's {t}x{h}x{w} grid; put the checkpoint's config.json next to it or build the "
        "model with the checkpoint's num_frames first"
    )


def adapt_video_state_dict(
    state_dict: StateDict, model: nn.Module, report: LoadReport, source_grid: Optional[tuple[int, int, int]] = None
) -> StateDict:
    """Resample position (and time) embeddings to the model's grid and reject other shape mismatches."""
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if isinstance(model, VideoVisionTransformer):
        if pos is not None and isinstance(model.pos_embed, nn.Parameter) and pos.shape != model.pos_embed.shape:
            prefix = model.num_prefix_tokens
            old = source_grid or _joint_source_grid(pos.shape[1] - prefix, model)
            out["pos_embed"] = resample_joint_pos_embed(pos, old, model.patch_embed.grid_size, prefix)
            report.resampled.append(f"pos_embed: grid {old} -> {model.patch_embed.grid_size} (t, h, w)")
    else:
        from timm.layers import resample_abs_pos_embed

        if pos is not None and pos.shape != model.pos_embed.shape:
            side = math.isqrt(pos.shape[1] - 1)
            new = list(model.patch_embed.grid_size)
            out["pos_embed"] = resample_abs_pos_embed(pos, new_size=new, old_size=[side, side], num_prefix_tokens=1)
            report.resampled.append(f"pos_embed: grid {side}x{side} -> {new[0]}x{new[1]}")
        time_embed = out.get("time_embed")
        if time_embed is not None and time_embed.shape != model.time_embed.shape:
            out["time_embed"] = resample_time_embed(time_embed, model.num_frames)
            report.resampled.append(f"time_embed: {time_embed.shape[1]} -> {model.num_frames} frames")

    target = model.state_dict()
    wrong = [
        f"{key} {tuple(value.shape)} vs model {tuple(target[key].shape)}"
        for key, value in out.items()
        if key in target and value.shape != target[key].shape and not key.startswith("head.")
    ]
    if wrong:
        raise ValueError(
            "checkpoint does not fit this architecture (" + "; ".join(wrong[:3]) + "). Pick the registered "
            "name of the checkpoint's size, or keep its config.json next to the weights file"
        )
    return out


def load_video_state_dict(
    model: nn.Module,
    state_dict: StateDict,
    source: str,
    inflation: str = "center",
    source_grid: Optional[tuple[int, int, int]] = None,
    report: Optional[LoadReport] = None,
) -> LoadReport:
    """Convert a state dict of any supported format and load it into a video model."""
    report = report or LoadReport()
    state_dict = strip_prefixes(state_dict, _WRAPPER_PREFIXES, report)
    fmt = detect_format(state_dict)
    architecture = "joint" if isinstance(model, VideoVisionTransformer) else "divided"
    if fmt != "image_vit" and _ARCHITECTURE_OF_FORMAT[fmt] != architecture:
        raise ValueError(
            f"{source}: a {fmt} checkpoint does not fit a {type(model).__name__}; "
            "use a videomae_*/vivit_* name for joint and timesformer_* for divided checkpoints"
        )
    if fmt in TRANSFORMERS_FORMATS:
        state_dict = convert_transformers(state_dict, fmt, report)
    elif fmt == "image_vit":
        state_dict = inflate_image_vit(state_dict, model, inflation, report)
    else:
        state_dict = convert_original(state_dict, report)
    state_dict = adapt_video_state_dict(state_dict, model, report, source_grid)
    load_checked(model, state_dict, report, source=source)
    return report


def _head_classes(state_dict: StateDict) -> Optional[int]:
    for key in ("classifier.weight", "head.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def build_video_model(
    entry: ModelEntry,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    dropout: Any = None,
    tag: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered video model and load weights (the ``create_model`` builder).

    ``pretrained=True`` inflates the timm image ViT of the name's size from the
    Hugging Face cache (``tag`` selects its pretrained tag). ``checkpoint_path``
    accepts any format of the module docstring. ``inflation`` (``"center"`` or
    ``"average"``) picks the tubelet inflation of image weights.
    """
    from .vit_zoo import timm_pretrained_cfg

    inflation = kwargs.pop("inflation", "center")
    args = {key: value for key, value in entry.model_args.items() if key != "architecture"}
    architecture = entry.model_args["architecture"]
    state_dict: Optional[StateDict] = None
    source_grid = None
    source = ""

    if checkpoint_path is not None:
        source = str(checkpoint_path)
        state_dict = strip_prefixes(read_state_dict(checkpoint_path), _WRAPPER_PREFIXES, LoadReport())
        fmt = detect_format(state_dict)
        config = read_transformers_config(checkpoint_path) if fmt in TRANSFORMERS_FORMATS else None
        if config is not None:
            config_args = kwargs_from_transformers_config(fmt, config)
            args.update(config_args)
            if fmt != "timesformer":
                t = config_args["num_frames"] // config_args["tubelet_size"]
                height, width = (config_args["img_size"],) * 2 if isinstance(config_args["img_size"], int) else config_args["img_size"]
                patch = config_args["patch_size"]
                ph, pw = (patch, patch) if isinstance(patch, int) else patch
                source_grid = (t, height // ph, width // pw)
        classes = _head_classes(state_dict) if fmt != "image_vit" else None
        if classes is not None:
            args["num_classes"] = classes
    elif pretrained:
        cfg = timm_pretrained_cfg(entry.pretrained_source, tag)
        full = f"{entry.pretrained_source}.{tag}" if tag else entry.pretrained_source
        if cfg is None or not cfg.hf_hub_id:
            raise ValueError(
                f"no Hugging Face weights for the image model {full!r} that {entry.name!r} inflates; "
                "pass checkpoint_path=... with a local timm ViT or video checkpoint"
            )
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        source = str(hub_weights_file(cfg.hf_hub_id, filenames))
        state_dict = read_state_dict(source)

    args.update(kwargs)  # explicit arguments win over the checkpoint's
    model = VIDEO_ARCHITECTURES[architecture](dropout=dropout, **args)
    if state_dict is not None:
        load_video_state_dict(model, state_dict, source, inflation=inflation, source_grid=source_grid)
    model.pretrained_cfg = {
        "architecture": entry.name,
        "input_size": (model.in_chans, model.num_frames, *model.img_size),
        "num_classes": model.num_classes,
    }
    return model


def load_transformers_video(path: Union[str, Path], dropout: Any = None, **overrides: Any) -> nn.Module:
    """Build and load a model from a transformers folder (``config.json`` + weights) or weights file.

    Args:
        path: Folder written by ``save_pretrained``, or its ``model.safetensors``
            / ``pytorch_model.bin`` (the ``config.json`` must sit next to it).
        dropout: Explicit-dropout configuration.
        **overrides: Constructor arguments that replace the config's
            (``num_frames``, ``img_size``, ``num_classes``, ...).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in ("model.safetensors", "pytorch_model.bin")]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in the folder")
    else:
        weights = path
    config = read_transformers_config(weights)
    if config is None:
        raise FileNotFoundError(f"{weights}: no config.json next to it; use create_model(name, checkpoint_path=...)")
    model_type = config.get("model_type")
    if model_type not in TRANSFORMERS_FORMATS:
        raise ValueError(f"{weights}: config model_type {model_type!r} is not one of {TRANSFORMERS_FORMATS}")
    entry = ModelEntry(
        name=f"transformers_{model_type}", family="video", create=build_video_model,
        model_args={"architecture": _ARCHITECTURE_OF_FORMAT[model_type]},
    )
    return build_video_model(entry, checkpoint_path=str(weights), dropout=dropout, **overrides)


__all__ = [
    "adapt_video_state_dict",
    "build_video_model",
    "convert_transformers",
    "detect_format",
    "inflate_image_vit",
    "kwargs_from_transformers_config",
    "load_transformers_video",
    "load_video_state_dict",
    "resample_joint_pos_embed",
    "resample_time_embed",
    "to_model_layout",
]
