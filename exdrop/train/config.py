"""Run configuration: YAML file + ``key.path=value`` overrides, validated before any data is read."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..data.registry import REQUIRED, DataOption, get_dataset_kind
from ..penalties import DropoutConfig

# Options of every section except ``data`` (whose keys depend on data.kind) and
# ``dropout`` (validated by DropoutConfig).
SECTIONS: dict[str, dict[str, DataOption]] = {
    "model": {
        "name": DataOption(str, REQUIRED, "registered model name, see exdrop.list_models()"),
        "pretrained": DataOption(bool, False, "load timm's pretrained weights from the Hugging Face cache"),
        "checkpoint_path": DataOption(str, None, "local weights file (.safetensors or .pth)", is_path=True),
        "kwargs": DataOption(dict, {}, "extra create_model arguments (depth, embed_dim, drop_path_rate, ...)"),
    },
    "train": {
        "epochs": DataOption(int, 10, "training epochs"),
        "max_steps": DataOption(int, None, "stop after this many optimizer steps (smoke tests)"),
        "lr": DataOption(float, 1e-3, "peak learning rate of AdamW"),
        "min_lr": DataOption(float, 1e-5, "final learning rate of the cosine schedule"),
        "warmup_epochs": DataOption(float, 1.0, "linear warmup length in epochs"),
        "warmup_lr": DataOption(float, 1e-6, "learning rate at the start of warmup"),
        "weight_decay": DataOption(float, 0.05, "AdamW weight decay"),
        "opt": DataOption(str, "adamw", "timm optimizer name"),
        "label_smoothing": DataOption(float, 0.0, "label smoothing for cross-entropy"),
        "grad_clip": DataOption(float, None, "clip the gradient norm to this value"),
        "bf16": DataOption(bool, False, "bfloat16 autocast (CPU and CUDA)"),
        "seed": DataOption(int, 0, "random seed"),
        "device": DataOption(str, "auto", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        "threads": DataOption(int, None, "torch CPU threads (default: torch's choice)"),
        "eval_every": DataOption(int, 1, "evaluate every N epochs (and always after the last)"),
        "grad_accum": DataOption(int, 1, "micro-batches per optimizer step"),
        "layer_decay": DataOption(float, None, "layer-wise learning-rate decay factor (timm), e.g. 0.75"),
        "mixup": DataOption(float, 0.0, "mixup alpha (0 disables), timm's Mixup"),
        "cutmix": DataOption(float, 0.0, "cutmix alpha (0 disables), timm's Mixup"),
        "mixup_prob": DataOption(float, 1.0, "probability of applying mixup or cutmix to a batch"),
        "ema": DataOption(bool, False, "keep an exponential moving average of the weights"),
        "ema_decay": DataOption(float, 0.9998, "EMA decay per optimizer step"),
        "compile": DataOption(bool, False, "wrap the model in torch.compile"),
        "keep_checkpoints": DataOption(int, 2, "epoch checkpoints to keep (0 disables; the best is kept too)"),
        "coefficient_warmup": DataOption((int, float, dict), 0, "penalty-coefficient warmup in epochs, one number or per component"),
        "coefficient_warmup_shape": DataOption(str, "linear", "'linear' or 'cosine' coefficient warmup"),
        "tensorboard": DataOption(bool, True, "write TensorBoard events when tensorboard is installed"),
        "plots": DataOption(bool, True, "write PNG plots of curves and penalties at the end"),
    },
    "output": {
        "dir": DataOption(str, "runs", "parent folder of run folders"),
        "name": DataOption(str, None, "run folder name (default: model name and time)"),
    },
}
DATA_COMMON: dict[str, DataOption] = {
    "kind": DataOption(str, REQUIRED, "dataset kind"),
    "batch_size": DataOption(int, 64, "batch size"),
    "eval_batch_size": DataOption(int, None, "evaluation batch size (default: batch_size)"),
    "num_workers": DataOption(int, 2, "DataLoader worker processes"),
}
TOP_LEVEL = ("model", "dropout", "data", "train", "output")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type, or points nowhere."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=3e-4"`` into ``(["train", "lr"], 0.0003)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return parts, value


def load_config(path: Optional[str | Path], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML config (or start empty), apply overrides and return the raw nested dict."""
    cfg: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({err})") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        cfg = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return cfg


def _check_type(where: str, value: Any, option: DataOption) -> Any:
    if value is None:
        return None
    expected = option.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # PyYAML reads "3e-4" (no dot) as a string, following YAML 1.1.
        try:
            return float(value)
        except ValueError:
            pass
    if expected is list and isinstance(value, tuple):
        return list(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        types = expected if isinstance(expected, tuple) else (expected,)
        name = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"config key {where} must be of type {name}, got {value!r}")
    return value


def _fill_section(where: str, given: Any, options: dict[str, DataOption]) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise ConfigError(
            f"unknown config key {where}.{unknown[0]}; expected one of: {', '.join(sorted(options))}"
        )
    out = {}
    for key, option in options.items():
        if key in given:
            out[key] = _check_type(f"{where}.{key}", given[key], option)
        elif option.default is REQUIRED:
            raise ConfigError(f"missing required config key {where}.{key} ({option.help})")
        else:
            out[key] = copy.deepcopy(option.default)
        if option.is_path and out[key] is not None and not Path(out[key]).exists():
            raise ConfigError(f"config key {where}.{key}: path {out[key]} does not exist")
    return out


def resolve_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a raw config and fill defaults; raise :class:`ConfigError` on the first problem.

    Checks, before any data is read: unknown sections and keys, types, required
    keys, that paths exist, the dropout config and the model name.
    """
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; expected: {', '.join(TOP_LEVEL)}")

    cfg: dict[str, Any] = {}
    for section, options in SECTIONS.items():
        cfg[section] = _fill_section(section, raw.get(section), options)

    data = raw.get("data")
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError("missing required config key data.kind (the dataset kind, e.g. image_folder)")
    try:
        kind = get_dataset_kind(data["kind"])
    except ValueError as err:
        raise ConfigError(f"config key data.kind: {err}") from err
    cfg["data"] = _fill_section("data", data, {**DATA_COMMON, **kind.options})
    if kind.validate is not None:
        try:
            kind.validate(cfg["data"])
        except ValueError as err:
            raise ConfigError(str(err)) from err

    try:
        cfg["dropout"] = DropoutConfig.coerce(raw.get("dropout")).to_dict()
    except ValueError as err:
        raise ConfigError(f"config section dropout: {err}") from err

    from .schedules import validate_warmup

    try:
        validate_warmup(cfg["train"]["coefficient_warmup"] or 0, cfg["train"]["coefficient_warmup_shape"])
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for key in ("epochs", "grad_accum", "eval_every"):
        if cfg["train"][key] < 1:
            raise ConfigError(f"config key train.{key}={cfg['train'][key]} must be >= 1")
    if cfg["data"]["batch_size"] < 1:
        raise ConfigError(f"config key data.batch_size={cfg['data']['batch_size']} must be >= 1")

    from ..models.registry import get_entry

    try:
        get_entry(cfg["model"]["name"])
    except ValueError as err:
        raise ConfigError(f"config key model.name: {err}") from err
    return cfg


def dump_config(cfg: dict[str, Any]) -> str:
    """Serialize a resolved config as YAML (block style, keys in section order)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
