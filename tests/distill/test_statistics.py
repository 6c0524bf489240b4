"""DM's real statistics: the protocol, and the non-private batches drawn without replacement with exact means."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.distill.dm import DistributionMatching
from fedcond.distill.statistics import MeanStatistics, RealStatistics, class_means


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


def test_the_plain_statistics_implement_the_whole_protocol_and_keep_no_state() -> None:
    stats = MeanStatistics(batch_size=4)
    assert isinstance(stats, RealStatistics)
    assert (stats.augmentation_per_class, stats.means_only) == (False, False)
    assert stats.fingerprint() == {"kind": "mean", "batch_size": 4} and stats.state_dict() == {}
    stats.load_state_dict({})
    with pytest.raises(ValueError, match="private_generator"):
        stats.load_state_dict({"private_generator": torch.zeros(3, dtype=torch.uint8)})


def test_dm_refuses_statistics_missing_a_protocol_member() -> None:
    class NoCheckpointSupport:
        augmentation_per_class = False
        means_only = False

        def sample_batch(self, class_pools, *, generator):  # noqa: ANN001, ANN201
            raise AssertionError("never reached")

        def class_means(self, embeddings, groups, *, num_classes, generator):  # noqa: ANN001, ANN201
            raise AssertionError("never reached")

    with pytest.raises(TypeError, match="NoCheckpointSupport.*does not implement fedcond.distill.RealStatistics"):
        DistributionMatching(DistillConfig(), real_statistics=NoCheckpointSupport())
