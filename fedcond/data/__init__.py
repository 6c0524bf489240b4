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
from fedcond.data.imagefolder import ImageFolderError  # noqa: E402 - after the registry it imports

__all__ = [
    "ArrayDataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DatasetSplits",
    "ImageFolderError",
    "available_datasets",
    "get_spec",
    "load_dataset",
]

from fedcond.data.partition import (  # noqa: E402
    PARTITION_METHODS,
    PartitionError,
    dirichlet_partition,
    iid_partition,
    partition_indices,
    shard_partition,
)

__all__ += [
    "PARTITION_METHODS",
    "PartitionError",
    "dirichlet_partition",
    "iid_partition",
    "partition_indices",
    "shard_partition",
]
