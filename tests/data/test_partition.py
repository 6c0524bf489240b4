"""Partitioners: every sample exactly once, determinism from the seed, the schemes' shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcond.data import PartitionError, load_dataset, partition_indices


@st.composite
def _labels_and_clients(draw):
    num_classes = draw(st.integers(1, 6))
    n = draw(st.integers(20, 300))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    clients = draw(st.integers(1, 6))
    return labels, clients


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.all(np.diff(part) > 0) for part in parts)  # each client's indices ascending


@settings(max_examples=40, deadline=None)
@given(data=_labels_and_clients(), seed=st.integers(0, 2**16), method=st.sampled_from(["iid", "dirichlet", "shards"]))
def test_every_sample_is_assigned_exactly_once(data, seed, method):
    labels, clients = data
    kwargs = {"alpha": 0.3, "min_partition_size": 1, "shards_per_client": 2}
    parts = partition_indices(labels, method=method, num_partitions=clients, seed=seed, **kwargs)
    assert len(parts) == clients
    _assert_exact_cover(parts, len(labels))


@settings(max_examples=25, deadline=None)
@given(data=_labels_and_clients(), seed=st.integers(0, 2**16), method=st.sampled_from(["iid", "dirichlet", "shards"]))
def test_same_seed_same_partition(data, seed, method):
    labels, clients = data
    first = partition_indices(labels, method=method, num_partitions=clients, seed=seed, min_partition_size=1)
    second = partition_indices(labels, method=method, num_partitions=clients, seed=seed, min_partition_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_different_seeds_differ():
    labels = load_dataset("digits").train.labels.numpy()
    a = partition_indices(labels, method="dirichlet", num_partitions=10, alpha=0.1, seed=0)
    b = partition_indices(labels, method="dirichlet", num_partitions=10, alpha=0.1, seed=1)
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_small_alpha_is_label_skewed_and_respects_min_size():
    labels = load_dataset("digits").train.labels.numpy()
    skewed = partition_indices(labels, method="dirichlet", num_partitions=10, alpha=0.1, seed=0, min_partition_size=10)
    iid = partition_indices(labels, method="iid", num_partitions=10, seed=0)
    assert min(len(p) for p in skewed) >= 10

    def dominant_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

    assert dominant_share(skewed) > 0.5 > dominant_share(iid)
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1


def test_shards_give_few_classes_per_client():
    labels = load_dataset("digits").train.labels.numpy()
    parts = partition_indices(labels, method="shards", num_partitions=10, shards_per_client=2, seed=0)
    classes = [len(np.unique(labels[p])) for p in parts]
    assert max(classes) <= 4  # two label-sorted shards span at most two classes each


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "nope"}, "unknown partition method"),
        ({"method": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"method": "dirichlet", "min_partition_size": 1000}, "exceeds"),
        ({"method": "iid", "num_partitions": 0}, "num_partitions must be >= 1"),
        ({"method": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"method": "iid", "num_partitions": 101}, "cannot split 100 samples into 101 non-empty partitions"),
        ({"method": "shards", "num_partitions": 30, "shards_per_client": 4}, "120 shards requested from only 100"),
        # 100 samples, 20 clients of >= 5 each: every client needs exactly its share, which
        # Dirichlet(0.01) essentially never draws
        (
            {"method": "dirichlet", "num_partitions": 20, "alpha": 0.01, "min_partition_size": 5},
            r"no Dirichlet\(alpha=0.01\) draw in \d+ gave every one of 20 clients >= 5",
        ),
    ],
)
def test_bad_settings_name_the_problem(kwargs, match):
    labels = np.repeat(np.arange(5), 20)
    args = {"num_partitions": 4, "seed": 0, **kwargs}
    with pytest.raises(PartitionError, match=match):
        partition_indices(labels, **args)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_every_method_follows_its_seed(method: str) -> None:
    labels = np.tile(np.arange(10), 30)
    kwargs = {"method": method, "num_partitions": 5, "alpha": 1.0, "min_partition_size": 1}
    a = partition_indices(labels, seed=0, **kwargs)
    b = partition_indices(labels, seed=0, **kwargs)
    c = partition_indices(labels, seed=1, **kwargs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_clients_get_near_equal_random_samples_with_every_class() -> None:
    labels = np.tile(np.arange(10), 30)
    parts = partition_indices(labels, method="iid", num_partitions=4, seed=0)
    assert [len(p) for p in parts] == [75, 75, 75, 75]
    assert all(p[-1] - p[0] > 150 for p in parts)  # spread over the data set, not a contiguous block
    assert all(len(np.unique(labels[p])) == 10 for p in parts)


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_are_single_class_pieces_dealt_at_random(shards_per_client: int) -> None:
    # 10 classes x 30 samples, 10 clients: shards of 30 / shards_per_client samples, each inside one class
    labels = np.tile(np.arange(10), 30)
    parts = partition_indices(labels, method="shards", num_partitions=10, shards_per_client=shards_per_client, seed=0)
    _assert_exact_cover(parts, len(labels))
    shard = 30 // shards_per_client
    for part in parts:
        counts = np.bincount(labels[part], minlength=10)
        assert len(part) == 30 and np.all(counts % shard == 0)  # whole shards only
        assert np.count_nonzero(counts) <= shards_per_client
    if shards_per_client > 1:
        # shards are dealt in random order, so most clients get pieces of two different classes
        assert sum(np.count_nonzero(np.bincount(labels[p])) == shards_per_client for p in parts) >= 5
        # and ties within a class are broken at random: a piece is not simply the class's first samples
        pieces = [tuple(part[labels[part] == c]) for part in parts for c in np.unique(labels[part])]
        in_order = {tuple(np.flatnonzero(labels == c)[i * shard : (i + 1) * shard]) for c in range(10)
                    for i in range(shards_per_client)}
        assert not set(pieces) <= in_order


def test_dirichlet_large_alpha_approaches_iid() -> None:
    labels = load_dataset("digits").train.labels.numpy()
    parts = partition_indices(labels, method="dirichlet", num_partitions=10, alpha=1e4, seed=0)
    _assert_exact_cover(parts, len(labels))
    mean_size = len(labels) / 10
    assert all(abs(len(p) - mean_size) < 0.1 * mean_size for p in parts)
    assert all(np.bincount(labels[p], minlength=10).max() / len(p) < 0.2 for p in parts)
    moderate = partition_indices(labels, method="dirichlet", num_partitions=10, alpha=0.5, seed=0,
                                 min_partition_size=100)
    assert min(len(p) for p in moderate) >= 100
