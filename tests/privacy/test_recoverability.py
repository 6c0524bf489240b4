"""Nearest-neighbour memorisation audit on digits."""

from __future__ import annotations

import pytest
import torch

from fedcond.data.registry import load_dataset
from fedcond.privacy.recoverability import (
    CalibrationError,
    Recoverability,
    calibrate_threshold,
    match_count_pvalue,
    nearest_neighbours,
    recoverability,
    threshold_rank,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_nearest_neighbours_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(37, 5, generator=g), torch.randn(101, 5, generator=g)
    nn = nearest_neighbours(q, r, batch_size=8)
    d = torch.cdist(q, r)
    assert torch.equal(nn.indices, d.argmin(1))
    assert torch.allclose(nn.distances, d.min(1).values, atol=1e-4)


def test_exact_training_images_are_all_matched(digits) -> None:
    copies = digits.train.images[:50]
    result = recoverability(copies, digits.train.images, digits.test.images, features=None)
    assert result.nn_match_rate == pytest.approx(1.0)
    assert result.pixel.nn_distance_ratio == pytest.approx(0.0, abs=1e-3)
    assert torch.equal(result.pixel.to_train.indices, torch.arange(50))


def test_pure_noise_is_not_matched(digits) -> None:
    noise = torch.randn(50, *digits.spec.image_shape, generator=torch.Generator().manual_seed(3))
    result = recoverability(noise, digits.train.images, digits.test.images)
    assert result.nn_match_rate == pytest.approx(0.0, abs=0.02)


def test_fresh_held_out_images_match_at_about_the_calibrated_rate(digits) -> None:
    # images from neither split: a different half of the test split must be matched rarely
    g = torch.Generator().manual_seed(0)
    fresh = digits.test.images[:180]
    result = recoverability(fresh, digits.train.images, digits.test.images[180:], quantile=0.05, generator=g)
    assert result.pixel.nn_match_rate < 0.15
    assert result.pixel.calibration_match_rate <= 0.06


def test_feature_space_is_audited_when_features_are_given(digits) -> None:
    features = lambda x: x.flatten(1)[:, :16]  # noqa: E731
    result = recoverability(digits.train.images[:10], digits.train.images, digits.test.images, features=features)
    assert set(result.spaces) == {"pixel", "feature"}
    assert result.spaces["feature"].nn_match_rate == pytest.approx(1.0)


def test_rescaled_copies_escape_pixel_space_but_not_the_feature_space(digits) -> None:
    # mmd-matched DM sets grow to several times the pixel scale (the embedder's instance norm makes
    # the loss blind to scale); the instance-normed ConvNet features the audit uses are blind to it
    # too, so the headline rate (the larger of the two spaces) still counts rescaled copies
    from fedcond.models import get_model

    net = get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(1)).eval()
    copies = 5 * digits.train.images[:50]
    result = recoverability(copies, digits.train.images, digits.test.images, features=net.embed)
    assert result.pixel.nn_match_rate == pytest.approx(0.0)
    assert result.spaces["feature"].nn_match_rate == pytest.approx(1.0)
    assert result.nn_match_rate == pytest.approx(1.0)
    assert result.strongest.space == "feature"  # the CLI's nearest-neighbour figure shows this space
    exact = recoverability(digits.train.images[:50], digits.train.images, digits.test.images, features=net.embed)
    assert exact.strongest.space == "pixel"  # both spaces match everything: pixel wins the tie


def test_too_few_held_out_images_is_a_clear_error(digits) -> None:
    with pytest.raises(CalibrationError, match="at least 100"):
        recoverability(digits.train.images[:5], digits.train.images, digits.test.images[:150], quantile=0.01)
    with pytest.raises(CalibrationError, match="held-out"):
        calibrate_threshold(torch.rand(10), quantile=0.01)


def test_shape_mismatch_is_a_clear_error(digits) -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        recoverability(torch.zeros(3, 1, 28, 28), digits.train.images, digits.test.images)


def test_stateful_twin_equals_the_function(digits) -> None:
    metric = Recoverability(digits.train.images, digits.test.images, seed=4)
    metric.update(digits.train.images[:7])
    metric.update(torch.randn(13, *digits.spec.image_shape))
    stateful = metric.compute()
    functional = recoverability(
        torch.cat(metric._batches), digits.train.images, digits.test.images, generator=torch.Generator().manual_seed(4)
    )
    assert stateful.metrics() == functional.metrics()
    assert stateful.nn_match_rate == pytest.approx(7 / 20)


def test_ratio_test_flags_perturbed_copies_but_not_fresh_images(digits) -> None:
    g = torch.Generator().manual_seed(5)
    source = digits.train.images[:100]
    drifted = source + 0.3 * torch.randn(source.shape, generator=g)  # no longer near-copies
    result = recoverability(
        drifted, digits.train.images, digits.test.images, generator=torch.Generator().manual_seed(1)
    )
    assert result.pixel.nn_match_rate < 0.5
    assert result.pixel.nn_ratio_pvalue < 1e-3
    assert result.pixel.nn_distance_ratio < result.pixel.nn_distance_ratio_fresh
    # fresh images (the test split's calibration half audited against the other half) are not flagged
    fresh = recoverability(
        digits.test.images[:180], digits.train.images, digits.test.images[180:], quantile=0.05,
        generator=torch.Generator().manual_seed(2),
    )
    assert fresh.pixel.nn_ratio_pvalue > 0.01


def test_threshold_is_an_order_statistic_of_the_calibration_distances() -> None:
    d = torch.arange(1.0, 181.0).flip(0)  # 180 distances 180..1
    assert threshold_rank(180, quantile=0.01) == 1  # floor(0.01 * 181)
    assert calibrate_threshold(d, quantile=0.01) == 1.0  # the smallest, no interpolation
    assert threshold_rank(999, quantile=0.01) == 10
    assert calibrate_threshold(torch.arange(999.0), quantile=0.01) == 9.0


@pytest.mark.parametrize("calibration,audited", [(180, 100), (180, 1000)])
def test_match_count_test_holds_its_level_for_fresh_samples(calibration: int, audited: int) -> None:
    # fresh samples (same distribution as the calibration set) must be flagged at most at the
    # test's level. A Binomial(audited, q) test, which ignores that the threshold is estimated
    # from `calibration` samples, flagged 13-25% of such draws at a 1/600 level.
    g = torch.Generator().manual_seed(0)
    level, trials, rejected = 0.01, 2000, 0
    for _ in range(trials):
        cal = torch.rand(calibration, generator=g)
        fresh = torch.rand(audited, generator=g)
        tau = calibrate_threshold(cal, quantile=0.01)
        k = int((fresh < tau).sum())
        rank = threshold_rank(calibration, quantile=0.01)
        rejected += match_count_pvalue(k, audited=audited, calibration=calibration, rank=rank) < level
    assert rejected / trials <= level + 0.005  # 2000 trials: sd of the rate ~0.0022 at level 0.01
    # and it still detects copies: a tenth of the audited images under the threshold
    assert match_count_pvalue(audited // 10, audited=audited, calibration=calibration, rank=1) < 1e-4


def test_match_count_pvalue_rejects_inconsistent_counts() -> None:
    with pytest.raises(ValueError, match="rank"):
        match_count_pvalue(1, audited=10, calibration=100, rank=0)
    with pytest.raises(ValueError, match="matches"):
        match_count_pvalue(11, audited=10, calibration=100, rank=1)
    assert match_count_pvalue(0, audited=10, calibration=100, rank=1) == 1.0
