"""Training: configuration, the fine-tuning loop, metrics and run files."""

from .config import ConfigError, load_config, resolve_config
from .loop import RunResult, evaluate, train

__all__ = ["ConfigError", "RunResult", "evaluate", "load_config", "resolve_config", "train"]
