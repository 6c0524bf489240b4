"""The accountant agrees with Opacus' independent computation; budgets are validated."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from fedcond.privacy.accounting import (
    RDP_ORDERS,
    PrivacyAccountant,
    PrivacyBudgetError,
    calibrate_noise_multiplier,
    check_budget,
    epsilon_for,
)

OPACUS_DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _opacus_rdp_epsilon(sigma: float, q: float, steps: int, delta: float, orders: list | None = None) -> float:
    orders = list(RDP_ORDERS) if orders is None else orders
    rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.01, 1000), (3.0, 0.2, 200), (8.0, 1.0, 50)])
def test_rdp_epsilon_matches_opacus_analysis(sigma: float, q: float, steps: int) -> None:
    acc = PrivacyAccountant("rdp")
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    assert acc.history == [(sigma, q, steps)]
    expected = _opacus_rdp_epsilon(sigma, q, steps, 1e-5)
    assert acc.epsilon(delta=1e-5) == pytest.approx(expected, rel=1e-9)
    assert epsilon_for(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5) == pytest.approx(expected)


def test_prv_epsilon_matches_opacus_prv_accountant() -> None:
    reference = PRVAccountant()
    for _ in range(100):
        reference.step(noise_multiplier=2.0, sample_rate=0.05)
    acc = PrivacyAccountant("prv")
    acc.step(noise_multiplier=2.0, sample_rate=0.05, steps=100)
    assert acc.epsilon(delta=1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 10.0])
def test_calibrated_sigma_spends_at_most_the_target(accountant: str, target: float) -> None:
    sigma = calibrate_noise_multiplier(epsilon=target, delta=1e-5, sample_rate=0.05, steps=200, accountant=accountant)
    spent = epsilon_for(noise_multiplier=sigma, sample_rate=0.05, steps=200, delta=1e-5, accountant=accountant)
    assert spent <= target
    assert spent > 0.9 * target  # tight, not wastefully noisy


def test_state_dict_round_trip_and_mechanism_check() -> None:
    acc = PrivacyAccountant("rdp")
    acc.step(noise_multiplier=1.5, sample_rate=0.1, steps=30)
    acc.step(noise_multiplier=2.0, sample_rate=0.1, steps=10)
    restored = PrivacyAccountant("rdp")
    restored.load_state_dict(acc.state_dict())
    assert restored.steps == 40
    assert restored.epsilon(delta=1e-5) == pytest.approx(acc.epsilon(delta=1e-5))
    with pytest.raises(PrivacyBudgetError, match="rdp"):
        PrivacyAccountant("prv").load_state_dict(acc.state_dict())


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"history": []}, "no 'mechanism'"),
        ({"mechanism": "rdp", "history": [[1.5, 0.1]]}, "holds a step"),
        ({"mechanism": "rdp", "history": [["x", 0.1, 3]]}, "holds a step"),
        ({"mechanism": "rdp", "history": [[0.0, 0.1, 3]]}, "holds a step"),  # no noise: no guarantee
        ({"mechanism": "rdp", "history": [[1.5, 1.5, 3]]}, "holds a step"),
        ({"mechanism": "rdp", "history": [[1.5, 0.1, -3]]}, "holds a step"),  # would lower the spend
        ({"mechanism": "rdp", "history": [[1.5, 0.1, 2.7]]}, "holds a step"),  # not truncated to 2
        ({"mechanism": "rdp", "history": [[1.5, 0.1, float("inf")]]}, "holds a step"),
        ({"mechanism": "rdp", "history": None}, "must be a list of steps"),
    ],
)
def test_a_malformed_accountant_state_is_refused_by_name(state: dict, match: str) -> None:
    accountant = PrivacyAccountant("rdp")
    with pytest.raises(PrivacyBudgetError, match=match):
        accountant.load_state_dict(state)
    assert accountant.steps == 0


@pytest.mark.parametrize(
    ("epsilon", "delta", "match"),
    [
        (0.0, 1e-5, "epsilon"),
        (-1.0, 1e-5, "epsilon"),
        (float("inf"), 1e-5, "epsilon"),
        (1.0, 0.0, "delta"),
        (1.0, 1.0, "delta"),
    ],
)
def test_invalid_budget_is_a_clear_error(epsilon: float, delta: float, match: str) -> None:
    with pytest.raises(PrivacyBudgetError, match=match):
        check_budget(epsilon=epsilon, delta=delta)


def test_unknown_accountant_is_named() -> None:
    with pytest.raises(PrivacyBudgetError, match="gdp2"):
        PrivacyAccountant("gdp2")


def test_wider_order_grid_reaches_small_budgets_without_warnings(recwarn: pytest.WarningsRecorder) -> None:
    # Opacus' default orders stop at 63, so epsilon cannot fall below log(1/delta)/62 = 0.186
    default = _opacus_rdp_epsilon(100.0, 1.0, 10, 1e-5, orders=OPACUS_DEFAULT_ORDERS)
    ours = epsilon_for(noise_multiplier=100.0, sample_rate=1.0, steps=10, delta=1e-5)
    assert ours == pytest.approx(_opacus_rdp_epsilon(100.0, 1.0, 10, 1e-5))
    assert ours < 0.9 * default
    with pytest.raises(ValueError, match="too low"):
        get_noise_multiplier(target_epsilon=0.1, target_delta=1e-5, sample_rate=1.0, steps=10)
    recwarn.clear()
    sigma = calibrate_noise_multiplier(epsilon=0.1, delta=1e-5, sample_rate=1.0, steps=10)
    assert 0.09 < epsilon_for(noise_multiplier=sigma, sample_rate=1.0, steps=10, delta=1e-5) <= 0.1
    assert not [w for w in recwarn if "largest alpha" in str(w.message)]
