"""The release gate flags near-copies of a client's images and passes what is not one."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.distill.dm import DistributionMatching
from fedcond.distill.synthetic import SyntheticSet
from fedcond.privacy.gate import ReleaseGate
from fedcond.privacy.recoverability import nearest_neighbours


def as_set(images: torch.Tensor, labels: torch.Tensor, **meta) -> SyntheticSet:
    return SyntheticSet(images.float().contiguous(), labels.long(), {"num_classes": 10, **meta})


def test_leave_one_out_neighbours_skip_the_row_itself():
    reference = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    plain = nearest_neighbours(reference, reference)
    assert plain.distances.tolist() == [0.0, 0.0, 0.0, 0.0]
    loo = nearest_neighbours(reference, reference, exclude=torch.arange(4))
    assert loo.distances.tolist() == [1.0, 1.0, 2.0, 7.0]
    assert loo.indices.tolist() == [1, 0, 1, 2]
    with pytest.raises(ValueError, match="one index per query row"):
        nearest_neighbours(reference, reference, exclude=torch.arange(3))


def test_copies_of_training_images_are_flagged(digits):
    train = digits.train
    gate = ReleaseGate(train.images, spec=train.spec, seed=0)
    copies = as_set(train.images[:20], train.labels[:20])
    result = gate.test(copies)
    assert result.flagged.all() and result.flagged_count == 20
    # a small perturbation is still a near-copy; fresh images of the same distribution are not
    nudged = as_set(train.images[:20] + 0.01 * torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
                    train.labels[:20])
    assert gate.test(nudged).flagged_count == 20
    fresh = as_set(digits.test.images[:100], digits.test.labels[:100])
    assert gate.test(fresh).flagged_count <= 5  # the threshold's false-positive rate is about 1%


def test_a_noise_init_dm_set_of_a_large_client_passes(digits):
    train = digits.train
    config = DistillConfig(ipc=5, iterations=100, init="noise", mixed_precision=False, seed=0)
    synthetic = DistributionMatching(config, device="cpu").condense(train).synthetic
    result = ReleaseGate(train.images, spec=train.spec, seed=0).test(synthetic)
    assert result.passed, result.distances["pixel"].min()


def test_multi_formation_sets_are_tested_tile_by_tile(digits):
    from fedcond.distill.formation import encode_formation

    train = digits.train
    gate = ReleaseGate(train.images, spec=train.spec, seed=0)
    # one stored image per 4 real images: its tiles are downsampled copies, each decoded and tested
    stored = encode_formation(train.images[:8], factor=2)
    result = gate.test(as_set(stored, train.labels[:8:4], factor=2))
    assert result.flagged.shape == (2,)
    assert result.distances["pixel"].shape == (2,)
    # the tiles are half-resolution copies: at full resolution they sit as far from their
    # originals as distinct images do, next to the round-tripped originals at about 0
    assert result.flagged.all()
    assert (result.distances["pixel@factor2"] < 1e-4).all()
    assert (result.distances["pixel"] > 1e-2).all()
    # half-resolution tiles of fresh images of the same distribution are not flagged
    fresh = encode_formation(digits.test.images[:80], factor=2)
    assert gate.test(as_set(fresh, digits.test.labels[:80:4], factor=2)).flagged_count <= 2


def test_formation_round_trip_is_what_a_decoded_tile_shows():
    from fedcond.distill.formation import decode_formation, encode_formation, formation_round_trip

    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    tiles = decode_formation(encode_formation(images, factor=2), factor=2)
    assert torch.allclose(formation_round_trip(images, factor=2), tiles, atol=1e-6)
    assert formation_round_trip(images, factor=1) is images


def test_duplicates_in_the_clients_own_data_do_not_zero_the_threshold(digits):
    train = digits.train
    doubled = torch.cat([train.images[:200], train.images[:200]])
    gate = ReleaseGate(doubled, spec=train.spec, seed=0)
    assert gate.thresholds["pixel"] > 0
    assert gate.test(as_set(train.images[:3], train.labels[:3])).flagged.all()


def test_small_clients_use_the_smallest_leave_one_out_distance(digits):
    images = digits.train.images[:30]
    gate = ReleaseGate(images, spec=digits.train.spec, seed=0, feature_space=False)
    loo = nearest_neighbours(images, images, exclude=torch.arange(30)).distances
    assert gate.threshold_rank == 1
    assert gate.thresholds["pixel"] == pytest.approx(float(loo.min()))


def test_gate_input_checks(digits):
    with pytest.raises(ValueError, match="at least two"):
        ReleaseGate(digits.train.images[:1], spec=digits.train.spec)
    with pytest.raises(ValueError, match="quantile"):
        ReleaseGate(digits.train.images[:10], spec=digits.train.spec, quantile=1.0)
