"""Video Transformers with explicit dropout: joint and divided space-time attention.

Inputs are ``(B, C, T, H, W)`` float tensors, the PyTorch video layout.

* :class:`VideoVisionTransformer` attends jointly over all tubelet tokens of a
  clip (a ``t x p x p`` 3D patch embedding). It covers VideoMAE's ViT (fixed
  sinusoidal positions, mean pooling with ``fc_norm``) and ViViT's
  spatio-temporal model (class token, learned positions).
* :class:`DividedSpaceTimeTransformer` is TimeSformer: each block runs a
  temporal attention over the frames of every patch position, then a spatial
  attention over the patches of every frame, then the FFN.

Both reuse :mod:`exdrop.models.layers`, so their penalty terms are the same
functions as the image models'. Parameter names follow the original VideoMAE
and TimeSformer code (``patch_embed.proj``, ``blocks.N.attn.qkv``,
``temporal_attn``, ``temporal_fc``, ``time_embed``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from einops import rearrange, reduce, repeat
from timm.layers import DropPath, PatchEmbed, get_act_layer, trunc_normal_

from ..penalties import linear_input_term
from .base import DropoutLike, ExplicitDropoutModel, resolve_dropout
from .layers import DEFAULT_ATTN_CHUNK, Attention, Block, Mlp, Terms
from .registry import ModelEntry, register_family, register_model

logger = logging.getLogger(__name__)

# transformers' activation names -> timm's (FastGELU and the tanh GELU are the same formula).
_ACT_ALIASES = {"gelu_fast": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _pair(value: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def _act_layer(act: Any) -> Any:
    if act is None:
        return nn.GELU
    if isinstance(act, str):
        return get_act_layer(_ACT_ALIASES.get(act, act))
    return act


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Return the fixed sin-cos position table ``(1, num_positions, dim)`` of VideoMAE.

    Feature ``j`` of position ``n`` uses the angle ``n / 10000^(2 * (j // 2) / dim)``:
    sine on even ``j``, cosine on odd ``j`` (Vaswani et al., 2017). Computed in
    float64 and rounded to float32, as VideoMAE's numpy table is.
    """
    positions = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponents = 2.0 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angles = positions / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponents)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class TubeletEmbed(nn.Module):
    """3D patch embedding: a Conv3d with kernel = stride = ``(t, p, p)``.

    Args:
        img_size: Input height and width.
        num_frames: Input frames ``T``.
        patch_size: Spatial patch size.
        tubelet_size: Frames per token.
        in_chans: Input channels.
        embed_dim: Token width.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]],
        num_frames: int,
        patch_size: Union[int, Sequence[int]],
        tubelet_size: int,
        in_chans: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.num_frames = int(num_frames)
        self.tubelet_size = int(tubelet_size)
        for size, patch, what in (
            (self.num_frames, self.tubelet_size, "num_frames / tubelet_size"),
            (self.img_size[0], self.patch_size[0], "image height / patch_size"),
            (self.img_size[1], self.patch_size[1], "image width / patch_size"),
        ):
            if size % patch != 0:
                raise ValueError(f"{what} = {size} / {patch} is not an integer; choose sizes that divide evenly")
        self.grid_size = (
            self.num_frames // self.tubelet_size,
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        kernel = (self.tubelet_size, *self.patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, C, T, H, W)`` into tokens ``(B, T' * H' * W', D)`` in ``(t h w)`` order."""
        x = self.proj(x)  # (B, D, T', H', W')
        return rearrange(x, "b d t h w -> b (t h w) d")


def check_video_input(x: torch.Tensor, num_frames: int, img_size: tuple[int, int]) -> None:
    """Raise a clear error for an input that is not ``(B, C, num_frames, H, W)``."""
    if x.ndim != 5:
        raise ValueError(
            f"expected a video batch (B, C, T, H, W), got a tensor of shape {tuple(x.shape)}; "
            "use exdrop.models.video_convert.to_model_layout for (B, T, C, H, W) inputs"
        )
    if x.shape[2] != num_frames or tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f"input has {x.shape[2]} frames of {x.shape[-2]}x{x.shape[-1]} pixels, but the model was built "
            f"for num_frames={num_frames} and img_size={img_size}; pass num_frames= and img_size= to "
            "create_model (position embeddings of a checkpoint are resampled)"
        )


