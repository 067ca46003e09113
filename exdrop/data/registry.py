"""Dataset kinds that a config's ``data.kind`` can name.

Each kind registers a builder and the config keys it accepts, so that a config
with an unknown or mistyped key fails before any file is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from torch.utils.data import Dataset


@dataclass
class DataOption:
    """One config key of a dataset kind.

    Attributes:
        type: Accepted Python type(s); ``int`` values are accepted for ``float``.
        default: Value when the key is absent; ``REQUIRED`` makes the key mandatory.
        help: One line for error messages and docs.
        is_path: The value is a path that must exist before training starts.
    """

    type: Any
    default: Any = None
    help: str = ""
    is_path: bool = False


REQUIRED = object()


@dataclass
class DatasetBundle:
    """Datasets and metadata that a dataset builder returns to the trainer.

    Attributes:
        train: Training dataset of ``(input, target)`` pairs.
        val: Evaluation dataset of the same form.
        num_classes: Classifier width.
        class_names: Label names in class-index order.
        multilabel: Targets are multi-hot float vectors (BCE loss, mAP metric).
        model_kwargs: Extra ``create_model`` arguments the data implies
            (for example ``img_size`` or ``input_tdim``).
        train_batch_transform: Optional ``(x, y) -> (x, y)`` on whole training
            batches (mixup, SpecAugment), applied on the training device.
        collate_fn: Optional DataLoader collate function.
        eval_views: Number of views per evaluation sample (multi-clip video);
            predictions of consecutive views are averaged when > 1.
    """

    train: Dataset
    val: Dataset
    num_classes: int
    class_names: Sequence[str] = ()
    multilabel: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_batch_transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None
    collate_fn: Optional[Callable[[list], Any]] = None
    eval_views: int = 1


@dataclass
class DatasetKind:
    """A registered ``data.kind``: its builder and accepted options."""

    name: str
    build: Callable[[dict[str, Any]], DatasetBundle]
    options: dict[str, DataOption]
    help: str = ""
    load_input: Optional[Callable[[str, dict[str, Any]], Any]] = None
    validate: Optional[Callable[[dict[str, Any]], None]] = None


_KINDS: dict[str, DatasetKind] = {}


def register_dataset(
    name: str,
    options: dict[str, DataOption],
    help: str = "",
    load_input: Optional[Callable[[str, dict[str, Any]], Any]] = None,
    validate: Optional[Callable[[dict[str, Any]], None]] = None,
) -> Callable[[Callable[[dict[str, Any]], DatasetBundle]], Callable[[dict[str, Any]], DatasetBundle]]:
    """Decorator registering ``build(options) -> DatasetBundle`` under ``data.kind: name``.

    ``build`` receives the validated options with defaults filled in.
    ``load_input(path, options)``, when given, turns one file into the model
    input for ``scripts/predict.py``: a tensor without the batch axis, or with
    a leading views axis ``(V, ...)`` whose predictions are averaged.
    ``validate(options)``, when given, checks how options fit together
    without reading data; it runs while the config is resolved, so a
    ``ValueError`` from it stops a run before any data is loaded.
    """

    def wrap(build: Callable[[dict[str, Any]], DatasetBundle]) -> Callable[[dict[str, Any]], DatasetBundle]:
        if name in _KINDS:
            raise ValueError(f"dataset kind {name!r} is already registered")
        _KINDS[name] = DatasetKind(
            name=name, build=build, options=options, help=help, load_input=load_input, validate=validate
        )
        return build

    return wrap


def get_dataset_kind(name: str) -> DatasetKind:
    """Return a registered dataset kind, or raise naming the known ones."""
    _load_builtin_kinds()
    if name not in _KINDS:
        raise ValueError(f"unknown data.kind {name!r}; expected one of {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def dataset_kinds() -> list[str]:
    """Names of all registered dataset kinds."""
    _load_builtin_kinds()
    return sorted(_KINDS)


# Modules under exdrop.data whose import registers dataset kinds.
_BUILTIN_MODULES = ("images", "audio", "video", "video_direction")


def _load_builtin_kinds() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
