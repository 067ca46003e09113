"""Warmup schedules for the penalty coefficients."""

from __future__ import annotations

import math
from typing import Mapping, Union

from ..penalties import COMPONENTS

WarmupSpec = Union[float, Mapping[str, float]]
SHAPES = ("linear", "cosine")


def validate_warmup(spec: WarmupSpec, shape: str) -> None:
    """Raise ``ValueError`` for an unknown component, a negative length or an unknown shape."""
    if shape not in SHAPES:
        raise ValueError(f"train.coefficient_warmup_shape={shape!r} is invalid; use one of {', '.join(SHAPES)}")
    items = spec.items() if isinstance(spec, Mapping) else [("all", spec)]
    for name, epochs in items:
        if name != "all" and name not in COMPONENTS:
            raise ValueError(
                f"unknown component {name!r} in train.coefficient_warmup; expected one of {', '.join(COMPONENTS)}"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0:
            raise ValueError(f"train.coefficient_warmup[{name!r}]={epochs!r} must be a number of epochs >= 0")


def coefficient_factors(spec: WarmupSpec, shape: str, epoch_position: float) -> dict[str, float]:
    """Return component -> factor in [0, 1] that scales each coefficient at ``epoch_position``.

    Args:
        spec: Warmup length in epochs for all components, or per component
            (components not named keep factor 1).
        shape: ``"linear"`` ramps from 0 to 1; ``"cosine"`` follows ``(1 - cos(pi t)) / 2``.
        epoch_position: Training progress in epochs (fractional).
    """
    lengths = dict(spec) if isinstance(spec, Mapping) else {c: float(spec) for c in COMPONENTS}
    factors = {}
    for name, length in lengths.items():
        t = 1.0 if length <= 0 else min(1.0, epoch_position / length)
        factors[name] = t if shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
    return factors
