"""Recoverability audit on hand-built points whose distances are known exactly, and its numbers
recomputed from the nearest neighbours it reports."""

from __future__ import annotations

import math

import pytest
import torch

from fedcond.data.registry import load_dataset
from fedcond.privacy.recoverability import (
    Recoverability,
    match_count_pvalue,
    nearest_neighbours,
    recoverability,
)

TRAIN = (100.0 * torch.arange(50.0)).unsqueeze(1)  # 1-D "images" 0, 100, 200, ...


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_match_is_strictly_closer_than_the_threshold() -> None:
    held_out = TRAIN[:40] + 5.0  # every calibration image lies exactly 5 from the training set: tau = 5
    synthetic = torch.tensor([[105.0], [204.5], [300.0], [430.0]])  # distances 5, 4.5, 0, 30
    result = recoverability(synthetic, TRAIN, held_out, quantile=0.05)
    pixel = result.pixel
    assert pixel.threshold == 5.0
    assert pixel.to_train.distances.tolist() == [5.0, 4.5, 0.0, 30.0]
    assert pixel.to_train.indices.tolist() == [1, 2, 3, 4]
    assert pixel.nn_match_rate == 0.5  # 4.5 and the copy; 5 is not closer than tau
    assert pixel.calibration_match_rate == 0.0  # fresh images at the threshold are not matches
    assert pixel.matches == 2


def test_exact_copies_match_even_when_the_threshold_is_zero() -> None:
    # held-out images that duplicate training images (common in real splits) make tau = 0
    held_out = TRAIN[:40].clone()
    synthetic = torch.tensor([[200.0], [301.0]])
    result = recoverability(synthetic, TRAIN, held_out, quantile=0.05)
    assert result.pixel.threshold == 0.0
    assert result.pixel.nn_match_rate == 0.5


def test_reported_numbers_follow_from_the_reported_neighbours_and_split(digits) -> None:
    g = torch.Generator().manual_seed(0)
    train, held_out = digits.train.images, digits.test.images
    synthetic = torch.cat([train[:30] + 0.4 * torch.randn((30, *train.shape[1:]), generator=g), train[30:40]])
    result = recoverability(synthetic, train, held_out, quantile=0.02, generator=torch.Generator().manual_seed(3))
    pixel = result.pixel
    ref_idx = result.reference_indices
    cal_mask = torch.ones(len(held_out), dtype=torch.bool)
    cal_mask[ref_idx] = False
    calibration, reference = held_out[cal_mask], held_out[ref_idx]
    assert len(calibration) == len(held_out) // 2 == pixel.calibration_size
    # the threshold: the floor(q (n + 1))-th smallest calibration-to-train distance
    cal_to_train = nearest_neighbours(calibration, train).distances
    rank = math.floor(0.02 * (len(calibration) + 1))
    assert pixel.threshold_rank == rank
    assert pixel.threshold == pytest.approx(float(cal_to_train.sort().values[rank - 1]), rel=1e-6)
    assert pixel.calibration_match_rate == pytest.approx(float((cal_to_train < pixel.threshold).float().mean()))
    # the distance ratios are ratios of medians, synthetic against the reference half ...
    to_train, to_ref = pixel.to_train.distances, pixel.to_held_out.distances
    torch.testing.assert_close(to_ref, nearest_neighbours(synthetic, reference).distances)
    assert pixel.nn_distance_ratio == pytest.approx(float(to_train.median() / to_ref.median()), rel=1e-6)
    assert float(to_train.median() / to_ref.median()) != pytest.approx(float(to_train.mean() / to_ref.mean()))
    # ... and fresh samples (the calibration half) against the same reference half
    cal_to_ref = nearest_neighbours(calibration, reference).distances
    assert pixel.nn_distance_ratio_fresh == pytest.approx(float(cal_to_train.median() / cal_to_ref.median()), rel=1e-6)
    assert pixel.nn_match_rate == pytest.approx(float(((to_train < pixel.threshold) | (to_train == 0)).float().mean()))
    metrics = result.metrics()
    assert metrics["pixel_nn_median_distance_train"] == pytest.approx(float(to_train.median()))
    assert metrics["pixel_nn_median_distance_held_out"] == pytest.approx(float(to_ref.median()))
    assert metrics["nn_calibration_quantile"] == 0.02


