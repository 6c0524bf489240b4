"""Privacy: memorisation and membership-inference audits, and differentially private DM.

``recoverability`` and ``membership`` hold the attacks (pure functions plus a stateful twin),
``audit`` runs the whole audit and gives a verdict, ``dp`` is the DP ``RealStatistics`` seam
for the DM engine, ``accounting`` wraps Opacus' accountants, ``ledger`` keeps a node's spending
on its disk and ``private_condensation`` puts them together into one private run
(:class:`PrivateCondensation`). Opacus is imported through ``accounting`` only.
"""

from fedcond.lazy import lazy_attribute, lazy_dir
from fedcond.privacy.audit import LEAKS, NO_EVIDENCE, AuditReport, check_compatible, run_audit, verdict_for
from fedcond.privacy.membership import (
    AttackResult,
    MembershipResult,
    lira_scores,
    loss_scores,
    membership_inference,
    roc_curve,
    tpr_at_fpr,
    train_shadow_models,
)
from fedcond.privacy.recoverability import (
    CalibrationError,
    Recoverability,
    RecoverabilityResult,
    calibrate_threshold,
    nearest_neighbours,
    recoverability,
)
from fedcond.privacy.reference import ReferenceCacheError, load_reference, reference_identity, save_reference

__all__ = [
    "LEAKS",
    "NO_EVIDENCE",
    "AttackResult",
    "AuditReport",
    "CalibrationError",
    "MembershipResult",
    "Recoverability",
    "RecoverabilityResult",
    "ReferenceCacheError",
    "calibrate_threshold",
    "check_compatible",
    "lira_scores",
    "load_reference",
    "loss_scores",
    "membership_inference",
    "nearest_neighbours",
    "recoverability",
    "reference_identity",
    "roc_curve",
    "run_audit",
    "save_reference",
    "tpr_at_fpr",
    "train_shadow_models",
    "verdict_for",
]

_LAZY = {
    "DPMeanStatistics": "fedcond.privacy.dp",
    "DPPlan": "fedcond.privacy.dp",
    "LedgerError": "fedcond.privacy.ledger",
    "PrivacyLedger": "fedcond.privacy.ledger",
    "PrivateCondensation": "fedcond.privacy.private_condensation",
    "PrivacyAccountant": "fedcond.privacy.accounting",
    "PrivacyBudgetError": "fedcond.privacy.accounting",
    "calibrate_noise_multiplier": "fedcond.privacy.accounting",
    "data_source_digest": "fedcond.privacy.ledger",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    """DP names import Opacus, so they load on first use."""
    return lazy_attribute(__name__, _LAZY, name)


def __dir__() -> list[str]:
    """The module's names, the lazy DP names included (for ``dir()`` and completion)."""
    return lazy_dir(globals(), _LAZY)
