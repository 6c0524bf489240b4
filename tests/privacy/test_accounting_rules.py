"""Accountant bookkeeping rules: no steps spend nothing, runs merge only when identical, the wide RDP
grid everywhere, calibration's input checks and its never-above-target guarantee, and plan_dp."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import ConfigError, DPConfig
from fedcond.privacy.accounting import (
    PrivacyAccountant,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    epsilon_for,
)
from fedcond.privacy.dp import plan_dp


@pytest.mark.parametrize("steps", [0, -3])
def test_no_steps_spend_no_epsilon_and_need_no_noise(steps: int) -> None:
    assert epsilon_for(noise_multiplier=0.5, sample_rate=0.5, steps=steps, delta=1e-5) == 0.0
    assert calibrate_noise_multiplier(epsilon=1.0, delta=1e-5, sample_rate=0.5, steps=steps) == 0.0
    acc = PrivacyAccountant()
    acc.step(noise_multiplier=0.5, sample_rate=0.5, steps=steps)
    assert acc.history == [] and acc.steps == 0 and acc.epsilon(delta=1e-5) == 0.0
    assert PrivacyAccountant("prv").epsilon(delta=1e-5) == 0.0  # Opacus' PRV accountant fails on no history


def test_consecutive_runs_merge_only_when_noise_and_rate_both_match() -> None:
    acc = PrivacyAccountant()
    acc.step(noise_multiplier=2.0, sample_rate=0.1, steps=3)
    acc.step(noise_multiplier=2.0, sample_rate=0.1, steps=2)
    acc.step(noise_multiplier=2.0, sample_rate=0.2, steps=4)  # same noise, another rate
    acc.step(noise_multiplier=3.0, sample_rate=0.2, steps=1)  # same rate, another noise
    acc.step(noise_multiplier=2.0, sample_rate=0.1, steps=1)  # equal to the first, but not consecutive
    assert acc.history == [(2.0, 0.1, 5), (2.0, 0.2, 4), (3.0, 0.2, 1), (2.0, 0.1, 1)]
    assert acc.steps == 11
    # merged or not, the epsilon is that of the same composition
    single = PrivacyAccountant()
    for _ in range(5):
        single.step(noise_multiplier=2.0, sample_rate=0.1)
    assert single.epsilon(delta=1e-5) == pytest.approx(
        epsilon_for(noise_multiplier=2.0, sample_rate=0.1, steps=5, delta=1e-5), rel=1e-12
    )


def test_the_stateful_accountant_uses_the_wide_order_grid_too() -> None:
    # sigma 100 over 10 full-batch steps: the optimal Renyi order lies far above Opacus' default 63
    acc = PrivacyAccountant("rdp")
    acc.step(noise_multiplier=100.0, sample_rate=1.0, steps=10)
    wide = epsilon_for(noise_multiplier=100.0, sample_rate=1.0, steps=10, delta=1e-5)
    assert acc.epsilon(delta=1e-5) == pytest.approx(wide, rel=1e-12)
    assert wide < 0.15  # the default grid cannot go below log(1e5)/62 = 0.186


def test_more_steps_or_less_noise_spend_more() -> None:
    base = epsilon_for(noise_multiplier=2.0, sample_rate=0.1, steps=50, delta=1e-5)
    assert epsilon_for(noise_multiplier=2.0, sample_rate=0.1, steps=100, delta=1e-5) > base
    assert epsilon_for(noise_multiplier=1.5, sample_rate=0.1, steps=50, delta=1e-5) > base
    assert epsilon_for(noise_multiplier=2.0, sample_rate=0.2, steps=50, delta=1e-5) > base
    assert epsilon_for(noise_multiplier=2.0, sample_rate=0.1, steps=50, delta=1e-3) < base


@pytest.mark.parametrize("sample_rate", [0.0, -0.1, 1.5])
def test_calibration_refuses_a_sample_rate_outside_0_1(sample_rate: float) -> None:
    with pytest.raises(PrivacyBudgetError, match=r"sample rate must lie in \(0, 1\]"):
        calibrate_noise_multiplier(epsilon=1.0, delta=1e-5, sample_rate=sample_rate, steps=10)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (1.0, 0.0), (1.0, 1.0)])
def test_calibration_checks_the_budget_before_searching(epsilon: float, delta: float) -> None:
    with pytest.raises(PrivacyBudgetError, match="DP (epsilon|delta) must"):
        calibrate_noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=0.5, steps=10)


def test_an_unreachable_budget_is_a_privacy_budget_error() -> None:
    # below the wide grid's floor log(1/delta)/1023 no noise level suffices
    with pytest.raises(PrivacyBudgetError, match="cannot reach epsilon=0.001"):
        calibrate_noise_multiplier(epsilon=0.001, delta=1e-5, sample_rate=1.0, steps=10)


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps"),
    [(0.5, 1.0, 5), (2.0, 0.01, 300), (4.0, 0.2, 20), (8.0, 1.0, 200)],
)
def test_calibrated_noise_never_spends_more_than_the_target_and_wastes_little(
    target: float, sample_rate: float, steps: int
) -> None:
    sigma = calibrate_noise_multiplier(epsilon=target, delta=1e-5, sample_rate=sample_rate, steps=steps)
    spent = epsilon_for(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=1e-5)
    assert spent <= target
    assert target - spent <= 0.01 + 1e-9  # the default tolerance of the search


def test_plan_dp_uses_the_configured_rate_or_derives_it_from_the_smallest_class() -> None:
    counts = torch.tensor([400, 0, 100])
    derived = plan_dp(DPConfig(epsilon=3.0), iterations=20, batch_real=25, class_counts=counts)
    assert derived.sample_rate == 0.25 and derived.steps == 20 and derived.accountant == "rdp"
    spent = epsilon_for(noise_multiplier=derived.noise_multiplier, sample_rate=0.25, steps=20, delta=1e-5)
    assert 3.0 - 0.01 <= spent <= 3.0  # calibrated for this rate and these steps, to the search's tolerance
    fixed = plan_dp(DPConfig(epsilon=3.0, sample_rate=0.05, clip_norm=0.3), iterations=20, batch_real=25,
                    class_counts=counts)
    assert fixed.sample_rate == 0.05 and fixed.clip_norm == 0.3
    assert fixed.noise_multiplier < derived.noise_multiplier  # a lower rate amplifies privacy: less noise
    spent = epsilon_for(noise_multiplier=fixed.noise_multiplier, sample_rate=0.05, steps=20, delta=1e-5)
    assert spent <= 3.0
    with pytest.raises(ConfigError, match=r"'dp.sample_rate' must lie in \[0, 1\]"):
        DPConfig(epsilon=3.0, sample_rate=1.5)
