"""Membership inference: chance on a model that never saw the members, success on an overfit one."""

from __future__ import annotations

import pytest
import torch

from fedcond.data.registry import load_dataset
from fedcond.models import get_model
from fedcond.privacy.membership import (
    MembershipResult,
    attack_result,
    lira_scores,
    logit_confidence,
    membership_inference,
    roc_curve,
    tpr_at_fpr,
    train_shadow_models,
)
from fedcond.training import train_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(images, labels, generator, epochs=60):
    model = get_model("mlp", load_dataset("digits").spec, generator=generator)
    return train_model(
        model, images, labels, epochs=epochs, lr=0.05, weight_decay=0.0, batch_size=64, generator=generator
    )


def test_roc_helpers_on_known_scores() -> None:
    perfect = roc_curve(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]))
    assert perfect.auc == 1.0
    assert tpr_at_fpr(perfect, fpr=0.0) == 1.0
    tied = attack_result("x", torch.zeros(50), torch.zeros(50))
    assert tied.auc == 0.5
    assert tied.tpr_at_1pct_fpr == 0.0


def test_membership_result_round_trips_through_json() -> None:
    import json

    generator = torch.Generator().manual_seed(0)
    members, nonmembers = torch.randn(40, generator=generator) + 0.5, torch.randn(60, generator=generator)
    result = MembershipResult(
        {"loss": attack_result("loss", members, nonmembers), "lira": attack_result("lira", -members, nonmembers)}
    )
    back = MembershipResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.metrics("x_") == result.metrics("x_")
    assert back.strongest.attack == result.strongest.attack
    for name, attack in result.attacks.items():
        assert (back.attacks[name].curve.fpr == attack.curve.fpr).all()
        assert (back.attacks[name].curve.tpr == attack.curve.tpr).all()
        assert (back.attacks[name].members, back.attacks[name].nonmembers) == (40, 60)


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"attacks": {}},
        {"attacks": {"loss": {"attack": "loss"}}},
        {"attacks": {"loss": {"attack": "loss", "auc": 1.5, "auc_lower": 0.4, "tpr_at_1pct_fpr": 0.0,
                              "tpr_at_01pct_fpr": 0.0, "fpr": [0.0, 1.0], "tpr": [0.0, 1.0],
                              "members": 1, "nonmembers": 1}}},
        {"attacks": {"loss": {"attack": "loss", "auc": 0.5, "auc_lower": 0.4, "tpr_at_1pct_fpr": 0.0,
                              "tpr_at_01pct_fpr": 0.0, "fpr": [0.0], "tpr": [0.0, 1.0],
                              "members": 1, "nonmembers": 1}}},
    ],
)
def test_membership_result_from_dict_refuses_what_is_not_one(broken) -> None:
    with pytest.raises(ValueError):
        MembershipResult.from_dict(broken)


def test_non_finite_scores_rank_instead_of_crashing() -> None:
    nan = float("nan")
    # a member scored NaN (diverged logits) ranks below everything; +-inf stay extreme
    curve = roc_curve(torch.tensor([nan, float("inf"), 5.0]), torch.tensor([float("-inf"), 1.0, 2.0]))
    # pairs (member > non-member): inf beats 3, 5 beats 3, NaN beats none -> 6 of 9
    assert curve.auc == pytest.approx(6 / 9)
    assert roc_curve(torch.tensor([nan, nan]), torch.tensor([nan, nan])).auc == 0.5


def test_logit_confidence_is_log_odds_of_the_true_class() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0, 0]
    assert float(logit_confidence(logits, torch.tensor([0]))) == pytest.approx(float(torch.log(p / (1 - p))), rel=1e-5)
    z = lira_scores(torch.tensor([1.0, 5.0]), torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
    assert float(z[0]) == pytest.approx(0.0, abs=1e-6)


def test_lira_pools_the_variance_over_examples_with_few_shadow_models() -> None:
    # example 0's shadows vary (var 2), example 1's do not (var 0): pooled variance is 1
    shadow = torch.tensor([[0.0, 5.0], [2.0, 5.0]])
    z = lira_scores(torch.tensor([3.0, 6.0]), shadow)
    assert z.tolist() == pytest.approx([2.0, 1.0])
    # with enough shadow models each example keeps its own variance
    many = torch.cat([torch.zeros(32, 1), 2 * torch.ones(32, 1)]).expand(64, 2).clone()
    many[:, 1] = torch.linspace(4.0, 6.0, 64)
    z = lira_scores(torch.tensor([3.0, 6.0]), many)
    assert float(z[0]) == pytest.approx(2.0 / float(many[:, 0].std()))
    assert float(z[1]) == pytest.approx(1.0 / float(many[:, 1].std()))


def test_pooled_lira_finds_a_shift_the_per_example_variance_misses() -> None:
    # 1000 members shifted by one OUT standard deviation, 2 shadow models: z-scores from a
    # 1-degree-of-freedom variance are heavy-tailed and bury the shift at low FPR
    g = torch.Generator().manual_seed(0)
    n, k = 1000, 2
    mu = torch.randn(2 * n, generator=g) * 3
    shadow = mu + torch.randn(k, 2 * n, generator=g)
    target = mu + torch.randn(2 * n, generator=g)
    target[:n] += 1.0
    pooled = lira_scores(target, shadow)
    per_example = lira_scores(target, shadow, pooled_variance_below=0)
    tpr = {
        name: tpr_at_fpr(roc_curve(s[:n], s[n:]), fpr=0.01) for name, s in (("pooled", pooled), ("own", per_example))
    }
    assert tpr["pooled"] > tpr["own"] + 0.02


def test_attack_on_a_model_that_never_saw_the_members_is_chance(digits) -> None:
    g = torch.Generator().manual_seed(0)
    train = digits.train
    target = _train(train.images[:600], train.labels[:600], g)
    unseen_members = (train.images[600:900], train.labels[600:900])  # "members" it never saw
    nonmembers = (digits.test.images[:300], digits.test.labels[:300])
    shadows = train_shadow_models(
        (train.images[900:], train.labels[900:]), count=2, size=300, train=_train, generator=g
    )
    result = membership_inference(target, unseen_members, nonmembers, shadow_models=shadows)
    for attack in result.attacks.values():
        assert attack.auc == pytest.approx(0.5, abs=0.08), attack.attack
        assert attack.auc_lower < 0.5


def test_attack_detects_members_of_an_overfit_model(digits) -> None:
    g = torch.Generator().manual_seed(1)
    train = digits.train
    # tiny training set, no weight decay: memorised, the attack must be able to succeed
    target = _train(train.images[:100], train.labels[:100], g, epochs=150)
    members = (train.images[:100], train.labels[:100])
    nonmembers = (digits.test.images[:100], digits.test.labels[:100])
    shadows = train_shadow_models(
        (train.images[500:], train.labels[500:]), count=2, size=100, train=_train, generator=g
    )
    result = membership_inference(target, members, nonmembers, shadow_models=shadows)
    assert result.attacks["loss"].auc > 0.6
    # LiRA must score members above non-members too (about 0.71 here): an inverted z-score
    # or swapped member/non-member scores would give about 0.29
    assert result.attacks["lira"].auc > 0.6
    assert result.strongest.auc_lower > 0.5
