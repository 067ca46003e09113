"""Vision Transformer and DeiT with explicit dropout, weight-compatible with timm.

Parameter names, buffers and the eval-mode forward follow timm's
``VisionTransformer`` and ``VisionTransformerDistilled`` (timm 1.0), so a timm
state dict loads strictly and gives the same logits.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from timm.layers import (
    PatchDropout,
    PatchEmbed,
    get_act_layer,
    get_norm_layer,
    resample_abs_pos_embed,
    trunc_normal_,
)

from .base import DropoutLike, ExplicitDropoutModel, resolve_dropout
from .layers import DEFAULT_ATTN_CHUNK, Block, Terms

logger = logging.getLogger(__name__)

POOL_TYPES = ("", "token", "avg", "avgmax", "max")


class VisionTransformer(ExplicitDropoutModel):
    """ViT (and DeiT with ``distilled=True``) whose blocks return explicit-dropout terms.

    Keyword arguments mirror timm's ``VisionTransformer``; the ones listed here
    are supported.

    Args:
        img_size: Input size, int or ``(H, W)``.
        patch_size: Patch size.
        in_chans: Input channels.
        num_classes: Classifier width; 0 gives features only.
        global_pool: ``"token"`` (class token), ``"avg"``, ``"avgmax"``, ``"max"`` or ``""``.
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden width / ``embed_dim``.
        qkv_bias: Bias in the ``qkv`` projection.
        qk_norm: Per-head LayerNorm of queries and keys.
        proj_bias: Bias in the output projections.
        init_values: LayerScale initial value, ``None`` for no LayerScale.
        class_token: Prepend a class token.
        pos_embed: ``"learn"`` or ``"none"``.
        no_embed_class: Position embeddings only for patch tokens (DeiT III, registers).
        reg_tokens: Number of register tokens.
        pre_norm: LayerNorm after the embedding (CLIP).
        final_norm: LayerNorm after the blocks (or after pooling with ``fc_norm``).
        fc_norm: Norm after pooling instead of before; ``None`` enables it for
            average and max pooling.
        pool_include_prefix: Include class and register tokens in avg/max pooling.
        dynamic_img_size: Accept any input size, resampling position embeddings.
        dynamic_img_pad: Pad inputs to a multiple of the patch size.
        distilled: Add the DeiT distillation token and head.
        drop_rate: Head dropout (stochastic in every mode, as in timm).
        pos_drop_rate: Dropout after adding position embeddings.
        patch_drop_rate: Fraction of patch tokens dropped in training.
        drop_path_rate: Stochastic depth, increasing linearly over blocks.
        norm_layer: Norm layer or its timm name; timm's LayerNorm (eps 1e-6) by default.
        act_layer: FFN activation or its timm name; GELU by default.
        dropout: Explicit-dropout configuration (see :class:`~exdrop.DropoutConfig`).
        attn_chunk_size: Query chunk for the ``attn`` term on long sequences.
    """

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: Union[int, tuple[int, int]] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_bias: bool = True,
        init_values: Optional[float] = None,
        class_token: bool = True,
        pos_embed: str = "learn",
        no_embed_class: bool = False,
        reg_tokens: int = 0,
        pre_norm: bool = False,
        final_norm: bool = True,
        fc_norm: Optional[bool] = None,
        pool_include_prefix: bool = False,
        dynamic_img_size: bool = False,
        dynamic_img_pad: bool = False,
        distilled: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        patch_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Any = None,
        act_layer: Any = None,
        dropout: DropoutLike = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dropout_config = resolve_dropout(dropout, kwargs)
        _reject_unsupported(kwargs)
        if global_pool not in POOL_TYPES:
            raise ValueError(f"global_pool={global_pool!r} is not supported; use one of {POOL_TYPES}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if distilled and global_pool != "token":
            raise ValueError("a distilled model reads the class and distillation tokens: use global_pool='token'")
        if pos_embed not in ("learn", "none", ""):
            raise ValueError(f"pos_embed={pos_embed!r} is not supported; use 'learn' or 'none'")

        use_fc_norm = global_pool in ("avg", "avgmax", "max") if fc_norm is None else fc_norm
        norm_layer = get_norm_layer(norm_layer) or get_norm_layer("layernorm")
        act_layer = get_act_layer(act_layer) or nn.GELU

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.has_class_token = class_token
        self.num_reg_tokens = reg_tokens
        self.distilled = distilled
        self.distilled_training = False
        self.num_prefix_tokens = int(class_token) + int(distilled) + reg_tokens
        self.no_embed_class = no_embed_class
        self.pool_include_prefix = pool_include_prefix
        self.dynamic_img_size = dynamic_img_size

        embed_args = dict(strict_img_size=False, output_fmt="NHWC") if dynamic_img_size else {}
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            bias=not pre_norm,  # CLIP-style models have no patch-embedding bias
            dynamic_img_pad=dynamic_img_pad,
            **embed_args,
        )
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim)) if pos_embed == "learn" else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.patch_drop = (
            PatchDropout(patch_drop_rate, num_prefix_tokens=self.num_prefix_tokens)
            if patch_drop_rate > 0
            else nn.Identity()
        )
        self.norm_pre = norm_layer(embed_dim) if pre_norm else nn.Identity()

        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                proj_bias=proj_bias,
                init_values=init_values,
                drop_path=drop_path_rates[i],
                act_layer=act_layer,
                norm_layer=norm_layer,
                dropout=self.dropout_config,
                attn_chunk_size=attn_chunk_size,
            )
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim) if final_norm and not use_fc_norm else nn.Identity()

        self.fc_norm = norm_layer(embed_dim) if final_norm and use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.init_weights()

    def init_weights(self) -> None:
        """Initialize as timm does: truncated normal (std 0.02) for Linear and embeddings."""
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (timm's convention)."""
        return {"pos_embed", "cls_token", "reg_token", "dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's convention)."""
        return dict(
            stem=r"^cls_token|reg_token|dist_token|pos_embed|patch_embed|norm_pre",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def get_classifier(self) -> nn.Module:
        """Return the classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (and the distillation head) with a new one of ``num_classes``."""
        if global_pool is not None:
            if global_pool not in POOL_TYPES or (global_pool == "token" and not self.has_class_token):
                raise ValueError(f"global_pool={global_pool!r} is not valid for this model")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if self.distilled:
            self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_distilled_training(self, enable: bool = True) -> None:
        """Return ``(logits, dist_logits)`` separately in training (DeiT distillation)."""
        self.distilled_training = enable

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]

        if self.pos_embed is None:
            return torch.cat(prefix + [x.reshape(x.shape[0], -1, x.shape[-1])], dim=1)

        if self.dynamic_img_size:
            batch, height, width, channels = x.shape
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=(height, width),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            )
            x = x.view(batch, -1, channels)
        else:
            pos_embed = self.pos_embed

        # no_embed_class: add to patch tokens, then prepend; otherwise prepend, then add.
        if self.no_embed_class:
            x = x + pos_embed
            x = torch.cat(prefix + [x], dim=1) if prefix else x
        else:
            x = torch.cat(prefix + [x], dim=1) if prefix else x
            x = x + pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Terms]]:
        """Return normalized tokens ``(B, N, C)`` and the raw terms of each block."""
        x = self.patch_embed(x)  # (B, N_patches, C), or (B, H', W', C) with dynamic size
        x = self._pos_embed(x)  # (B, N, C) with prefix tokens
        x = self.patch_drop(x)
        x = self.norm_pre(x)

        raw_terms: list[Terms] = []
        for block in self.blocks:
            x, terms = block(x)
            raw_terms.append(terms)

        x = self.norm(x)
        return x, raw_terms

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool tokens ``(B, N, C)`` into ``(B, C)`` as configured by ``global_pool``."""
        if self.global_pool == "token":
            return x[:, 0]
        if not self.global_pool:
            return x
        tokens = x if self.pool_include_prefix else x[:, self.num_prefix_tokens:]
        if self.global_pool == "avg":
            return tokens.mean(dim=1)
        if self.global_pool == "max":
            return tokens.amax(dim=1)
        return 0.5 * (tokens.amax(dim=1) + tokens.mean(dim=1))  # avgmax

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Any:
        """Pool, normalize and classify tokens ``(B, N, C)``."""
        if self.distilled:
            cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)
            if self.distilled_training and self.training:
                return cls, dist
            return (cls + dist) / 2

        x = self.pool(x)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_penalty: bool = False) -> Any:
        """Classify images ``(B, C, H, W)``.

        Returns:
            Logits ``(B, num_classes)`` as timm returns them, or ``(logits, penalty)``
            with a :class:`~exdrop.PenaltyResult` when ``return_penalty=True``.
        """
        x, raw_terms = self.forward_features(x)
        logits = self.forward_head(x)
        if not return_penalty:
            return logits
        return logits, self._penalty(raw_terms, device=x.device)


_UNSUPPORTED_HINTS = {
    "block_fn": "only the standard pre-norm block is implemented",
    "mlp_layer": "only the two-layer Mlp is implemented",
    "attn_layer": "only standard multi-head attention is implemented",
    "embed_layer": "only the convolutional patch embedding is implemented",
    "embed_norm_layer": "a norm inside the patch embedding is not implemented",
    "scale_attn_norm": "a norm before the attention projection is not implemented",
    "scale_mlp_norm": "a norm inside the FFN would sit between the ffn dropout point and fc2",
}
# Accepted and ignored: they change nothing that this implementation computes.
_IGNORED = {"weight_init", "fix_init", "use_naflex", "out_indices", "pretrained_strict", "features_only"}


def _reject_unsupported(kwargs: dict[str, Any]) -> None:
    for key in list(kwargs):
        if key in _IGNORED:
            kwargs.pop(key)
    for key, value in kwargs.items():
        if key in ("scale_attn_norm", "scale_mlp_norm") and not value:
            continue
        hint = _UNSUPPORTED_HINTS.get(key, "it is not an option of exdrop's VisionTransformer")
        raise ValueError(f"unsupported VisionTransformer argument {key}={value!r}: {hint}")


def pos_embed_grid(model: VisionTransformer) -> tuple[int, int]:
    """Return the patch grid ``(rows, cols)`` that the model's position embedding covers."""
    return tuple(model.patch_embed.grid_size)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], model: VisionTransformer, report: "Any"
) -> dict[str, torch.Tensor]:
    """Fit a timm-layout ViT/DeiT state dict to ``model``.

    Resamples ``pos_embed`` to the model's patch grid (bicubic, as timm does) and
    the patch-embedding kernel to its patch size. Heads of another width are left
    for :func:`~exdrop.models.checkpoint.load_checked` to drop.
    """
    from timm.layers import resample_patch_embed

    out = dict(state_dict)
    target = model.state_dict()

    weight = out.get("patch_embed.proj.weight")
    if weight is not None and weight.ndim == 4:
        new_shape = target["patch_embed.proj.weight"].shape
        if weight.shape[-2:] != new_shape[-2:]:
            out["patch_embed.proj.weight"] = resample_patch_embed(weight, list(new_shape[-2:]), verbose=False)
            report.resampled.append(
                f"patch_embed.proj.weight: kernel {tuple(weight.shape[-2:])} -> {tuple(new_shape[-2:])}"
            )

    pos = out.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        old_tokens = pos.shape[1] - prefix
        side = int(math.isqrt(old_tokens))
        if side * side != old_tokens:
            raise ValueError(
                f"pos_embed with {pos.shape[1]} tokens ({prefix} prefix) is not a square grid; "
                "cannot resample it to this model"
            )
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(pos_embed_grid(model)), old_size=[side, side], num_prefix_tokens=prefix
        )
        report.resampled.append(
            f"pos_embed: grid {side}x{side} -> {'x'.join(map(str, pos_embed_grid(model)))}"
        )
    return out


