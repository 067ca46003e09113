"""Dropout configuration shared by every model family."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

COMPONENTS: tuple[str, ...] = ("q", "k", "v", "attn", "proj", "ffn", "ffn_out")
"""The seven dropout points of a Transformer block, in forward order."""

MODES: tuple[str, ...] = ("explicit", "implicit", "off")

RatesLike = Union[float, Mapping[str, float], None]


def _expand(value: RatesLike, default: float, what: str, allowed: str) -> dict[str, float]:
    """Turn a scalar or a partial mapping into a full component -> value dict.

    ``allowed`` describes the valid range for error messages, e.g. ``"in [0, 1)"``.
    """
    if value is None:
        return {c: default for c in COMPONENTS}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {c: float(value) for c in COMPONENTS}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"dropout {what} must be a number {allowed} or a mapping from component name to such "
            f"a number, got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(COMPONENTS))
    if unknown:
        raise ValueError(
            f"unknown dropout component {unknown[0]!r} in {what}; "
            f"expected one of {', '.join(COMPONENTS)}"
        )
    out = {c: default for c in COMPONENTS}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(
                f"dropout {what}[{name!r}] must be a number {allowed}, got {number!r}"
            )
        out[name] = float(number)
    return out


@dataclass(frozen=True)
class DropoutConfig:
    """Rates and penalty coefficients for the seven dropout points.

    Args:
        mode: ``"explicit"`` adds the deterministic penalty to the loss and runs
            the network without masks, ``"implicit"`` applies real Bernoulli masks
            at the same points, ``"off"`` is the plain model.
        rates: Dropout probability ``p`` in [0, 1) per component, or one number
            for all of them. Missing components get 0.
        coefficients: Penalty weight ``lambda >= 0`` per component, or one number
            for all. Missing components get 1. Only the explicit mode uses them.
    """

    mode: str = "explicit"
    rates: Mapping[str, float] = field(default_factory=dict)
    coefficients: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode is False:
            # YAML 1.1 (PyYAML) reads an unquoted `off` as the boolean false.
            object.__setattr__(self, "mode", "off")
        if self.mode not in MODES:
            raise ValueError(
                f"unknown dropout mode {self.mode!r}; expected one of {', '.join(MODES)}"
            )
        rates = _expand(self.rates, 0.0, "rates", "in [0, 1)")
        coefficients = _expand(self.coefficients, 1.0, "coefficients", ">= 0")
        for name, p in rates.items():
            if not (0.0 <= p < 1.0):
                raise ValueError(
                    f"dropout rate {name!r} = {p} is outside the allowed range [0, 1)"
                )
        for name, lam in coefficients.items():
            if math.isnan(lam) or math.isinf(lam) or lam < 0.0:
                raise ValueError(
                    f"dropout coefficient {name!r} = {lam} is invalid; "
                    "it must be a finite number >= 0"
                )
        # Frozen dataclass: assign the normalized dicts through object.__setattr__.
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "coefficients", coefficients)

    @classmethod
    def coerce(cls, value: Union["DropoutConfig", Mapping[str, Any], str, None]) -> "DropoutConfig":
        """Build a config from ``None`` (off), a mode string, a dict or a config."""
        if value is None:
            return cls(mode="off")
        if isinstance(value, DropoutConfig):
            return value
        if isinstance(value, str):
            return cls(mode=value)
        if isinstance(value, Mapping):
            allowed = {"mode", "rates", "coefficients"}
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise ValueError(
                    f"unknown dropout config key {unknown[0]!r}; expected keys: mode, rates, coefficients"
                )
            return cls(**dict(value))
        raise ValueError(
            f"dropout must be a DropoutConfig, a dict, a mode string or None, got {type(value).__name__}"
        )

    def rate(self, name: str) -> float:
        """Return the dropout probability of one component."""
        return self.rates[name]

    def rho(self, name: str) -> float:
        """Return ``p / (1 - p)``, the variance factor of the inverted-dropout mask."""
        p = self.rates[name]
        return p / (1.0 - p)

    def implicit_rate(self, name: str) -> float:
        """Return the mask probability to apply in the forward pass (0 unless implicit)."""
        return self.rates[name] if self.mode == "implicit" else 0.0

    def penalty_active(self, name: str) -> bool:
        """Tell whether the explicit term of a component must be computed."""
        return (
            self.mode == "explicit"
            and self.rates[name] > 0.0
            and self.coefficients[name] > 0.0
        )

    @property
    def any_penalty(self) -> bool:
        """Whether any explicit term is active."""
        return any(self.penalty_active(c) for c in COMPONENTS)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict that :meth:`coerce` accepts (for YAML and JSON)."""
        return {
            "mode": self.mode,
            "rates": dict(self.rates),
            "coefficients": dict(self.coefficients),
        }
