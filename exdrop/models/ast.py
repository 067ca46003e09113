"""Audio Spectrogram Transformer (AST) with explicit dropout, and its registered names.

The architecture follows Gong, Chung and Glass, "AST: Audio Spectrogram
Transformer" (Interspeech 2021). A DeiT encoder reads 16x16 patches of a
log-mel filterbank, cut with separate frequency and time strides. The mean of
its class and distillation tokens feeds a LayerNorm + Linear head. Inputs are
features shaped ``(batch, time_frames, mel_bins)``, as in the original code and
in transformers' ``ASTForAudioClassification``.

Parameter names are timm-like (``patch_embed.proj``, ``cls_token``,
``dist_token``, ``pos_embed``, ``blocks.N.*``, ``norm``) plus ``head.norm`` and
``head.fc``. Converters for the original and the transformers layouts live in
:mod:`exdrop.models.ast_convert`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import get_act_layer, trunc_normal_

from .base import DropoutLike, ExplicitDropoutModel, resolve_dropout
from .layers import DEFAULT_ATTN_CHUNK, Block, Terms
from .registry import ModelEntry, register_family, register_model

logger = logging.getLogger(__name__)

AUDIOSET_MEAN = -4.2677393
"""Mean of AudioSet log-mel features, the normalization AST was trained with."""
AUDIOSET_STD = 4.5689974
"""Standard deviation of AudioSet log-mel features (AST divides by twice this value)."""


def patch_grid(input_fdim: int, input_tdim: int, patch_size: int, fstride: int, tstride: int) -> tuple[int, int]:
    """Return the patch grid ``(freq_patches, time_patches)`` of a convolution without padding."""
    if input_fdim < patch_size or input_tdim < patch_size:
        raise ValueError(
            f"the spectrogram ({input_tdim} frames x {input_fdim} mel bins) is smaller than one "
            f"{patch_size}x{patch_size} patch; use at least {patch_size} frames and mel bins"
        )
    return (input_fdim - patch_size) // fstride + 1, (input_tdim - patch_size) // tstride + 1


def _fit_axis(grid: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """Center-cut or bilinearly stretch one axis of a ``(1, D, F, T)`` grid to ``size``."""
    old = grid.shape[axis]
    if size == old:
        return grid
    if size < old:
        start = old // 2 - size // 2
        return grid.narrow(axis, start, size)
    target = list(grid.shape[2:])
    target[axis - 2] = size
    return F.interpolate(grid, size=tuple(target), mode="bilinear", align_corners=False)


def resize_pos_grid(grid: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Adapt patch position embeddings ``(1, D, F, T)`` to a new patch grid as AST does.

    Each axis is cut around its center when it shrinks and stretched by
    bilinear interpolation when it grows. Bilinear interpolation is separable,
    so adapting time and then frequency equals adapting both at once.
    """
    grid = _fit_axis(grid, new_grid[1], axis=3)
    return _fit_axis(grid, new_grid[0], axis=2)


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int = 2
) -> torch.Tensor:
    """Adapt a ``(1, prefix + F*T, D)`` position embedding from ``old_grid`` to ``new_grid``."""
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if patches.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"pos_embed has {patches.shape[1]} patch positions, not {old_grid[0]}x{old_grid[1]}"
        )
    grid = rearrange(patches, "1 (f t) d -> 1 d f t", f=old_grid[0])
    grid = resize_pos_grid(grid, new_grid)
    return torch.cat([prefix, rearrange(grid, "1 d f t -> 1 (f t) d")], dim=1)


class ASTPatchEmbed(nn.Module):
    """Overlapping patch embedding of a one-channel spectrogram.

    Args:
        patch_size: Square patch side in bins and frames.
        fstride: Stride along mel bins.
        tstride: Stride along time frames.
        embed_dim: Token width.
    """

    def __init__(self, patch_size: int, fstride: int, tstride: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=(fstride, tstride))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed features ``(B, T, F)``; return tokens ``(B, F'*T', D)`` and the grid ``(F', T')``."""
        x = rearrange(x, "b t f -> b 1 f t")
        x = self.proj(x)  # (B, D, F', T')
        grid = (x.shape[2], x.shape[3])
        return rearrange(x, "b d f t -> b (f t) d"), grid


class ASTHead(nn.Module):
    """LayerNorm, dropout and Linear on the pooled token (``mlp_head`` in the original code)."""

    def __init__(self, embed_dim: int, num_classes: int, eps: float, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify pooled features ``(B, D)``."""
        return self.fc(self.drop(self.norm(x)))


