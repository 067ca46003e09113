"""The penalty a model returns next to its logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch


def component_of(term_name: str) -> str:
    """Map a term name to its component: ``"temporal.q"`` -> ``"q"``, ``"ffn"`` -> ``"ffn"``."""
    return term_name.rsplit(".", 1)[-1]


@dataclass
class PenaltyResult:
    """Explicit-dropout penalty of one forward pass.

    Attributes:
        total: Scalar float32 tensor to add to the task loss.
        terms: Term name -> scalar tensor, summed over blocks, coefficients applied.
            Plain models use the component names (``q``, ``k``, ...); models with
            several attentions per block prefix them (``temporal.q``).
        per_block: One dict per block, term name -> scalar tensor, coefficients
            applied. Blocks with no active term hold an empty dict.
        raw_per_block: The same values before the coefficients, so that a
            trainer can apply scheduled coefficients with :meth:`reweighted`.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    per_block: list[dict[str, torch.Tensor]] = field(default_factory=list)
    raw_per_block: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def from_blocks(
        cls,
        raw_per_block: Sequence[Mapping[str, torch.Tensor]],
        coefficients: Mapping[str, float],
        device: Optional[torch.device] = None,
    ) -> "PenaltyResult":
        """Apply per-component coefficients to raw block terms and sum them.

        Args:
            raw_per_block: For each block, term name -> ``R_c`` (rho included,
                coefficient not).
            coefficients: Component name -> ``lambda``; a term named
                ``"prefix.c"`` uses the coefficient of ``c``.
            device: Device of the zero total when no term is active.
        """
        raw = [dict(block) for block in raw_per_block]
        per_block = [
            {name: value * coefficients[component_of(name)] for name, value in block.items()}
            for block in raw
        ]
        terms: dict[str, torch.Tensor] = {}
        for block in per_block:
            for name, value in block.items():
                terms[name] = terms[name] + value if name in terms else value
        if terms:
            total = torch.stack(list(terms.values())).sum()
        else:
            total = torch.zeros((), dtype=torch.float32, device=device)
        return cls(total=total, terms=terms, per_block=per_block, raw_per_block=raw)

    def reweighted(self, coefficients: Mapping[str, float]) -> "PenaltyResult":
        """Return the same terms with other coefficients (for coefficient schedules)."""
        return PenaltyResult.from_blocks(self.raw_per_block, coefficients, device=self.total.device)

    def detached(self) -> dict[str, float]:
        """Return ``{"total": ..., term: ...}`` as Python floats for logging."""
        out = {"total": float(self.total.detach())}
        out.update({name: float(value.detach()) for name, value in self.terms.items()})
        return out

    def per_block_floats(self) -> list[dict[str, float]]:
        """Return :attr:`per_block` as Python floats for logging and heatmaps."""
        return [{name: float(v.detach()) for name, v in block.items()} for block in self.per_block]
