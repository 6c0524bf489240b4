"""Federated partitioners: which client holds which training samples.

Three schemes, all deterministic from ``seed`` and all returning one index array per client
such that every sample is assigned to exactly one client:

- ``iid``: a random permutation cut into (near) equal parts;
- ``dirichlet``: per class, client shares drawn from Dirichlet(alpha) (Hsu et al., 2019); the
  draw is repeated until every client holds at least ``min_partition_size`` samples;
- ``shards``: the label-sorted samples are cut into ``num_partitions * shards_per_client``
  shards and each client receives ``shards_per_client`` of them (McMahan et al., 2017), so a
  client sees about ``shards_per_client`` classes.

Pure NumPy: the federated layer (Flower) calls these, they know nothing about it.
"""

from __future__ import annotations

import logging

import numpy as np

from fedcond.config import FederatedConfig, choices_of

__all__ = [
    "PARTITION_METHODS",
    "PartitionError",
    "dirichlet_partition",
    "iid_partition",
    "partition_indices",
    "shard_partition",
]

logger = logging.getLogger(__name__)

PARTITION_METHODS = choices_of(FederatedConfig, "partition")
_MAX_DIRICHLET_DRAWS = 1000


class PartitionError(ValueError):
    """The requested partition cannot be made (the message says why)."""


def _check_common(num_samples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise PartitionError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_samples < num_partitions:
        raise PartitionError(f"cannot split {num_samples} samples into {num_partitions} non-empty partitions")


def iid_partition(num_samples: int, *, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, near-equal partitions.

    Parameters
    ----------
    num_samples : int
        Size of the training set.
    num_partitions : int
        Number of clients.
    seed : int
        Seeds the permutation.
    """
    _check_common(num_samples, num_partitions)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partition(
    labels: np.ndarray,
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Label-skewed partitions: per class, client proportions ~ Dirichlet(alpha).

    Parameters
    ----------
    labels : np.ndarray
        Integer labels of the training set.
    num_partitions : int
        Number of clients.
    alpha : float
        Concentration; small values (0.1) give few classes per client, large ones approach IID.
    seed : int
        Seeds every draw.
    min_partition_size : int
        Redraw until every client holds at least this many samples.

    Raises
    ------
    PartitionError
        For a non-positive alpha, or when no draw reaches ``min_partition_size`` for every client.
    """
    labels = np.asarray(labels)
    _check_common(len(labels), num_partitions)
    if not alpha > 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}")
    if min_partition_size * num_partitions > len(labels):
        raise PartitionError(
            f"min_partition_size={min_partition_size} x {num_partitions} clients exceeds the "
            f"{len(labels)} samples available"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        sizes = [sum(len(chunk) for chunk in client) for client in parts]
        if min(sizes) >= min_partition_size:
            return [np.sort(np.concatenate(client)) for client in parts]
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw in {_MAX_DIRICHLET_DRAWS} gave every one of {num_partitions} "
        f"clients >= {min_partition_size} samples; raise alpha or lower min_partition_size"
    )


def shard_partition(
    labels: np.ndarray, *, num_partitions: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Pathological non-IID: each client gets ``shards_per_client`` label-sorted shards.

    Raises
    ------
    PartitionError
        When there are fewer samples than shards.
    """
    labels = np.asarray(labels)
    _check_common(len(labels), num_partitions)
    if shards_per_client < 1:
        raise PartitionError(f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_partitions * shards_per_client
    if num_shards > len(labels):
        raise PartitionError(f"{num_shards} shards requested from only {len(labels)} samples")
    rng = np.random.default_rng(seed)
    # sort by label, ties broken randomly so shards of one class differ between seeds
    order = np.lexsort((rng.random(len(labels)), labels))
    shards = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_partitions, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


def partition_indices(
    labels: np.ndarray,
    *,
    method: str,
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """One index array per client, by ``method`` (``iid``, ``dirichlet`` or ``shards``).

    Every sample index ``0..len(labels)-1`` appears in exactly one returned array, and the
    result depends only on the arguments (same seed, same partition).

    Raises
    ------
    PartitionError
        For an unknown method or impossible settings.
    """
    labels = np.asarray(labels)
    if method == "iid":
        return iid_partition(len(labels), num_partitions=num_partitions, seed=seed)
    if method == "dirichlet":
        return dirichlet_partition(
            labels, num_partitions=num_partitions, alpha=alpha, seed=seed, min_partition_size=min_partition_size
        )
    if method == "shards":
        return shard_partition(labels, num_partitions=num_partitions, shards_per_client=shards_per_client, seed=seed)
    raise PartitionError(f"unknown partition method {method!r}; choose one of {', '.join(PARTITION_METHODS)}")
