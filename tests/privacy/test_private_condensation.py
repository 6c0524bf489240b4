"""PrivateCondensation: one DP run's settings, plan, accountant, ledger and certificate."""

from __future__ import annotations

import json

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import load_dataset
from fedcond.distill.dm import DistributionMatching
from fedcond.privacy.accounting import PrivacyAccountant, PrivacyBudgetError, epsilon_for
from fedcond.privacy.ledger import LedgerError, PrivacyLedger, data_source_digest
from fedcond.privacy.private_condensation import DP_META_KEYS, PrivateCondensation

TINY = {"ipc": 1, "init": "noise", "batch_real": 16, "dsa": False, "mixed_precision": False}
BUDGET = {"epsilon": 2.0, "delta": 1e-5}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _source(data_splits) -> str:
    """The ledger identity of the digits training split (the data every run here condenses)."""
    return data_source_digest(data_splits.train.images, data_splits.train.labels)


def _run(private: PrivateCondensation, config: DistillConfig, data, **options):
    """Condense ``data`` with DM drawing its real statistics from ``private``."""
    return private.condense(DistributionMatching(config, real_statistics=private.statistics), data, **options)


@pytest.mark.parametrize(
    ("dp", "distill", "match"),
    [
        ({"epsilon": 0}, {}, "epsilon"),
        ({"epsilon": -2}, {}, "epsilon"),
        ({"epsilon": 1, "delta": 0}, {}, "delta"),
        ({"epsilon": 1, "delta": 1.5}, {}, "delta"),
        ({"epsilon": 1, "clip_norm": 0}, {}, "clip"),
        ({"epsilon": 1, "accountant": "moments"}, {}, "accountant"),
        ({"epsilon": 1}, {"init": "real"}, "init='noise', got init='real'"),
        ({"epsilon": 1}, {"init": "kmeans"}, "init='noise', got init='kmeans'"),
        ({"epsilon": 1}, {"matching": "mmd"}, "matching='mean'"),
    ],
)
def test_bad_dp_settings_are_refused_by_name(dp: dict, distill: dict, match: str) -> None:
    config = DistillConfig(iterations=5, **{"init": "noise", **distill})
    with pytest.raises(ValueError, match=match):  # PrivacyBudgetError, or ConfigError when parsing the mapping
        PrivateCondensation(dp, distill=config, class_counts=torch.tensor([10, 10]))


def test_rounds_and_a_budget_without_a_ledger_are_refused() -> None:
    config = DistillConfig(iterations=5, init="noise")
    with pytest.raises(PrivacyBudgetError, match="rounds must be >= 1"):
        PrivateCondensation(BUDGET, distill=config, class_counts=torch.tensor([10, 10]), rounds=0)
    with pytest.raises(PrivacyBudgetError, match="needs a ledger"):
        PrivateCondensation(BUDGET, distill=config, class_counts=torch.tensor([10, 10]), budget_epsilon=5.0)


def test_a_run_writes_epsilon_delta_and_the_plan_into_the_set_meta(digits) -> None:
    config = DistillConfig(iterations=4, **TINY)
    private = PrivateCondensation(BUDGET, distill=config, class_counts=digits.train.class_counts())
    result = _run(private, config, digits.train)
    meta, plan = result.synthetic.meta, private.plan
    expected = epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=4, delta=1e-5)
    assert meta["epsilon"] == pytest.approx(expected) and 0.5 * 2.0 < meta["epsilon"] <= 2.0
    assert meta["delta"] == 1e-5
    assert (meta["dp_noise_multiplier"], meta["dp_sample_rate"], meta["dp_clip_norm"], meta["dp_accountant"]) == (
        plan.noise_multiplier, plan.sample_rate, plan.clip_norm, "rdp"
    )
    assert meta["dp_noise"] == "secret" and "lifetime_epsilon" not in meta
    assert set(DP_META_KEYS) - set(meta) == {"lifetime_epsilon", "lifetime_delta"}
    assert meta["method"] == "dm" and meta["iterations"] == 4  # the condenser's own metadata is kept
    assert private.state_dict()["history"] == [[plan.noise_multiplier, plan.sample_rate, 4]]
    with pytest.raises(PrivacyBudgetError, match="already ran"):  # one object, one accounted run
        _run(private, config, digits.train)


