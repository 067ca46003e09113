"""Penalty math and the dropout configuration, independent of any model."""

from .config import COMPONENTS, MODES, DropoutConfig
from .result import PenaltyResult, component_of
from .terms import (
    attn_probs_term,
    attn_probs_term_chunked,
    column_sq_norms,
    linear_input_term,
    output_term,
)

__all__ = [
    "COMPONENTS",
    "MODES",
    "DropoutConfig",
    "PenaltyResult",
    "component_of",
    "attn_probs_term",
    "attn_probs_term_chunked",
    "column_sq_norms",
    "linear_input_term",
    "output_term",
]
