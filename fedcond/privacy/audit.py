"""The whole privacy audit of a synthetic set: recoverability + membership inference + verdict.

Data roles (see ``docs/privacy.md``):

* **members**: the dataset's train split, the real data the synthetic set was condensed from;
* **non-members**: the test split (disjoint, same distribution), split once at random into a
  *calibration* half (sets the nearest-neighbour threshold; also a source of shadow data) and a
  *reference* half (nearest non-member; the non-member candidates of the attacks).

Attacked models: a network trained on the synthetic set (the target), and, as the reference
point, the same recipe trained on ``reference_size`` real training images. Offline-LiRA shadow
models use the same recipe on real data disjoint from every candidate.

The verdict is ``"leaks"`` when a test rejects "no leakage" at the configured significance
(Bonferroni over the tests run): more nearest-neighbour matches than the calibrated rate allows
(the count's exact beta-binomial null), synthetic images closer to the training data relative to held-out data than
fresh samples are (Mann-Whitney test on the nearest-neighbour distance ratios), or an attack AUC
whose lower confidence bound exceeds 0.5. Otherwise it is
``"no evidence of leakage at this attack strength"``. It is never "private": an audit can show
leakage, never its absence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy import stats

from fedcond.config import AuditConfig
from fedcond.data.registry import ArrayDataset, DatasetSpec, DatasetSplits
from fedcond.distill.evaluate import augment_for
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError
from fedcond.models import get_model
from fedcond.privacy.membership import (
    MembershipResult,
    auc_lower_bound,
    membership_inference,
    train_shadow_models,
)
from fedcond.privacy.recoverability import RecoverabilityResult, recoverability
from fedcond.training import accuracy, train_model

__all__ = [
    "LEAKS",
    "NO_EVIDENCE",
    "AuditReport",
    "Verdict",
    "check_compatible",
    "decide",
    "run_audit",
    "verdict_for",
]

logger = logging.getLogger(__name__)

LEAKS = "leaks"
NO_EVIDENCE = "no evidence of leakage at this attack strength"

#: (images, labels)
Pair = tuple[torch.Tensor, torch.Tensor]


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _p_value(p: float) -> str:
    """``p=0.0031``, or ``p<1e-300`` where the float underflowed to 0."""
    return f"p={p:.2g}" if p > 0 else "p<1e-300"


def check_compatible(synthetic: SyntheticSet, spec: DatasetSpec, *, tolerance: float = 1e-4) -> None:
    """Refuse a synthetic set made for another dataset or normalisation.

    Raises
    ------
    SyntheticSetError
        If the image shape, label range, recorded dataset, class count or normalisation
        mean/std differ.
    """
    meta = synthetic.meta
    name = meta.get("dataset")
    if name is not None and name != spec.name:  # before the shape check: it says what to do
        raise SyntheticSetError(
            f"the synthetic set was made from {name!r}, the audit dataset is {spec.name!r} "
            f"(audit it with --dataset {name})"
        )
    recorded = meta.get("num_classes")
    if recorded is not None and recorded != spec.num_classes:
        raise SyntheticSetError(
            f"the synthetic set records num_classes {recorded!r:.40}, {spec.name} has {spec.num_classes}"
        )
    synthetic.validate(num_classes=spec.num_classes, image_shape=spec.image_shape)
    if len(synthetic) == 0:
        raise SyntheticSetError("the synthetic set holds no images: there is nothing to audit")
    for key, expected in (("mean", spec.mean), ("std", spec.std)):
        got = meta.get(key)
        if got is None:
            continue
        got_list = [float(v) for v in (got if isinstance(got, (list, tuple)) else [got])]
        if len(got_list) != len(expected) or any(
            abs(a - b) > tolerance for a, b in zip(got_list, expected, strict=True)
        ):
            raise SyntheticSetError(
                f"the synthetic set's normalisation {key} {got_list} does not match {spec.name}'s {list(expected)}"
            )


@dataclass(frozen=True)
class AuditReport:
    """Everything the audit measured, and its verdict."""

    recoverability: RecoverabilityResult
    target: MembershipResult
    reference: MembershipResult
    verdict: str
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-friendly metrics (the ``fedcond audit`` metrics.json keys)."""
        strongest = self.target.strongest
        out: dict[str, Any] = {
            **self.recoverability.metrics(),
            # images audited: a multi-formation set's decoded tiles, factor^2 per stored image
            "audited_images": self.recoverability.num_synthetic,
            "mia_auc": strongest.auc,
            "mia_tpr_at_1pct_fpr": strongest.tpr_at_1pct_fpr,
            "mia_tpr_at_01pct_fpr": strongest.tpr_at_01pct_fpr,
            "mia_strongest_attack": strongest.attack,
            **self.target.metrics("mia_"),
            "reference_mia_auc": self.reference.strongest.auc,
            "reference_mia_tpr_at_1pct_fpr": self.reference.strongest.tpr_at_1pct_fpr,
            **self.reference.metrics("reference_mia_"),
            "verdict": self.verdict,
            "verdict_reasons": self.reasons,
        }
        out.update(self.details)
        return out


