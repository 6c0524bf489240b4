"""Datasets (bulk-loaded, normalised tensors) and federated partitioners."""

# the registry first: imagefolder imports it
from fedcond.data.registry import (  # noqa: I001 - the order above, not the alphabet
    ArrayDataset,
    DatasetNotFoundError,
    DatasetSpec,
    DatasetSplits,
    available_datasets,
    get_spec,
    load_dataset,
)
from fedcond.data.imagefolder import ImageFolderError

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
