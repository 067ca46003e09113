"""Blocks, model families, the registry and checkpoint converters."""

from . import vit_zoo  # registers the ViT/DeiT names
from . import ast  # registers the AST names
from . import video  # registers the video names
from .base import ExplicitDropoutModel, resolve_dropout
from .layers import Attention, Block, Mlp
from .registry import create_model, list_models, register_model
from .vision_transformer import VisionTransformer, from_timm
from .vit_zoo import load_timm_checkpoint

__all__ = [
    "Attention",
    "Block",
    "ExplicitDropoutModel",
    "Mlp",
    "VisionTransformer",
    "create_model",
    "from_timm",
    "list_models",
    "load_timm_checkpoint",
    "register_model",
    "resolve_dropout",
]
