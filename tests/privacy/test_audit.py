"""The audit's verdict (:func:`fedcond.privacy.audit.decide`) on hand-made test results."""

from __future__ import annotations

import pytest
import torch

from fedcond.data.registry import load_dataset
from fedcond.privacy.audit import LEAKS, NO_EVIDENCE, decide
from fedcond.privacy.membership import MembershipResult, attack_result
from fedcond.privacy.recoverability import RecoverabilityResult, recoverability


@pytest.fixture(scope="module")
def no_copies() -> RecoverabilityResult:
    """Pixel-space recoverability of pure noise: no near-copies, nothing for the verdict."""
    digits = load_dataset("digits")
    noise = torch.randn(50, *digits.spec.image_shape, generator=torch.Generator().manual_seed(3))
    return recoverability(noise, digits.train.images, digits.test.images)


def _membership(members: torch.Tensor, nonmembers: torch.Tensor) -> MembershipResult:
    return MembershipResult({"loss": attack_result("loss", members, nonmembers)})


def test_a_separating_membership_attack_alone_makes_the_verdict_leak(no_copies: RecoverabilityResult) -> None:
    g = torch.Generator().manual_seed(0)
    # higher scores are more member-like: every member outscores every non-member
    members = 1.0 + 0.1 * torch.rand(300, generator=g)
    nonmembers = 0.1 * torch.rand(300, generator=g)
    decision = decide(no_copies, _membership(members, nonmembers), significance=0.05)
    assert decision.verdict == LEAKS
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("loss attack")
    assert decision.auc_lower["loss"] > 0.9
    # Bonferroni over the match-count and ratio tests of one space and the one attack
    assert decision.alpha == pytest.approx(0.05 / 3)


@pytest.mark.parametrize("shift", [0.0, 0.07])
def test_a_non_separating_membership_attack_does_not_leak(no_copies: RecoverabilityResult, shift: float) -> None:
    """Chance-level scores, and a slight edge (AUC above 0.5) whose lower bound stays below it."""
    g = torch.Generator().manual_seed(0)
    members, nonmembers = torch.rand(300, generator=g) + shift, torch.rand(300, generator=g)
    target = _membership(members, nonmembers)
    if shift:
        assert target.attacks["loss"].auc > 0.52
    decision = decide(no_copies, target, significance=0.05)
    assert decision.verdict == NO_EVIDENCE
    assert decision.reasons == []
    assert decision.auc_lower["loss"] < 0.5


def test_reasons_read_as_english_even_when_a_p_value_underflows() -> None:
    from fedcond.privacy.audit import _ordinal, _p_value

    assert [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "112th"
    ]
    assert _p_value(0.0) == "p<1e-300" and _p_value(0.0031) == "p=0.0031"
