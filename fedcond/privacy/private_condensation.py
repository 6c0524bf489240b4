"""One differentially private condensation run on one data owner's data.

:class:`PrivateCondensation` is the whole DP set-up of a DM run, built once for every caller
(the ``fedcond distill`` command, the federated client, the benchmarks):

1. its constructor validates the settings (DP needs ``init="noise"`` and ``matching="mean"``),
   calibrates the plan (:func:`~fedcond.privacy.dp.plan_dp`), restores the accountant of the
   earlier runs on the same data and checks this run against both budgets (the run's and, with
   a :class:`~fedcond.privacy.ledger.PrivacyLedger`, the node's lifetime budget), all before
   any image is read;
2. :attr:`PrivateCondensation.statistics` is the DP ``RealStatistics`` to build the condenser
   with;
3. :meth:`PrivateCondensation.condense` reserves the run's spend in the ledger (checking the
   lifetime budget again, atomically with the runs in flight), runs the condenser, accounts the
   iterations it ran, records them in the ledger and returns the result whose set's metadata
   carries the spent ``epsilon`` and ``delta`` and the plan that spent them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fedcond.config import DistillConfig, DPConfig, parse_config
from fedcond.distill.dm import CondensationResult
from fedcond.distill.matching import check_matching
from fedcond.distill.synthetic import SyntheticSet
from fedcond.privacy.accounting import PrivacyAccountant, PrivacyBudgetError
from fedcond.privacy.dp import DPMeanStatistics, DPPlan, plan_dp
from fedcond.privacy.ledger import check_lifetime_budget, data_source_digest

if TYPE_CHECKING:
    from fedcond.data.registry import ArrayDataset
    from fedcond.distill.condenser import Condenser
    from fedcond.privacy.ledger import PrivacyLedger

__all__ = ["DP_META_KEYS", "PrivateCondensation"]

logger = logging.getLogger(__name__)

#: Keys :meth:`PrivateCondensation.condense` writes into the set's metadata (``lifetime_epsilon``
#: and ``lifetime_delta`` only with a ledger): the spent budget, the plan that spent it and how the noise was seeded.
DP_META_KEYS = (
    "epsilon",
    "delta",
    "dp_noise",
    "dp_noise_multiplier",
    "dp_sample_rate",
    "dp_clip_norm",
    "dp_accountant",
    "lifetime_epsilon",
    "lifetime_delta",
)


class PrivateCondensation:
    """A differentially private DM run: its plan, its accountant, its ledger and its certificate.

    Parameters
    ----------
    dp : DPConfig | Mapping
        Target budget, clip norm, sample rate (0: ``batch_real / smallest class``), accountant
        and noise seed (``None``: secret noise).
    distill : DistillConfig
        The run's settings: ``iterations`` steps are accounted for, ``batch_real`` sets the rate.
        DP requires ``init="noise"`` (a real-image start would be published) and
        ``matching="mean"`` (the noise covers class means, nothing else).
    class_counts : torch.Tensor
        Real images per class on this data owner (public under DP-DM, see ``docs/privacy.md``);
        :meth:`condense` refuses data whose counts differ (the noise is scaled by them).
    rounds : int
        How many such runs ``dp.epsilon`` must cover (federated multi-round: one run per round
        on the same data). Sigma is calibrated for ``rounds * iterations`` steps, so the composed
        epsilon after every round stays within ``dp.epsilon``.
    state : Mapping | None
        The accountant state of the earlier runs (:meth:`state_dict` of the previous round's
        object, e.g. from Flower's ``Context.state``); ``None`` for the first run.
    ledger : PrivacyLedger | None
        The node's persistent ledger, bound to the data :meth:`condense` is given (its
        ``source`` is that data's :func:`~fedcond.privacy.ledger.data_source_digest`). This run
        is checked against ``budget_epsilon`` here;
        :meth:`condense` checks it again and reserves its spend (so overlapping runs on one
        ledger cannot both pass a budget that only one fits), then records it.
    budget_epsilon : float | None
        The node's lifetime budget over every run in ``ledger`` (``None``: record, never refuse;
        otherwise a finite number > 0).
    budget_delta : float
        The delta at which ``ledger`` is read, strictly between 0 and 1.

    Attributes
    ----------
    plan : DPPlan
        The calibrated mechanism (noise multiplier, sample rate, clip norm, steps, accountant).
    statistics : DPMeanStatistics
        Pass it as ``real_statistics`` to the condenser that :meth:`condense` runs.

    Raises
    ------
    ConfigError
        For ``dp`` settings out of range (a mapping is parsed into :class:`~fedcond.config.DPConfig`,
        which checks epsilon, delta, clip norm, sample rate and accountant).
    PrivacyBudgetError
        For a budget the accountant cannot meet or a delta of at least 1 / (real images) (see
        :func:`~fedcond.privacy.dp.plan_dp`), ``rounds < 1``, ``init`` other than ``noise``,
        ``matching`` other than ``mean``, a ``budget_epsilon`` without a ``ledger``, a state of
        another accountant, or a run that would take the earlier runs past ``dp.epsilon``.
    LedgerError
        For a lifetime budget out of range, when this run would take ``ledger`` past
        ``budget_epsilon``, or the ledger composes with another accountant.

    Both are ``ValueError`` subclasses.

    Examples
    --------
    >>> from fedcond.data import load_dataset
    >>> from fedcond.distill import DistributionMatching
    >>> splits = load_dataset("digits")
    >>> config = DistillConfig(ipc=1, iterations=2, init="noise", batch_real=16, dsa=False)
    >>> private = PrivateCondensation(DPConfig(epsilon=2.0), distill=config,
    ...                               class_counts=splits.train.class_counts())
    >>> engine = DistributionMatching(config, real_statistics=private.statistics)
    >>> result = private.condense(engine, splits.train)
    >>> 0 < result.synthetic.meta["epsilon"] <= 2.0
    True
    """

    def __init__(
        self,
        dp: DPConfig | Mapping[str, Any],
        *,
        distill: DistillConfig,
        class_counts: torch.Tensor,
        rounds: int = 1,
        state: Mapping[str, Any] | None = None,
        ledger: PrivacyLedger | None = None,
        budget_epsilon: float | None = None,
        budget_delta: float = 1e-5,
    ) -> None:
        config = dp if isinstance(dp, DPConfig) else parse_config(DPConfig, dp)
        if rounds < 1:
            raise PrivacyBudgetError(f"DP rounds must be >= 1, got {rounds}")
        try:
            check_matching(distill.matching, private=True)
        except ValueError as exc:
            raise PrivacyBudgetError(str(exc)) from exc
        if distill.init != "noise":
            raise PrivacyBudgetError(
                f"DP requires init='noise', got init={distill.init!r}: a start made from real images "
                "is published with the set, which no noise protects"
            )
        if budget_epsilon is not None and ledger is None:
            raise PrivacyBudgetError("a lifetime budget_epsilon needs a ledger that remembers the earlier runs")
        check_lifetime_budget(budget_epsilon=budget_epsilon, budget_delta=budget_delta)
        self._class_counts = torch.as_tensor(class_counts).detach().clone()
        self._iterations = distill.iterations
        self._rounds = rounds
        self._ledger = ledger
        self._budget_epsilon = budget_epsilon
        self._budget_delta = budget_delta
        self._started = False
        self.plan: DPPlan = plan_dp(
            config, iterations=distill.iterations * rounds, batch_real=distill.batch_real, class_counts=class_counts
        )
        # one run's releases: the certificate of condense() counts one run (plus the earlier ones)
        self.statistics = DPMeanStatistics(
            self.plan, class_counts=class_counts, noise_seed=config.noise_seed, max_steps=distill.iterations
        )
        self._accountant = PrivacyAccountant(self.plan.accountant)
        if state is not None:
            self.load_state_dict(state)
        # refuse a run past the lifetime budget before any image is read; condense() reserves
        # the spend, so an object built and never run holds no reservation
        self._check_ledger(reserve=False)
        plan = self.plan
        logger.info(
            "DP-DM: epsilon=%g delta=%g q=%.4f sigma=%.3f C=%g over %d iterations (%s, %s noise)",
            plan.epsilon, plan.delta, plan.sample_rate, plan.noise_multiplier, plan.clip_norm, plan.steps,
            plan.accountant, self.statistics.noise,
        )
        if config.noise_seed is not None:
            logger.warning(
                "DP-DM noise seeded with dp.noise_seed: reproducible, but the (epsilon, delta) guarantee holds "
                "only while that seed stays secret"
            )

    # ------------------------------------------------------------------------- the run accountant
    def state_dict(self) -> dict[str, Any]:
        """The run accountant: every earlier run on this data, and this one once it is condensed.

        JSON-serialisable (``PrivacyAccountant.state_dict``); the next run's ``state``.
        """
        return self._accountant.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the accountant of the earlier runs and check that this run still fits the budget.

        Raises
        ------
        PrivacyBudgetError
            Once the run has started, for a state of another accountant, or when this run would
            take the earlier ones past ``dp.epsilon`` (more runs than ``rounds``).
        """
        if self._started:
            raise PrivacyBudgetError("the earlier runs' state must be loaded before this run starts")
        plan = self.plan
        accountant = PrivacyAccountant(plan.accountant)
        accountant.load_state_dict(state)
        projected = copy.deepcopy(accountant)
        projected.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=self._iterations)
        if projected.epsilon(delta=plan.delta) > plan.epsilon + 1e-9:
            raise PrivacyBudgetError(
                f"this run would spend epsilon {projected.epsilon(delta=plan.delta):.4f} in total, over the "
                f"budget {plan.epsilon} (already spent {accountant.epsilon(delta=plan.delta):.4f} in "
                f"{accountant.steps} steps; the budget was planned for {self._rounds} run(s))"
            )
        self._accountant = accountant

    def _check_ledger(self, *, reserve: bool) -> None:
        """Check this run against the lifetime budget (``reserve``: and reserve its spend)."""
        if self._ledger is None:
            return
        self._ledger.check(
            noise_multiplier=self.plan.noise_multiplier,
            sample_rate=self.plan.sample_rate,
            steps=self._iterations,
            mechanism=self.plan.accountant,
            budget_epsilon=self._budget_epsilon,
            budget_delta=self._budget_delta,
            reserve=reserve,
        )

    # ------------------------------------------------------------------------- the run
    def condense(
        self, condenser: Condenser, data: ArrayDataset, *, start_is_public: bool = False, **options: Any
    ) -> CondensationResult:
        """Run ``condenser`` on ``data`` and certify the result.

        With a ledger, the run's spend is first reserved in it (the lifetime budget is checked
        again against the recorded runs and those in flight). The iterations the run made (a
        time budget may stop it early; a resumed run adds those before its checkpoint) are added
        to the run accountant and recorded in the ledger, which settles the reservation, and the
        set's metadata gains :data:`DP_META_KEYS`. A run that fails before its record withdraws
        its reservation: no set leaves, and a resumed run is charged for the iterations before
        its checkpoint.

        Parameters
        ----------
        condenser : Condenser
            Built with ``real_statistics=self.statistics``.
        data : ArrayDataset
            The data owner's real training data: its class counts must be the ``class_counts``
            the plan was calibrated with, and with a ledger it must be the ledger's data source.
        start_is_public : bool
            Allow a ``start`` in ``options``. The start is published with the set and no noise
            protects it, so pass ``True`` only for a start that reveals nothing about ``data``:
            data-independent noise, or an earlier DP output of the same data (post-processing).
        **options
            Passed to ``condenser.condense`` (``start``, ``checkpoint_path``, ``resume`` ...).

        Returns
        -------
        CondensationResult
            ``condenser``'s result, its set carrying ``epsilon`` (cumulative over the earlier runs),
            ``delta``, the plan and, with a ledger, ``lifetime_epsilon``.

        Raises
        ------
        PrivacyBudgetError
            When this object already ran, when ``data``'s class counts differ from the plan's,
            when a ``start`` is given without ``start_is_public`` (nothing is condensed), when the
            condenser did not draw its real statistics from :attr:`statistics` (one release per
            iteration), when the set was started from real images, or when the spent epsilon
            would exceed the request.
        LedgerError
            When ``data`` is not the ledger's data source, when the runs recorded and in flight
            leave no room for this one in the lifetime budget (nothing is condensed), or the
            ledger cannot be written.
        """
        if options.get("start") is not None and not start_is_public:
            raise PrivacyBudgetError(
                "a given start is published with the set and no noise protects it: DP condenses from noise "
                "(pass start_is_public=True only for data-independent noise or an earlier DP output of this data)"
            )
        if self._started:
            raise PrivacyBudgetError(
                "this PrivateCondensation already ran: it accounts one run; build a new one with its state_dict()"
            )
        self._started = True
        self._check_ledger(reserve=True)  # a refused run never reads the data
        try:
            self._check_data(data)
            result = condenser.condense(data, **options)
            return self._certify(result)
        except BaseException:
            if self._ledger is not None:
                try:
                    self._ledger.cancel_reservation()  # a no-op once _certify recorded the run
                except PrivacyBudgetError as exc:
                    # the reservation stays charged: the budget errs towards privacy
                    logger.warning("could not withdraw the failed run's DP ledger reservation: %s", exc)
            raise

    def _check_data(self, data: ArrayDataset) -> None:
        """Refuse data other than the plan's (class counts) and the ledger's (data source)."""
        counts = data.class_counts()
        if counts.shape != self._class_counts.shape or not torch.equal(counts, self._class_counts.to(counts.dtype)):
            raise PrivacyBudgetError(
                f"the data holds {counts.tolist()} images per class, the DP plan was calibrated for "
                f"class_counts={self._class_counts.tolist()}: build PrivateCondensation with "
                "class_counts=data.class_counts() (the noise is scaled by them)"
            )
        if self._ledger is not None:
            self._ledger.check_source(data_source_digest(data.images, data.labels))

    def _certify(self, result: CondensationResult) -> CondensationResult:
        plan = self.plan
        if result.synthetic.meta.get("init", "noise") != "noise":
            raise PrivacyBudgetError(
                "the synthetic set was initialised from real images, which it then publishes: no DP "
                "guarantee holds (DP requires init='noise')"
            )
        released = self.statistics.steps
        if released != len(result.losses):
            raise PrivacyBudgetError(
                f"the condenser ran {len(result.losses)} iterations and made {released} DP releases: build it "
                "with real_statistics=PrivateCondensation.statistics (one release per iteration)"
            )
        # every iteration run is one application of the mechanism, including those run before a
        # resume (which this object never saw); a run stopped by its time budget ran fewer than
        # ``iterations`` and is charged for those it ran (sigma stays calibrated for all)
        steps = result.iterations_run
        if steps > self._iterations:
            raise PrivacyBudgetError(f"the run reports {steps} iterations, this run accounts {self._iterations}")
        self._accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=steps)
        epsilon = self._accountant.epsilon(delta=plan.delta)
        if epsilon > plan.epsilon + 1e-9:
            raise PrivacyBudgetError(f"spent epsilon {epsilon:.4f} exceeds the requested {plan.epsilon}")
        meta: dict[str, Any] = {
            "epsilon": epsilon,
            "delta": plan.delta,
            "dp_noise": self.statistics.noise,
            "dp_noise_multiplier": plan.noise_multiplier,
            "dp_sample_rate": plan.sample_rate,
            "dp_clip_norm": plan.clip_norm,
            "dp_accountant": plan.accountant,
        }
        if self._ledger is not None:
            meta["lifetime_epsilon"] = self._ledger.record(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=steps,
                delta=self._budget_delta,
            )
            meta["lifetime_delta"] = self._budget_delta
        synthetic = result.synthetic
        certified = SyntheticSet(synthetic.images, synthetic.labels, {**synthetic.meta, **meta})
        return dataclasses.replace(result, synthetic=certified)