def test_rounds_restored_from_the_state_compose_like_one_accountant(digits) -> None:
    config = DistillConfig(iterations=3, **TINY)
    counts = digits.train.class_counts()
    state, spent = None, []
    for _ in range(2):  # two rounds planned against one budget: a new object per round, the state carried over
        private = PrivateCondensation(BUDGET, distill=config, class_counts=counts, rounds=2, state=state)
        spent.append(_run(private, config, digits.train).synthetic.meta["epsilon"])
        state = json.loads(json.dumps(private.state_dict()))  # what Context.state keeps: plain values
    plan = private.plan
    single = PrivacyAccountant("rdp")
    single.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=6)
    assert spent[1] == pytest.approx(single.epsilon(delta=1e-5))
    assert spent[0] < spent[1] <= 2.0 + 1e-9 and spent[1] > 0.9 * 2.0  # the budget is used, not wasted
    one_round = PrivateCondensation(BUDGET, distill=config, class_counts=counts)
    assert plan.noise_multiplier > one_round.plan.noise_multiplier  # the noise must last both rounds
    # a third round was not planned: refused when the object is built, before the condenser exists
    with pytest.raises(PrivacyBudgetError, match="over the budget"):
        PrivateCondensation(BUDGET, distill=config, class_counts=counts, rounds=2, state=state)
    with pytest.raises(PrivacyBudgetError, match="accountant state is for 'rdp'"):
        PrivateCondensation({**BUDGET, "accountant": "prv"}, distill=config, class_counts=counts, state=state)


def test_a_run_stopped_by_its_time_budget_is_charged_for_the_iterations_it_ran(digits, tmp_path) -> None:
    config = DistillConfig(iterations=20, time_budget=1e-9, **TINY)
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=_source(digits))
    private = PrivateCondensation(BUDGET, distill=config, class_counts=digits.train.class_counts(), ledger=ledger)
    result = _run(private, config, digits.train)
    plan = private.plan
    assert result.stopped_by_time_budget and result.iterations_run == 1
    one_step = epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=1, delta=1e-5)
    assert result.synthetic.meta["epsilon"] == pytest.approx(one_step) and one_step < 2.0
    assert sum(steps for _, _, steps in private.state_dict()["history"]) == 1
    assert ledger.runs[-1]["steps"] == 1


def test_the_lifetime_ledger_records_every_run_and_refuses_one_past_its_budget(digits, tmp_path) -> None:
    config = DistillConfig(iterations=2, **TINY)
    counts = digits.train.class_counts()
    path = tmp_path / "ledger.json"
    source = data_source_digest(digits.train.images, digits.train.labels)
    private = PrivateCondensation(BUDGET, distill=config, class_counts=counts,
                                  ledger=PrivacyLedger(path, source=source), budget_epsilon=3.0)
    meta = _run(private, config, digits.train).synthetic.meta
    on_disk = json.loads(path.read_text())
    assert len(on_disk["runs"]) == 1 and on_disk["runs"][0]["steps"] == 2
    assert meta["lifetime_epsilon"] == pytest.approx(on_disk["runs"][0]["epsilon_after"]) == pytest.approx(
        meta["epsilon"]
    )
    # a restarted node reopens the file: a second run of the same plan would pass a lifetime budget
    # just above what the first one spent
    with pytest.raises(LedgerError, match="budget is exhausted"):
        PrivateCondensation(BUDGET, distill=config, class_counts=counts,
                            ledger=PrivacyLedger(path, source=source), budget_epsilon=meta["epsilon"] * 1.05)
    assert len(json.loads(path.read_text())["runs"]) == 1