class VideoVisionTransformer(ExplicitDropoutModel):
    """Joint space-time ViT over tubelet tokens (VideoMAE, ViViT model 1).

    Args:
        img_size: Input size, int or ``(H, W)``.
        num_frames: Input frames.
        patch_size: Spatial patch size.
        tubelet_size: Frames per token.
        in_chans: Input channels.
        num_classes: Classifier width; 0 gives pooled features.
        global_pool: ``"avg"`` (mean of patch tokens, then ``fc_norm``) or
            ``"token"`` (class token after the final norm).
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden width / ``embed_dim``.
        qkv_bias: Bias in the fused ``qkv`` projection.
        class_token: Prepend a class token.
        pos_embed: ``"sincos"`` (fixed table, not in the state dict) or ``"learn"``.
        norm_eps: Epsilon of the block norms and the final norm.
        fc_norm_eps: Epsilon of ``fc_norm``; defaults to ``norm_eps``.
        act_layer: FFN activation or its name (``"gelu"``, ``"gelu_tanh"``, ...).
        drop_rate: Dropout before the classifier (stochastic in every mode).
        drop_path_rate: Stochastic depth, increasing linearly over blocks.
        dropout: Explicit-dropout configuration.
        attn_chunk_size: Query chunk for the ``attn`` term on long sequences.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        num_frames: int = 16,
        patch_size: Union[int, Sequence[int]] = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 400,
        global_pool: str = "avg",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = False,
        pos_embed: str = "sincos",
        norm_eps: float = 1e-6,
        fc_norm_eps: Optional[float] = None,
        act_layer: Any = "gelu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dropout: DropoutLike = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dropout_config = resolve_dropout(dropout, kwargs)
        if kwargs:
            raise ValueError(f"unsupported VideoVisionTransformer arguments: {', '.join(sorted(kwargs))}")
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool={global_pool!r} is not supported; use 'avg' or 'token'")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("sincos", "learn"):
            raise ValueError(f"pos_embed={pos_embed!r} is not supported; use 'sincos' or 'learn'")

        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token)
        self.pos_embed_type = pos_embed

        self.patch_embed = TubeletEmbed(img_size, num_frames, patch_size, tubelet_size, in_chans, embed_dim)
        self.num_frames = self.patch_embed.num_frames
        self.img_size = self.patch_embed.img_size
        embed_len = self.patch_embed.num_patches + self.num_prefix_tokens

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        if pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        else:
            # Fixed and recomputable, so it stays out of the state dict.
            self.register_buffer("pos_embed", sinusoid_table(embed_len, embed_dim), persistent=False)

        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path_rates[i],
                act_layer=_act_layer(act_layer),
                norm_layer=norm_layer,
                dropout=self.dropout_config,
                attn_chunk_size=attn_chunk_size,
            )
            for i in range(depth)
        ])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        fc_eps = norm_eps if fc_norm_eps is None else fc_norm_eps
        self.fc_norm = nn.LayerNorm(embed_dim, eps=fc_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize as timm's ViT: truncated normal (std 0.02) for Linear layers and learned embeddings."""
        if isinstance(self.pos_embed, nn.Parameter):
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def get_classifier(self) -> nn.Module:
        """Return the classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a new one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Terms]]:
        """Return normalized tokens ``(B, N, D)`` and the raw terms of each block."""
        check_video_input(x, self.num_frames, self.img_size)
        x = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)

        raw_terms: list[Terms] = []
        for block in self.blocks:
            x, terms = block(x)
            raw_terms.append(terms)
        return self.norm(x), raw_terms

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens ``(B, N, D)``, normalize and classify."""
        if self.global_pool == "token":
            x = x[:, 0]
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_penalty: bool = False) -> Any:
        """Classify clips ``(B, C, T, H, W)``; with ``return_penalty=True`` also return the penalty."""
        x, raw_terms = self.forward_features(x)
        logits = self.forward_head(x)
        if not return_penalty:
            return logits
        return logits, self._penalty(raw_terms, device=x.device)


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer block: temporal attention, spatial attention, FFN, each pre-norm and residual.

    Terms are named ``temporal.<c>`` and ``spatial.<c>`` for the two attentions
    and ``ffn``, ``ffn_out`` for the FFN. The temporal branch passes through
    ``temporal_fc`` before its residual add, so its ``proj`` dropout point feeds
    that linear map and ``temporal.proj`` is read through ``temporal_fc``'s
    weight columns instead of being the plain output norm.

    Args:
        dim: Token width.
        num_heads: Heads of both attentions.
        mlp_ratio: FFN hidden width / ``dim``.
        qkv_bias: Bias in both ``qkv`` projections.
        drop_path: Stochastic depth rate of this block.
        act_layer: FFN activation.
        norm_layer: Normalization layer.
        dropout: Shared dropout configuration.
        attn_chunk_size: See :class:`~exdrop.models.layers.Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        act_layer: Any = nn.GELU,
        norm_layer: Any = nn.LayerNorm,
        dropout: DropoutLike = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
    ) -> None:
        super().__init__()
        attn_args = dict(num_heads=num_heads, qkv_bias=qkv_bias, dropout=dropout, attn_chunk_size=attn_chunk_size)
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = Attention(dim, **attn_args)
        self.temporal_fc = nn.Linear(dim, dim)

        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, **attn_args)

        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, dropout=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, Terms]:
        """Map ``(B, 1 + T * P, D)`` tokens (class token, then patches in ``(t p)`` order) to the same shape."""
        batch = x.shape[0]
        cls_token, tokens = x[:, :1], x[:, 1:]
        terms: Terms = {}

        # Temporal attention: one sequence of T frames per patch position; the class token skips it.
        xt = rearrange(tokens, "b (t p) d -> (b p) t d", t=num_frames)
        yt, temporal_terms = self.temporal_attn(self.temporal_norm1(xt))
        if "proj" in temporal_terms:
            rho = self.temporal_attn.dropout_config.rho("proj")
            temporal_terms["proj"] = linear_input_term(yt, self.temporal_fc.weight, rho)
        yt = rearrange(self.drop_path(yt), "(b p) t d -> b (t p) d", b=batch)
        tokens = tokens + self.temporal_fc(yt)
        terms.update({f"temporal.{name}": value for name, value in temporal_terms.items()})

        # Spatial attention: one sequence per frame, each with its own copy of the class token.
        xs = rearrange(tokens, "b (t p) d -> (b t) p d", t=num_frames)
        xs = torch.cat([repeat(cls_token, "b 1 d -> (b t) 1 d", t=num_frames), xs], dim=1)
        ys, spatial_terms = self.attn(self.norm1(xs))
        ys = self.drop_path(ys)  # (B * T, 1 + P, D)
        cls_update = reduce(ys[:, :1], "(b t) 1 d -> b 1 d", "mean", t=num_frames)  # averaged over frames
        token_update = rearrange(ys[:, 1:], "(b t) p d -> b (t p) d", t=num_frames)
        x = torch.cat([cls_token, tokens], dim=1) + torch.cat([cls_update, token_update], dim=1)
        terms.update({f"spatial.{name}": value for name, value in spatial_terms.items()})

        yf, ffn_terms = self.mlp(self.norm2(x))
        x = x + self.drop_path(yf)
        terms.update(ffn_terms)
        return x, terms


class DividedSpaceTimeTransformer(ExplicitDropoutModel):
    """TimeSformer with divided space-time attention.

    Args:
        img_size: Input size, int or ``(H, W)``.
        num_frames: Input frames ``T`` (one ``time_embed`` row each).
        patch_size: Spatial patch size of the per-frame Conv2d embedding.
        in_chans: Input channels.
        num_classes: Classifier width; 0 gives pooled features.
        global_pool: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens).
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden width / ``embed_dim``.
        qkv_bias: Bias in the ``qkv`` projections.
        norm_eps: LayerNorm epsilon.
        act_layer: FFN activation or its name.
        drop_rate: Dropout before the classifier (stochastic in every mode).
        drop_path_rate: Stochastic depth, increasing linearly over blocks.
        dropout: Explicit-dropout configuration.
        attn_chunk_size: Query chunk for the ``attn`` term on long sequences.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 224,
        num_frames: int = 8,
        patch_size: Union[int, Sequence[int]] = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        act_layer: Any = "gelu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dropout: DropoutLike = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dropout_config = resolve_dropout(dropout, kwargs)
        if kwargs:
            raise ValueError(f"unsupported DividedSpaceTimeTransformer arguments: {', '.join(sorted(kwargs))}")
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool={global_pool!r} is not supported; use 'token' or 'avg'")

        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.num_frames = int(num_frames)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.img_size = tuple(self.patch_embed.img_size)
        num_patches = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, self.num_frames, embed_dim))

        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            DividedSpaceTimeBlock(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path_rates[i],
                act_layer=_act_layer(act_layer),
                norm_layer=norm_layer,
                dropout=self.dropout_config,
                attn_chunk_size=attn_chunk_size,
            )
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize as TimeSformer does, with ``temporal_fc`` of blocks after the first at zero.

        A zero ``temporal_fc`` makes the temporal branch a no-op, so a fresh
        block starts as a per-frame image block.
        """
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        # A zero time embedding would make a freshly initialized model exactly invariant to
        # frame order, and the gradients of order-dependent tasks (playback direction) cancel.
        # Inflation from image weights sets it to zero explicitly.
        trunc_normal_(self.time_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in list(self.blocks)[1:]:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (timm's convention)."""
        return {"pos_embed", "cls_token", "time_embed"}

    def get_classifier(self) -> nn.Module:
        """Return the classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a new one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Terms]]:
        """Return normalized tokens ``(B, 1 + T * P, D)`` and the raw terms of each block."""
        check_video_input(x, self.num_frames, self.img_size)
        batch, frames = x.shape[0], x.shape[2]

        x = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))  # (B * T, P, D)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1) + self.pos_embed  # (B * T, 1 + P, D)

        # The class token (identical in every frame) is kept once; patches get a time embedding.
        cls_token = x[:batch, :1]
        tokens = rearrange(x[:, 1:], "(b t) p d -> b t p d", b=batch) + self.time_embed.unsqueeze(2)
        x = torch.cat([cls_token, rearrange(tokens, "b t p d -> b (t p) d")], dim=1)

        raw_terms: list[Terms] = []
        for block in self.blocks:
            x, terms = block(x, frames)
            raw_terms.append(terms)
        return self.norm(x), raw_terms

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (class token or patch mean) and classify."""
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, return_penalty: bool = False) -> Any:
        """Classify clips ``(B, C, T, H, W)``; with ``return_penalty=True`` also return the penalty."""
        x, raw_terms = self.forward_features(x)
        logits = self.forward_head(x)
        if not return_penalty:
            return logits
        return logits, self._penalty(raw_terms, device=x.device)


# ---------------------------------------------------------------------------
# Registered names. Sizes follow timm's ViT-Ti/S/B; each name inflates the timm
# image ViT of its size when created with pretrained=True.

_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}

# Defaults of each family follow transformers' configs (5.x), so that a transformers
# checkpoint without its config.json loads with the right epsilons and activation.
_FAMILIES = {
    # VideoMAE: tubelet 2x16x16, fixed sin-cos positions, mean pooling + fc_norm (LayerNorm eps 1e-5).
    "videomae": ("joint", 16, dict(
        tubelet_size=2, class_token=False, pos_embed="sincos", global_pool="avg",
        norm_eps=1e-12, fc_norm_eps=1e-5, act_layer="gelu",
    )),
    # ViViT model 1 (spatio-temporal): class token, learned positions, tanh-approximated GELU.
    "vivit": ("joint", 32, dict(
        tubelet_size=2, class_token=True, pos_embed="learn", global_pool="token",
        norm_eps=1e-6, act_layer="gelu_tanh",
    )),
    # TimeSformer with divided space-time attention.
    "timesformer": ("divided", 8, dict(norm_eps=1e-6, act_layer="gelu")),
}

VIDEO_ARCHITECTURES = {"joint": VideoVisionTransformer, "divided": DividedSpaceTimeTransformer}


def _create(
    entry: ModelEntry,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    dropout: DropoutLike = None,
    tag: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    from .video_convert import build_video_model

    return build_video_model(
        entry, pretrained=pretrained, checkpoint_path=checkpoint_path, dropout=dropout, tag=tag, **kwargs
    )


def _register_all() -> None:
    for family, (architecture, frames, family_args) in _FAMILIES.items():
        for size, size_args in _SIZES.items():
            register_model(ModelEntry(
                name=f"{family}_{size}_patch16_{frames}x224",
                family="video",
                create=_create,
                model_args=dict(
                    architecture=architecture, img_size=224, num_frames=frames, patch_size=16,
                    num_classes=400, **family_args, **size_args,
                ),
                pretrained_source=f"vit_{size}_patch16_224",
            ))


register_family(_register_all)

__all__ = [
    "VIDEO_ARCHITECTURES",
    "DividedSpaceTimeBlock",
    "DividedSpaceTimeTransformer",
    "TubeletEmbed",
    "VideoVisionTransformer",
    "sinusoid_table",
]