def test_match_count_and_its_pvalue_use_the_spaces_calibration(digits) -> None:
    # 29 copies out of 100: 0.29 * 100 is 28.999... in floating point, the count must still be 29
    g = torch.Generator().manual_seed(0)
    far = 50 + torch.randn((71, *digits.spec.image_shape), generator=g)
    synthetic = torch.cat([digits.train.images[:29], far])
    result = recoverability(synthetic, digits.train.images, digits.test.images, quantile=0.05)
    pixel = result.pixel
    assert pixel.matches == 29 and result.matches() == 29
    assert pixel.threshold_rank == math.floor(0.05 * (pixel.calibration_size + 1)) > 1
    expected = match_count_pvalue(29, audited=100, calibration=pixel.calibration_size, rank=pixel.threshold_rank)
    assert pixel.match_pvalue == expected
    assert result.metrics()["pixel_nn_match_pvalue"] == expected


def test_match_count_pvalue_agrees_with_closed_forms() -> None:
    # rank 1: P(at least one of m audited values below the minimum of n calibration values) = m / (n + m)
    assert match_count_pvalue(1, audited=10, calibration=90, rank=1) == pytest.approx(0.1)
    # all m audited values below all n calibration values: 1 / C(n + m, m)
    assert match_count_pvalue(2, audited=2, calibration=8, rank=1) == pytest.approx(1 / math.comb(10, 2))
    # more matches are less likely under fresh sampling; a higher threshold rank makes them more likely
    assert match_count_pvalue(3, audited=10, calibration=90, rank=1) < match_count_pvalue(2, audited=10,
                                                                                           calibration=90, rank=1)
    assert match_count_pvalue(3, audited=10, calibration=90, rank=5) > match_count_pvalue(3, audited=10,
                                                                                           calibration=90, rank=1)


def test_the_ratio_test_is_one_sided(digits) -> None:
    # noise far from everything has ratios near 1, above the fresh samples': no evidence of memorisation
    noise = 20 + torch.randn((60, *digits.spec.image_shape), generator=torch.Generator().manual_seed(1))
    result = recoverability(noise, digits.train.images, digits.test.images)
    assert result.pixel.nn_distance_ratio > result.pixel.nn_distance_ratio_fresh
    assert result.pixel.nn_ratio_pvalue > 0.5


def test_the_feature_space_uses_the_same_calibration_and_reference_halves(digits) -> None:
    synthetic = digits.train.images[:20] + 0.3
    result = recoverability(synthetic, digits.train.images, digits.test.images, features=lambda x: x.flatten(1))
    pixel, feature = result.pixel, result.spaces["feature"]
    assert feature.threshold == pytest.approx(pixel.threshold, rel=1e-5)
    assert feature.nn_distance_ratio == pytest.approx(pixel.nn_distance_ratio, rel=1e-5)
    assert feature.nn_distance_ratio_fresh == pytest.approx(pixel.nn_distance_ratio_fresh, rel=1e-5)
    assert feature.calibration_match_rate == pixel.calibration_match_rate
    assert torch.equal(feature.to_held_out.indices, pixel.to_held_out.indices)


def test_nearest_neighbours_refuses_rows_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="query rows have 4 values, reference rows 5"):
        nearest_neighbours(torch.zeros(3, 4), torch.zeros(2, 5))


def test_nearest_neighbours_names_an_empty_reference_and_accepts_empty_queries() -> None:
    with pytest.raises(ValueError, match="reference set is empty"):
        nearest_neighbours(torch.zeros(3, 4), torch.zeros(0, 4))
    empty = nearest_neighbours(torch.zeros(0, 4), torch.zeros(2, 4))
    assert empty.distances.shape == (0,) and empty.indices.shape == (0,)


def test_reset_forgets_the_batches_added_before(digits) -> None:
    metric = Recoverability(digits.train.images, digits.test.images)
    metric.update(digits.train.images[:5])
    metric.reset()
    with pytest.raises(ValueError, match="call update"):
        metric.compute()
    metric.update(torch.full((4, *digits.spec.image_shape), 30.0))
    result = metric.compute()
    assert result.num_synthetic == 4 and result.nn_match_rate == 0.0