@dataclass(frozen=True)
class Verdict:
    """The verdict, why, and the corrected level it was reached at.

    Attributes
    ----------
    verdict : str
        :data:`LEAKS` or :data:`NO_EVIDENCE`.
    reasons : list[str]
        One line per test that rejected "no leakage".
    alpha : float
        Per-test one-sided level: the audit's significance divided by the number of tests.
    z : float
        The normal quantile ``1 - alpha`` behind every AUC lower bound used here.
    auc_lower : dict[str, float]
        Each attack's AUC lower bound at ``z`` (the bound the verdict compared with 0.5).
    """

    verdict: str
    reasons: list[str]
    alpha: float
    z: float
    auc_lower: dict[str, float]

    def metrics(self) -> dict[str, Any]:
        """``verdict*`` keys, and every ``mia_<attack>_auc_lower`` at the verdict's level."""
        return {
            "verdict": self.verdict,
            "verdict_reasons": self.reasons,
            "verdict_test_level": self.alpha,
            "verdict_z": self.z,
            **{f"mia_{name}_auc_lower": lower for name, lower in self.auc_lower.items()},
        }


def decide(recovery: RecoverabilityResult, target: MembershipResult, *, significance: float) -> Verdict:
    """One-sided tests, Bonferroni-corrected over all tests, and the verdict they give.

    Per audited space: the nearest-neighbour match count against its exact null distribution
    (:func:`~fedcond.privacy.recoverability.match_count_pvalue`) and the Mann-Whitney test of
    the distance ratios; per attack: the AUC's lower confidence bound against 0.5.
    """
    tests = 2 * len(recovery.spaces) + len(target.attacks)
    alpha = significance / tests
    z = float(stats.norm.ppf(1 - alpha))
    reasons: list[str] = []
    for name, space in recovery.spaces.items():
        k, n, p = space.matches, space.to_train.distances.numel(), space.match_pvalue
        if p < alpha:
            reasons.append(
                f"{name} space: {k}/{n} synthetic images are closer to a training image than the "
                f"{_ordinal(space.threshold_rank)} closest of {space.calibration_size} fresh samples "
                f"(beta-binomial {_p_value(p)})"
            )
        if space.nn_ratio_pvalue < alpha:
            reasons.append(
                f"{name} space: synthetic images sit closer to training than to held-out images, relative "
                f"to fresh samples (median ratio {space.nn_distance_ratio:.2f} vs {space.nn_distance_ratio_fresh:.2f}, "
                f"Mann-Whitney {_p_value(space.nn_ratio_pvalue)})"
            )
    bounds: dict[str, float] = {}
    for name, attack in target.attacks.items():
        lower = auc_lower_bound(attack.auc, members=attack.members, nonmembers=attack.nonmembers, z=z)
        bounds[name] = lower
        if lower > 0.5:
            reasons.append(f"{name} attack: AUC {attack.auc:.3f} (lower bound {lower:.3f} > 0.5)")
    return Verdict(LEAKS if reasons else NO_EVIDENCE, reasons, alpha, z, bounds)