def architecture_of(timm_model: nn.Module) -> dict[str, Any]:
    """Read the constructor arguments of a live timm ``VisionTransformer`` from its modules.

    Raises:
        ValueError: For a timm model with a part this implementation does not have
            (attention pooling, other block or MLP types, ...).
    """
    from timm.layers import LayerScale
    from timm.models.vision_transformer import Block as TimmBlock
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not isinstance(timm_model, TimmViT):
        raise ValueError(
            f"from_timm expects a timm VisionTransformer (ViT, DeiT, DeiT III), got {type(timm_model).__name__}"
        )
    if getattr(timm_model, "attn_pool", None) is not None:
        raise ValueError("timm models with attention pooling ('map' or 'prr') are not supported")
    block = timm_model.blocks[0]
    if type(block) is not TimmBlock:
        raise ValueError(f"timm block type {type(block).__name__} is not supported; only timm's Block is")
    attn, mlp = block.attn, block.mlp
    if type(mlp).__name__ != "Mlp" or not isinstance(mlp.norm, nn.Identity):
        raise ValueError(f"timm MLP type {type(mlp).__name__} (or one with a norm) is not supported")
    if type(attn).__name__ != "Attention" or not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise ValueError(f"timm attention type {type(attn).__name__} with these options is not supported")

    norm = block.norm1
    act = mlp.act
    if isinstance(act, nn.GELU):
        act_layer = "gelu_tanh" if act.approximate == "tanh" else "gelu"
    else:
        act_layer = type(act)
    ls = block.ls1
    pe = timm_model.patch_embed
    return dict(
        img_size=tuple(pe.img_size) if pe.img_size is not None else 224,
        patch_size=tuple(pe.patch_size),
        in_chans=pe.proj.in_channels,
        num_classes=timm_model.num_classes,
        global_pool=timm_model.global_pool,
        embed_dim=timm_model.embed_dim,
        depth=len(timm_model.blocks),
        num_heads=attn.num_heads,
        mlp_ratio=mlp.fc1.out_features / timm_model.embed_dim,
        qkv_bias=attn.qkv.bias is not None,
        qk_norm=not isinstance(attn.q_norm, nn.Identity),
        proj_bias=attn.proj.bias is not None,
        init_values=float(ls.gamma.detach().flatten()[0]) if isinstance(ls, LayerScale) else None,
        class_token=timm_model.cls_token is not None,
        pos_embed="learn" if timm_model.pos_embed is not None else "none",
        no_embed_class=timm_model.no_embed_class,
        reg_tokens=timm_model.num_reg_tokens,
        pre_norm=not isinstance(timm_model.norm_pre, nn.Identity),
        final_norm=not (isinstance(timm_model.norm, nn.Identity) and isinstance(timm_model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(timm_model.fc_norm, nn.Identity),
        pool_include_prefix=timm_model.pool_include_prefix,
        dynamic_img_size=timm_model.dynamic_img_size,
        dynamic_img_pad=getattr(pe, "dynamic_img_pad", False),
        distilled=getattr(timm_model, "dist_token", None) is not None,
        norm_layer=_norm_factory(norm),
        act_layer=act_layer,
    )


def _norm_factory(norm: nn.Module) -> Any:
    """Return a constructor that rebuilds ``norm`` (a LayerNorm of some eps) for another width."""
    from functools import partial

    if isinstance(norm, nn.LayerNorm):
        return partial(type(norm), eps=norm.eps)
    raise ValueError(f"timm norm layer {type(norm).__name__} is not supported; only LayerNorm types are")


def from_timm(timm_model: nn.Module, dropout: DropoutLike = None) -> VisionTransformer:
    """Build the explicit-dropout variant of a live timm ViT/DeiT with the same weights.

    The result is in the same train/eval mode and on the same device and dtype as
    ``timm_model``; its eval outputs equal the timm model's.
    """
    kwargs = architecture_of(timm_model)
    model = VisionTransformer(**kwargs, dropout=dropout)
    model.load_state_dict(timm_model.state_dict(), strict=True)
    reference = next(timm_model.parameters())
    model.to(device=reference.device, dtype=reference.dtype)
    model.train(timm_model.training)
    if hasattr(timm_model, "pretrained_cfg"):
        model.pretrained_cfg = dict(timm_model.pretrained_cfg)
    return model


__all__ = ["VisionTransformer", "from_timm", "adapt_state_dict", "architecture_of"]
