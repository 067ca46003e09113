"""Dropout-config handling and penalty summation shared by all exdrop models."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..penalties import DropoutConfig, PenaltyResult
from .layers import Terms, set_dropout

DropoutLike = Union[DropoutConfig, Mapping[str, Any], str, None]

# timm's constructor arguments for stochastic dropout, mapped to our components.
# timm's proj_drop_rate drives the attention proj_drop and both Mlp dropouts.
_TIMM_RATE_KEYS = {
    "attn_drop_rate": ("attn",),
    "proj_drop_rate": ("proj", "ffn", "ffn_out"),
}


def resolve_dropout(dropout: DropoutLike, kwargs: dict[str, Any]) -> DropoutConfig:
    """Combine ``dropout`` with timm's ``attn_drop_rate``/``proj_drop_rate`` popped from ``kwargs``.

    timm's rates alone give an ``implicit`` config with timm's semantics, so that
    ``create_model(name, proj_drop_rate=0.1)`` trains like the timm model.
    Giving both a ``dropout`` config and a non-zero timm rate is ambiguous and
    raises.
    """
    timm_rates = {key: float(kwargs.pop(key) or 0.0) for key in list(kwargs) if key in _TIMM_RATE_KEYS}
    for key, value in timm_rates.items():
        # NaN fails both comparisons, so it is rejected here instead of being ignored as zero.
        if not 0.0 <= value < 1.0:
            raise ValueError(f"timm's {key}={value} is outside the allowed range [0, 1)")
    nonzero = {key: value for key, value in timm_rates.items() if value > 0.0}
    if dropout is not None and nonzero:
        raise ValueError(
            f"both dropout= and timm's {', '.join(sorted(nonzero))} were given; "
            "set the rates in dropout=DropoutConfig(rates={...}) only"
        )
    if dropout is None and nonzero:
        rates = {c: value for key, value in nonzero.items() for c in _TIMM_RATE_KEYS[key]}
        return DropoutConfig(mode="implicit", rates=rates)
    return DropoutConfig.coerce(dropout)


class ExplicitDropoutModel(nn.Module):
    """Mixin for models made of blocks that return ``(x, terms)``.

    Subclasses set ``self.dropout_config`` before building blocks and pass it to
    them; :meth:`set_dropout` swaps it everywhere at once.
    """

    dropout_config: DropoutConfig

    def set_dropout(self, dropout: DropoutLike) -> None:
        """Switch mode, rates or coefficients in place (weights unchanged)."""
        self.dropout_config = DropoutConfig.coerce(dropout)
        set_dropout(self, self.dropout_config)

    def _penalty(self, raw_per_block: Sequence[Terms], device: torch.device) -> PenaltyResult:
        return PenaltyResult.from_blocks(raw_per_block, self.dropout_config.coefficients, device=device)
