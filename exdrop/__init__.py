"""exdrop: Transformer models for image, audio and video with explicit dropout."""

from .models import VisionTransformer, create_model, from_timm, list_models
from .penalties import COMPONENTS, DropoutConfig, PenaltyResult

__version__ = "0.1.0"

__all__ = [
    "COMPONENTS",
    "DropoutConfig",
    "PenaltyResult",
    "VisionTransformer",
    "create_model",
    "from_timm",
    "list_models",
]
