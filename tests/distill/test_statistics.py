"""DM's non-private real statistics: per-class batches drawn without replacement, exact means."""

from __future__ import annotations

import pytest
import torch

from fedcond.distill.statistics import MeanStatistics, class_means


def test_batches_take_batch_real_per_class_without_replacement() -> None:
    pools = [torch.arange(0, 100), torch.arange(100, 103), torch.zeros(0, dtype=torch.long)]
    batch = MeanStatistics(batch_size=10).sample_batch(pools, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(batch.groups, minlength=3).tolist() == [10, 3, 0]
    assert batch.indices.unique().numel() == batch.indices.numel()  # no image twice
    for c, pool in enumerate(pools):
        assert set(batch.indices[batch.groups == c].tolist()) <= set(pool.tolist())
    # a different draw for a different generator state: the batch is sampled, not the first ten
    other = MeanStatistics(batch_size=10).sample_batch(pools, generator=torch.Generator().manual_seed(1))
    assert set(other.indices[other.groups == 0].tolist()) != set(batch.indices[batch.groups == 0].tolist())


def test_batch_real_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_real must be positive"):
        MeanStatistics(batch_size=0)


def test_class_means_are_exact_and_absent_classes_are_zero() -> None:
    embeddings = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    means = class_means(embeddings, torch.tensor([0, 0, 2]), num_classes=3)
    assert means.tolist() == [[2.0, 3.0], [0.0, 0.0], [10.0, 0.0]]