def verdict_for(
    recovery: RecoverabilityResult, target: MembershipResult, *, significance: float
) -> tuple[str, list[str]]:
    """``(verdict, reasons)`` of :func:`decide`."""
    decision = decide(recovery, target, significance=significance)
    return decision.verdict, decision.reasons


def _trainer(config: AuditConfig, spec: DatasetSpec, device: torch.device | str) -> Callable[..., torch.nn.Module]:
    augment = augment_for(spec)

    def train(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.nn.Module:
        model = get_model(config.model, spec, generator=generator)
        return train_model(
            model, images, labels, epochs=config.target_epochs, augment=augment, generator=generator, device=device
        )

    return train


def run_audit(
    synthetic: SyntheticSet,
    splits: DatasetSplits,
    config: AuditConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    status: Callable[[str], None] | None = None,
    reference: tuple[MembershipResult, float] | None = None,
) -> AuditReport:
    """Audit ``synthetic`` (condensed from ``splits.train``) against ``splits.test``.

    Parameters
    ----------
    synthetic : SyntheticSet
        The set under audit; must match the dataset's shape and normalisation.
    splits : DatasetSplits
        ``train`` = members, ``test`` = held-out non-members.
    config : AuditConfig | None
        Attack strength and calibration (defaults when ``None``).
    device : torch.device | str
        Where the attacked, reference and shadow models train and the embeddings are computed.
    status : callable | None
        Receives a short message before each stage (the CLI shows it).
    reference : (MembershipResult, accuracy) | None
        The real-data reference attack of an earlier audit with the same dataset and config
        (``report.reference, report.details["reference_accuracy"]``): reused instead of
        retraining the reference and its shadow models.

    Raises
    ------
    SyntheticSetError
        For a set that does not match the dataset.
    CalibrationError
        For too few held-out images.
    """
    config = config or AuditConfig()
    _check_audit_config(config)
    spec = splits.spec
    check_compatible(synthetic, spec)
    # a multi-formation set is audited as the tiles a network trains on (SyntheticSet.decoded)
    synthetic = synthetic.decoded()
    say = status or (lambda message: logger.info(message))
    train, test = splits.train, splits.test
    generator = torch.Generator().manual_seed(config.seed)

    say("nearest neighbours (pixel and feature space)" if config.feature_space else "nearest neighbours (pixel space)")
    features = None
    if config.feature_space:
        net = get_model("convnet", spec, generator=torch.Generator().manual_seed(config.seed + 1))
        net.eval()
        features = net.embed
    recovery = recoverability(
        synthetic.images,
        train.images,
        test.images,
        quantile=config.calibration_quantile,
        features=features,
        generator=generator,
    )
    roles = _candidate_roles(splits, recovery.reference_indices, config=config, generator=generator)
    train_fn = _trainer(config, spec, device)

    say(f"membership inference on a model trained on the synthetic set ({config.shadow_models} shadow models)")
    target_model = train_fn(synthetic.images, synthetic.labels, generator)
    shadows = train_shadow_models(
        roles.pool, count=config.shadow_models, size=len(synthetic), train=train_fn, generator=generator
    )
    target = membership_inference(target_model, roles.members, roles.nonmembers, shadow_models=shadows, device=device)

    holdout = ArrayDataset(roles.nonmembers[0], roles.nonmembers[1], spec)
    if reference is None:
        say(f"reference: the same attacks on a model trained on {roles.real_subset.numel()} real images")
        reference_result, reference_accuracy = _reference_attack(
            roles, train, holdout, config=config, train_fn=train_fn, generator=generator, device=device
        )
    else:
        reference_result, reference_accuracy = reference

    decision = decide(recovery, target, significance=config.significance)
    m = roles.members[0].shape[0]
    details = {
        "num_synthetic": len(synthetic),
        "num_members": int(m),
        "num_nonmembers": int(roles.nonmembers[0].shape[0]),
        "num_train": len(train),
        "num_held_out": len(test),
        "num_calibration": roles.num_calibration,
        "shadow_models": config.shadow_models,
        "target_epochs": config.target_epochs,
        "reference_size": int(roles.real_subset.numel()),
        "target_accuracy": accuracy(target_model, holdout, device=device),
        "reference_accuracy": reference_accuracy,
        "significance": config.significance,
        "held_out_split": "test split: random halves = calibration / non-member reference",
        # the target's mia_<attack>_auc_lower at the verdict's corrected level, and that level
        **{k: v for k, v in decision.metrics().items() if k not in ("verdict", "verdict_reasons")},
    }
    if not math.isfinite(recovery.nn_distance_ratio):
        logger.warning("nearest-neighbour distance ratio is not finite (a zero held-out distance)")
    return AuditReport(recovery, target, reference_result, decision.verdict, decision.reasons, details)


def _check_audit_config(config: AuditConfig) -> None:
    if config.shadow_models < 0 or config.target_epochs <= 0 or config.reference_size <= 0:
        raise ValueError("audit shadow_models must be >= 0, target_epochs and reference_size > 0")
    if config.max_candidates < 1:
        raise ValueError(f"audit max_candidates must be >= 1, got {config.max_candidates}")
    if not 0 < config.significance < 1:
        raise ValueError(f"audit significance must lie in (0, 1), got {config.significance}")
    if not 0 < config.calibration_quantile < 1:
        raise ValueError(f"audit calibration_quantile must lie in (0, 1), got {config.calibration_quantile}")


@dataclass(frozen=True)
class _CandidateRoles:
    """Who plays which part in the membership attacks (see the module docstring).

    ``real_subset`` indexes the training images the reference model trains on; ``members`` are
    the first of them, ``nonmembers`` the same number from the held-out reference half; ``pool``
    (images, labels) is real data disjoint from every candidate, for shadow models.
    """

    real_subset: torch.Tensor
    members: Pair
    nonmembers: Pair
    pool: Pair
    num_calibration: int


def _candidate_roles(
    splits: DatasetSplits, reference_indices: torch.Tensor, *, config: AuditConfig, generator: torch.Generator
) -> _CandidateRoles:
    """Members from the reference model's training subset, non-members from the reference half."""
    train, test = splits.train, splits.test
    cal_mask = torch.ones(len(test), dtype=torch.bool)
    cal_mask[reference_indices] = False
    if config.reference_size > len(train):
        logger.warning(
            "audit: reference_size %d is more than the %d training images; the reference model trains on all of them",
            config.reference_size, len(train),
        )
    real_subset = torch.randperm(len(train), generator=generator)[: min(config.reference_size, len(train))]
    m = min(config.max_candidates, reference_indices.numel(), real_subset.numel())
    outside = torch.ones(len(train), dtype=torch.bool)
    outside[real_subset] = False
    return _CandidateRoles(
        real_subset=real_subset,
        members=(train.images[real_subset[:m]], train.labels[real_subset[:m]]),
        nonmembers=(test.images[reference_indices[:m]], test.labels[reference_indices[:m]]),
        pool=(
            torch.cat([train.images[outside], test.images[cal_mask]]),
            torch.cat([train.labels[outside], test.labels[cal_mask]]),
        ),
        num_calibration=int(cal_mask.sum()),
    )


def _reference_attack(
    roles: _CandidateRoles,
    train: ArrayDataset,
    holdout: ArrayDataset,
    *,
    config: AuditConfig,
    train_fn: Callable[..., torch.nn.Module],
    generator: torch.Generator,
    device: torch.device | str,
) -> tuple[MembershipResult, float]:
    """The same attacks on a model trained on ``reference_size`` real images, and its accuracy."""
    subset = roles.real_subset
    model = train_fn(train.images[subset], train.labels[subset], generator)
    shadows = train_shadow_models(
        roles.pool,
        count=config.shadow_models,
        size=min(subset.numel(), roles.pool[0].shape[0] // 2 or 1),
        train=train_fn,
        generator=generator,
    )
    result = membership_inference(model, roles.members, roles.nonmembers, shadow_models=shadows, device=device)
    return result, accuracy(model, holdout, device=device)
