"""Datasets (bulk-loaded, normalised tensors) and federated partitioners."""

from fedcond.data.registry import (
    ArrayDataset,
    DatasetNotFoundError,
    DatasetSpec,
    DatasetSplits,
    available_datasets,
    get_spec,
    load_dataset,
)

__all__ = [
    "ArrayDataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DatasetSplits",
    "available_datasets",
    "get_spec",
    "load_dataset",
]
