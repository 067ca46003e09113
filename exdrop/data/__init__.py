"""Datasets, decoders and transforms, registered by ``data.kind``."""

from .registry import (
    REQUIRED,
    DataOption,
    DatasetBundle,
    DatasetKind,
    dataset_kinds,
    get_dataset_kind,
    register_dataset,
)

__all__ = [
    "REQUIRED",
    "DataOption",
    "DatasetBundle",
    "DatasetKind",
    "dataset_kinds",
    "get_dataset_kind",
    "register_dataset",
]
