"""Attention, FFN and Transformer block with the seven dropout points.

The modules keep timm's parameter names (``qkv``, ``proj``, ``fc1``, ``fc2``,
``norm1``, ``ls1``, ...) so that timm state dicts load unchanged. Each forward
returns its output and a dict of explicit terms ``R_c``, with rho included and
the coefficient not. The dict is empty in eval mode and in the ``implicit`` and
``off`` modes.
"""

from __future__ import annotations

from typing import Callable, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, LayerScale

from ..penalties import (
    DropoutConfig,
    attn_probs_term,
    attn_probs_term_chunked,
    linear_input_term,
    output_term,
)

Terms = dict[str, torch.Tensor]

DEFAULT_ATTN_CHUNK = 256
"""Sequences longer than this compute the ``attn`` term in query chunks of this size."""


class DropoutPoints(nn.Module):
    """Base for modules that read a shared :class:`DropoutConfig` at forward time."""

    def __init__(self, dropout: Optional[DropoutConfig] = None) -> None:
        super().__init__()
        self.dropout_config = dropout or DropoutConfig(mode="off")

    def _mask(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Apply the implicit-mode mask of one component (identity otherwise)."""
        p = self.dropout_config.implicit_rate(name) if self.training else 0.0
        return F.dropout(x, p=p, training=True) if p > 0.0 else x

    def _active(self, name: str) -> bool:
        return self.training and self.dropout_config.penalty_active(name)


class Attention(DropoutPoints):
    """Multi-head self-attention with dropout points ``q``, ``k``, ``v``, ``attn``, ``proj``.

    Args:
        dim: Token width ``C``.
        num_heads: Number of heads ``H``; ``C`` must be divisible by it.
        qkv_bias: Add a bias to the fused ``qkv`` projection.
        qk_norm: Normalize queries and keys per head with ``norm_layer``.
        proj_bias: Add a bias to the output projection.
        norm_layer: Normalization layer for ``qk_norm``.
        dropout: Shared dropout configuration.
        attn_chunk_size: Above this many tokens the ``attn`` term is computed in
            query chunks with recomputation, keeping memory linear in ``N``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        proj_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        dropout: Optional[DropoutConfig] = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
    ) -> None:
        super().__init__(dropout)
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_chunk_size = attn_chunk_size

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _project_qkv(self, h: torch.Tensor) -> torch.Tensor:
        """Return ``(B, N, 3C)``. With implicit q/k/v masks, each row block gets its own mask."""
        masked = self.training and any(self.dropout_config.implicit_rate(c) > 0 for c in "qkv")
        if not masked:
            return self.qkv(h)
        weights = self.qkv.weight.chunk(3, dim=0)
        biases = self.qkv.bias.chunk(3, dim=0) if self.qkv.bias is not None else (None,) * 3
        parts = [
            F.linear(self._mask(h, name), w, b)
            for name, w, b in zip("qkv", weights, biases)
        ]
        return torch.cat(parts, dim=-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        """Attend over ``h`` ``(B, N, C)``, the output of the block's first norm."""
        terms: Terms = {}

        qkv = self._project_qkv(h)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)

        # q, k, v: one mask each on h, read through the matching row block of qkv.weight.
        for name, weight in zip("qkv", self.qkv.weight.chunk(3, dim=0)):
            if self._active(name):
                terms[name] = linear_input_term(h, weight, self.dropout_config.rho(name))

        n_tokens = h.shape[1]
        if self._active("attn"):
            rho = self.dropout_config.rho("attn")
            if n_tokens <= self.attn_chunk_size:
                attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
                attn = attn.softmax(dim=-1)
                terms["attn"] = attn_probs_term(attn, v, rho)
                o = attn @ v
            else:
                o = F.scaled_dot_product_attention(q, k, v)
                terms["attn"] = attn_probs_term_chunked(q, k, v, self.scale, rho, self.attn_chunk_size)
        else:
            p_attn = self.dropout_config.implicit_rate("attn") if self.training else 0.0
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p_attn)  # (B, H, N, D)

        o = rearrange(o, "b h n d -> b n (h d)")
        y = self.proj(o)

        if self._active("proj"):
            terms["proj"] = output_term(y, self.dropout_config.rho("proj"))
        y = self._mask(y, "proj")
        return y, terms


class Mlp(DropoutPoints):
    """Two-layer FFN with dropout points ``ffn`` (hidden) and ``ffn_out`` (output)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
        dropout: Optional[DropoutConfig] = None,
    ) -> None:
        super().__init__(dropout)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        """Apply the FFN to ``g`` ``(..., C)``, the output of the block's second norm."""
        terms: Terms = {}

        u = self.act(self.fc1(g))  # (..., hidden)
        if self._active("ffn"):
            terms["ffn"] = linear_input_term(u, self.fc2.weight, self.dropout_config.rho("ffn"))
        u = self._mask(u, "ffn")

        y = self.fc2(u)
        if self._active("ffn_out"):
            terms["ffn_out"] = output_term(y, self.dropout_config.rho("ffn_out"))
        y = self._mask(y, "ffn_out")
        return y, terms


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden width as a multiple of ``dim``.
        qkv_bias: Bias in the ``qkv`` projection.
        qk_norm: Per-head normalization of queries and keys.
        proj_bias: Bias in the attention output projection and the FFN layers.
        init_values: LayerScale initial value; ``None`` or 0 disables LayerScale.
        drop_path: Stochastic depth rate of this block.
        act_layer: FFN activation.
        norm_layer: Normalization layer.
        dropout: Shared dropout configuration.
        attn_chunk_size: See :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        proj_bias: bool = True,
        init_values: Optional[float] = None,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        dropout: Optional[DropoutConfig] = None,
        attn_chunk_size: int = DEFAULT_ATTN_CHUNK,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            proj_bias=proj_bias,
            norm_layer=norm_layer,
            dropout=dropout,
            attn_chunk_size=attn_chunk_size,
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, bias=proj_bias, dropout=dropout)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Terms]:
        """Return the block output ``(B, N, C)`` and this block's explicit terms."""
        ya, attn_terms = self.attn(self.norm1(x))
        x = x + self.drop_path1(self.ls1(ya))

        yf, ffn_terms = self.mlp(self.norm2(x))
        x = x + self.drop_path2(self.ls2(yf))

        return x, {**attn_terms, **ffn_terms}


def set_dropout(module: nn.Module, dropout: DropoutConfig) -> None:
    """Point every dropout-aware submodule of ``module`` at ``dropout``."""
    for sub in module.modules():
        if isinstance(sub, DropoutPoints):
            sub.dropout_config = dropout