class _UntouchableData:
    """A data set whose every attribute access fails: proof that nothing read it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the real data was touched ({name})")


def test_a_refused_run_never_reaches_the_condenser_or_the_data(digits, tmp_path) -> None:
    config = DistillConfig(iterations=2, **TINY)
    counts = digits.train.class_counts()
    ledger = PrivacyLedger(tmp_path / "ledger.json", source="e" * 64)
    ledger.record(noise_multiplier=0.5, sample_rate=0.5, steps=50, delta=1e-5)  # an exhausted node
    built: list[str] = []
    with pytest.raises(LedgerError, match="budget is exhausted"):
        private = PrivateCondensation(BUDGET, distill=config, class_counts=counts, ledger=ledger, budget_epsilon=2.0)
        built.append("object")
        private.condense(DistributionMatching(config, real_statistics=private.statistics), _UntouchableData())
    assert built == []


def test_a_condenser_built_without_the_private_statistics_is_not_certified(digits, tmp_path) -> None:
    config = DistillConfig(iterations=2, **TINY)
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=_source(digits))
    private = PrivateCondensation(BUDGET, distill=config, class_counts=digits.train.class_counts(), ledger=ledger)
    with pytest.raises(PrivacyBudgetError, match="made 0 DP releases"):
        private.condense(DistributionMatching(config), digits.train)  # non-private DM: nothing to certify
    assert ledger.runs == [] and ledger.reserved == [] and private.state_dict()["history"] == []


class _WhileRunning:
    """A condenser that calls ``during`` while its run holds a reservation, then condenses with ``inner``."""

    def __init__(self, inner: DistributionMatching, during) -> None:  # noqa: ANN001 - a callable
        self.inner, self.during = inner, during

    def condense(self, data, **options):  # noqa: ANN001, ANN201 - the Condenser protocol
        self.during()
        return self.inner.condense(data, **options)


def test_two_runs_on_one_ledger_cannot_both_condense_past_its_budget(digits, tmp_path) -> None:
    # Prepare: a lifetime budget between one run's spend and two runs' spend
    config = DistillConfig(iterations=2, **TINY)
    counts = digits.train.class_counts()
    plan = PrivateCondensation(BUDGET, distill=config, class_counts=counts).plan
    one, two = (epsilon_for(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=n,
                            delta=1e-5) for n in (2, 4))
    path = tmp_path / "ledger.json"

    def build() -> PrivateCondensation:
        return PrivateCondensation(BUDGET, distill=config, class_counts=counts,
                                   ledger=PrivacyLedger(path, source=_source(digits)), budget_epsilon=(one + two) / 2)

    first, second = build(), build()  # both fit when built: nothing is spent or in flight yet
    refusals: list[str] = []

    def second_run() -> None:
        with pytest.raises(LedgerError, match="1 run\\(s\\) in flight") as refused:
            second.condense(DistributionMatching(config, real_statistics=second.statistics), _UntouchableData())
        refusals.append(str(refused.value))

    # Execute: the second run starts while the first one condenses
    result = first.condense(_WhileRunning(DistributionMatching(config, real_statistics=first.statistics),
                                          second_run), digits.train)

    # Assert: the second run was refused before it touched the data; the first one is recorded
    assert len(refusals) == 1 and result.synthetic.meta["lifetime_epsilon"] == pytest.approx(one)
    state = json.loads(path.read_text())
    assert len(state["runs"]) == 1 and state["reserved"] == []


class _Failing:
    def condense(self, data, **options):  # noqa: ANN001, ANN201 - the Condenser protocol
        raise RuntimeError("the device went away")


def test_a_run_that_fails_withdraws_its_reservation(digits, tmp_path) -> None:
    config = DistillConfig(iterations=2, **TINY)
    path = tmp_path / "ledger.json"
    private = PrivateCondensation(BUDGET, distill=config, class_counts=digits.train.class_counts(),
                                  ledger=PrivacyLedger(path, source=_source(digits)), budget_epsilon=3.0)
    assert not path.exists()  # built, not run: nothing reserved
    with pytest.raises(RuntimeError, match="went away"):
        private.condense(_Failing(), digits.train)
    state = json.loads(path.read_text())
    assert state["runs"] == [] and state["reserved"] == []


def test_a_set_started_from_real_images_is_not_certified(digits) -> None:
    private = PrivateCondensation(BUDGET, distill=DistillConfig(iterations=1, **TINY),
                                  class_counts=digits.train.class_counts())
    real_start = DistillConfig(iterations=1, **{**TINY, "init": "real"})
    with pytest.raises(PrivacyBudgetError, match="init='noise'"):
        _run(private, real_start, digits.train)


def test_a_given_start_is_refused_unless_declared_public(digits) -> None:
    config = DistillConfig(iterations=1, **TINY)
    counts = digits.train.class_counts()
    real = torch.stack([digits.train.images[digits.train.labels == c][0] for c in range(10)])
    private = PrivateCondensation(BUDGET, distill=config, class_counts=counts)
    with pytest.raises(PrivacyBudgetError, match="given start is published"):
        _run(private, config, digits.train, start=real)
    assert private.state_dict()["history"] == []  # nothing ran, nothing was charged
    # noise declared public (as the federated client's start is) is certified
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    result = _run(private, config, digits.train, start=noise, start_is_public=True)
    assert 0 < result.synthetic.meta["epsilon"] <= BUDGET["epsilon"]


@pytest.mark.parametrize(
    "counts",
    [
        lambda c: torch.cat([c[:3], torch.zeros(1, dtype=c.dtype), c[4:]]),  # a class's count zeroed
        lambda c: c[:5],  # five of ten classes
        lambda c: c + 1,  # one image more per class than the data holds
    ],
)
def test_class_counts_other_than_the_datas_are_refused(digits, counts) -> None:
    config = DistillConfig(iterations=1, **TINY)
    private = PrivateCondensation(BUDGET, distill=config, class_counts=counts(digits.train.class_counts()))
    with pytest.raises(PrivacyBudgetError, match="DP plan was calibrated for"):
        _run(private, config, digits.train)
    assert private.state_dict()["history"] == []


def test_a_ledger_of_another_data_source_is_refused(digits, tmp_path) -> None:
    config = DistillConfig(iterations=1, **TINY)
    subset = digits.train.subset(torch.arange(500))
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=_source(digits))  # the whole split's ledger
    private = PrivateCondensation(BUDGET, distill=config, class_counts=subset.class_counts(), ledger=ledger)
    with pytest.raises(LedgerError, match="belongs to another data source"):
        _run(private, config, subset)
    assert ledger.runs == [] and ledger.reserved == []


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        ({"budget_epsilon": -1.0}, "budget_epsilon must be a finite number > 0"),
        ({"budget_epsilon": float("inf")}, "budget_epsilon must be a finite number > 0"),
        ({"budget_delta": 1.5}, "budget_delta must lie strictly between 0 and 1"),
        ({"budget_delta": 0.0}, "budget_delta must lie strictly between 0 and 1"),
        ({"budget_epsilon": True}, "budget_epsilon must be a finite number > 0"),
    ],
)
def test_a_lifetime_budget_out_of_range_is_refused(digits, tmp_path, budget: dict, match: str) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=_source(digits))
    with pytest.raises(LedgerError, match=match):
        PrivateCondensation(BUDGET, distill=DistillConfig(iterations=1, **TINY),
                            class_counts=digits.train.class_counts(), ledger=ledger, **budget)


def test_the_set_records_the_delta_of_its_lifetime_epsilon(digits, tmp_path) -> None:
    config = DistillConfig(iterations=1, **TINY)
    ledger = PrivacyLedger(tmp_path / "ledger.json", source=_source(digits))
    private = PrivateCondensation(BUDGET, distill=config, class_counts=digits.train.class_counts(), ledger=ledger,
                                  budget_delta=1e-6)
    meta = _run(private, config, digits.train).synthetic.meta
    assert meta["lifetime_delta"] == 1e-6 and meta["lifetime_epsilon"] > meta["epsilon"]  # smaller delta


def test_a_delta_of_at_least_one_over_the_images_is_refused(digits) -> None:
    n = int(digits.train.class_counts().sum())
    config = DistillConfig(iterations=1, **TINY)
    with pytest.raises(PrivacyBudgetError, match=f"at least 1/N for the N={n} real images"):
        PrivateCondensation({"epsilon": 1.0, "delta": 1 / n}, distill=config, class_counts=digits.train.class_counts())
    PrivateCondensation({"epsilon": 1.0, "delta": 0.5 / n}, distill=config, class_counts=digits.train.class_counts())