class ASTModel(ExplicitDropoutModel):
    """AST classifier whose blocks return explicit-dropout terms.

    Args:
        num_classes: Classifier width; 0 gives pooled features.
        input_fdim: Mel bins of the input features.
        input_tdim: Time frames the position embeddings are sized for; other
            lengths are accepted and the embeddings adapted on the fly.
        patch_size: Patch side.
        fstride: Patch stride along mel bins (10 in the published models).
        tstride: Patch stride along time frames.
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden width / ``embed_dim``.
        qkv_bias: Bias in the ``qkv`` projection.
        norm_eps: Epsilon of the block and final LayerNorms (timm DeiT: 1e-6,
            transformers' AST config: 1e-12).
        head_norm_eps: Epsilon of the head LayerNorm (original AST: PyTorch's
            default 1e-5, transformers: ``layer_norm_eps``).
        act_layer: FFN activation or its timm name (``"gelu"`` is the exact GELU).
        drop_rate: Stochastic dropout before the head's Linear, in every mode.
        pos_drop_rate: Stochastic dropout after adding position embeddings.
        drop_path_rate: Stochastic depth, increasing linearly over blocks.
        dropout: Explicit-dropout configuration (see :class:`~exdrop.DropoutConfig`).
        attn_chunk_size: Query chunk for the ``attn`` term on long sequences
            (the AudioSet model has 1,214 tokens).
    """

    def __init__(
        self,
        num_classes: int = 527,
        input_fdim: int = 128,
        input_tdim: int = 1024,
        patch_size: int = 16,
        fstride: int = 10,
        tstride: int = 10,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        head_norm_eps: float = 1e-5,
        act_layer: Any = "gelu",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dropout: DropoutLike = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.dropout_config = resolve_dropout(dropout, kwargs)
        if kwargs:
            raise ValueError(
                f"unsupported ASTModel argument(s) {', '.join(sorted(kwargs))}; the options are "
                "num_classes, input_fdim, input_tdim, patch_size, fstride, tstride, embed_dim, depth, "
                "num_heads, mlp_ratio, qkv_bias, norm_eps, head_norm_eps, act_layer, drop_rate, "
                "pos_drop_rate, drop_path_rate, attn_drop_rate, proj_drop_rate, dropout, attn_chunk_size"
            )
        if fstride < 1 or tstride < 1:
            raise ValueError(f"strides must be positive, got fstride={fstride}, tstride={tstride}")

        self.num_classes = num_classes
        self.input_fdim = input_fdim
        self.input_tdim = input_tdim
        self.patch_size = patch_size
        self.fstride = fstride
        self.tstride = tstride
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 2  # class and distillation tokens
        self.grid_size = patch_grid(input_fdim, input_tdim, patch_size, fstride, tstride)

        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        act = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer

        self.patch_embed = ASTPatchEmbed(patch_size, fstride, tstride, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path_rates[i],
                act_layer=act,
                norm_layer=norm_layer,
                dropout=self.dropout_config,
                attn_chunk_size=attn_chunk_size,
            )
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head = ASTHead(embed_dim, num_classes, eps=head_norm_eps, drop_rate=drop_rate)

        self.pretrained_cfg: dict[str, Any] = {
            "mean": AUDIOSET_MEAN,
            "std": AUDIOSET_STD,
            "sample_rate": 16000,
            "num_mel_bins": input_fdim,
            "input_tdim": input_tdim,
            "num_classes": num_classes,
        }
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize as AST from scratch: truncated normal (std 0.02) for tokens, embeddings and Linear."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.dist_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that optimizers should not decay (timm's convention)."""
        return {"pos_embed", "cls_token", "dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's convention)."""
        return dict(
            stem=r"^cls_token|dist_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def get_classifier(self) -> nn.Module:
        """Return the classifier head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's Linear with a new one of ``num_classes`` outputs (norm kept)."""
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        self.head.fc = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Return position embeddings for a patch grid, adapted when it differs from ``grid_size``."""
        if grid == self.grid_size:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, self.grid_size, grid, self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Terms]]:
        """Return normalized tokens ``(B, 2 + F'*T', D)`` and the raw terms of each block."""
        if x.ndim != 3:
            raise ValueError(
                f"AST expects features shaped (batch, time_frames, mel_bins), got shape {tuple(x.shape)}"
            )
        if x.shape[2] != self.input_fdim:
            raise ValueError(
                f"input has {x.shape[2]} mel bins but the model was built for input_fdim={self.input_fdim}; "
                "check the feature extractor's num_mel_bins or the (batch, time, mel) axis order"
            )
        patch_grid(x.shape[2], x.shape[1], self.patch_size, self.fstride, self.tstride)

        tokens, grid = self.patch_embed(x)  # (B, F'*T', D)
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, tokens], dim=1) + self.pos_embed_for(grid)  # (B, N, D)
        x = self.pos_drop(x)

        raw_terms: list[Terms] = []
        for block in self.blocks:
            x, terms = block(x)
            raw_terms.append(terms)

        return self.norm(x), raw_terms

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average the class and distillation tokens of ``(B, N, D)`` and classify."""
        pooled = (x[:, 0] + x[:, 1]) / 2
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, return_penalty: bool = False) -> Any:
        """Classify log-mel features ``(B, T, F)``.

        Returns:
            Logits ``(B, num_classes)``, or ``(logits, penalty)`` with a
            :class:`~exdrop.PenaltyResult` when ``return_penalty=True``.
        """
        x, raw_terms = self.forward_features(x)
        logits = self.forward_head(x)
        if not return_penalty:
            return logits
        return logits, self._penalty(raw_terms, device=x.device)


# Registered sizes: (embed_dim, depth, num_heads, timm DeiT whose ImageNet weights initialize it).
_SIZES = {
    "ast_tiny_patch16_224": (192, 12, 3, "deit_tiny_distilled_patch16_224"),
    "ast_small_patch16_224": (384, 12, 6, "deit_small_distilled_patch16_224"),
    "ast_base_patch16_224": (768, 12, 12, "deit_base_distilled_patch16_224"),
    "ast_base_patch16_384": (768, 12, 12, "deit_base_distilled_patch16_384"),
}
# (fstride, tstride): 10/10 is the published AudioSet setting, 16/16 cuts non-overlapping patches.
_STRIDES = ((10, 10), (16, 16))


def _create(
    entry: ModelEntry,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    dropout: Any = None,
    tag: Optional[str] = None,
    **kwargs: Any,
) -> ASTModel:
    """Build an AST name; ``pretrained`` loads the ImageNet DeiT weights the way AST initializes."""
    from .ast_convert import checkpoint_numerics, load_ast_checkpoint
    from .checkpoint import hub_weights_file
    from .vit_zoo import timm_pretrained_cfg

    if "img_size" in kwargs:
        raise ValueError(
            f"{entry.name} takes input_tdim (time frames) and input_fdim (mel bins), not img_size"
        )
    args = {**entry.model_args, **kwargs}
    if checkpoint_path is not None:
        for key, value in checkpoint_numerics(checkpoint_path).items():
            args.setdefault(key, value)
    model = ASTModel(dropout=dropout, **args)
    model.pretrained_cfg["architecture"] = entry.name

    if checkpoint_path is not None:
        load_ast_checkpoint(model, checkpoint_path)
    elif pretrained:
        cfg = timm_pretrained_cfg(entry.pretrained_source, tag)
        full = f"{entry.pretrained_source}.{tag}" if tag else entry.pretrained_source
        if cfg is None or not cfg.hf_hub_id:
            raise ValueError(
                f"timm has no Hugging Face hub weights for {full!r}; pass checkpoint_path=... "
                "with a local timm DeiT/ViT, original AST or transformers AST file"
            )
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        load_ast_checkpoint(model, hub_weights_file(cfg.hf_hub_id, filenames))
    return model


def _register_all() -> None:
    for size, (embed_dim, depth, num_heads, source) in _SIZES.items():
        for fstride, tstride in _STRIDES:
            register_model(ModelEntry(
                name=f"{size}_f{fstride}_t{tstride}",
                family="ast",
                create=_create,
                model_args=dict(
                    embed_dim=embed_dim, depth=depth, num_heads=num_heads, fstride=fstride, tstride=tstride
                ),
                pretrained_source=source,
            ))


register_family(_register_all)

__all__ = [
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "ASTModel",
    "patch_grid",
    "resize_pos_embed",
    "resize_pos_grid",
]
