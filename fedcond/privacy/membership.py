"""Membership inference against a classifier: loss attack and offline LiRA with shadow models.

Scores are "higher means more likely a member":

* **loss attack** (Yeom et al. 2018): ``score = -cross_entropy(model(x), y)``; a global threshold.
* **LiRA, offline** (Carlini et al. 2022): the target's logit-scaled confidence on the true
  class, ``phi = log p_y - log(1 - p_y)``, is compared with a Gaussian fitted per example to the
  same statistic under *shadow* models that never trained on the example (OUT models):
  ``score = (phi_target - mean_out) / std_out`` (a one-sided likelihood-ratio test). Shadow
  models are trained with the target's recipe on random real data disjoint from every candidate.

Metrics: ROC AUC (with a Hanley-McNeil lower confidence bound), TPR at 1% and 0.1% FPR (the
largest TPR whose FPR does not exceed the target; with ``m`` non-members the FPR resolution is
``1/m``, so 0.1% needs 1000 of them to be more than "TPR at FPR 0").

Functions here are stateless; :func:`membership_inference` runs both attacks for one target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcond.training import predict_logits

__all__ = [
    "AttackResult",
    "MembershipResult",
    "RocCurve",
    "auc_lower_bound",
    "attack_result",
    "logit_confidence",
    "lira_scores",
    "loss_scores",
    "membership_inference",
    "roc_curve",
    "tpr_at_fpr",
    "train_shadow_models",
]


# ----------------------------------------------------------------------------- statistics
def loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative per-example cross-entropy (higher: more member-like)."""
    return -F.cross_entropy(logits.float(), labels, reduction="none")


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's ``log p_y - log(1 - p_y)``, computed stably from logits."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


#: Below this many shadow models offline LiRA uses one variance pooled over the examples.
POOLED_VARIANCE_BELOW = 64


def lira_scores(
    target_phi: torch.Tensor,
    shadow_phi: torch.Tensor,
    *,
    min_std: float = 1e-3,
    pooled_variance_below: int = POOLED_VARIANCE_BELOW,
) -> torch.Tensor:
    """Offline LiRA: z-score of the target statistic under each example's OUT Gaussian.

    Parameters
    ----------
    target_phi : torch.Tensor
        ``N`` statistics of the target model.
    shadow_phi : torch.Tensor
        ``K x N`` statistics of ``K`` OUT shadow models. Each example's mean is its own.
    min_std : float
        Floor on the standard deviation.
    pooled_variance_below : int
        With fewer shadow models than this, the variance is the per-example variances' mean
        (one variance for all examples, as Carlini et al. 2022 recommend for few shadow
        models): a variance estimated from 2-4 values per example gives heavy-tailed
        z-scores that weaken the attack at low FPR. With ``K = 1`` the variance comes from the
        target's deviations from the shadow values.
    """
    if shadow_phi.ndim != 2 or shadow_phi.shape[1] != target_phi.shape[0]:
        raise ValueError(f"shadow statistics must be K x {target_phi.shape[0]}, got {tuple(shadow_phi.shape)}")
    count = shadow_phi.shape[0]
    mean = shadow_phi.mean(0)
    if count >= max(2, pooled_variance_below):
        std = shadow_phi.std(0)
    elif count >= 2:
        std = torch.full_like(mean, float(shadow_phi.var(0).mean().sqrt()))
    else:
        std = torch.full_like(mean, float((target_phi - mean).std()))
    return (target_phi - mean) / std.clamp_min(min_std)


@dataclass(frozen=True)
class RocCurve:
    """False- and true-positive rates over all thresholds, and the area under the curve."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float



def roc_curve(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> RocCurve:
    """ROC of "member if score >= t" over all thresholds, and its AUC (ties count one half)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    pos = member_scores.detach().double().cpu().numpy()
    neg = nonmember_scores.detach().double().cpu().numpy()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("membership inference needs at least one member and one non-member")
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    # sklearn refuses non-finite scores: infinities become +-1e30 and a NaN (a diverged model)
    # ranks below every other score, i.e. "least member-like", never a crash
    s = np.nan_to_num(np.concatenate([pos, neg]), nan=-2e30, posinf=1e30, neginf=-1e30)
    fpr, tpr, _ = sk_roc(y, s, drop_intermediate=False)
    return RocCurve(fpr, tpr, float(roc_auc_score(y, s)))


def tpr_at_fpr(curve: RocCurve, *, fpr: float) -> float:
    """Largest TPR among operating points with FPR <= ``fpr``."""
    ok = curve.fpr <= fpr + 1e-12
    return float(curve.tpr[ok].max()) if ok.any() else 0.0


def auc_lower_bound(auc: float, *, members: int, nonmembers: int, z: float = 2.326) -> float:
    """One-sided lower confidence bound of an AUC (Hanley & McNeil 1982 standard error)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (members - 1) * (q1 - auc**2) + (nonmembers - 1) * (q2 - auc**2)) / (
        members * nonmembers
    )
    return auc - z * math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class AttackResult:
    """One attack on one target model."""

    attack: str
    auc: float
    auc_lower: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    curve: RocCurve
    members: int
    nonmembers: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """The attack's numbers as ``metrics.json`` entries, each key prefixed with ``prefix``."""
        return {
            f"{prefix}auc": self.auc,
            f"{prefix}auc_lower": self.auc_lower,
            f"{prefix}tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            f"{prefix}tpr_at_01pct_fpr": self.tpr_at_01pct_fpr,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (the ROC curve as lists); :meth:`from_dict` reads it back."""
        return {
            "attack": self.attack,
            "auc": self.auc,
            "auc_lower": self.auc_lower,
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "tpr_at_01pct_fpr": self.tpr_at_01pct_fpr,
            "fpr": self.curve.fpr.tolist(),
            "tpr": self.curve.tpr.tolist(),
            "members": self.members,
            "nonmembers": self.nonmembers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackResult:
        """Rebuild a result written by :meth:`to_dict`.

        Raises
        ------
        ValueError
            For a missing field, a wrong type, or a curve that is not a valid ROC.
        """
        try:
            fpr = np.asarray(data["fpr"], dtype=np.float64)
            tpr = np.asarray(data["tpr"], dtype=np.float64)
            numbers = {k: float(data[k]) for k in ("auc", "auc_lower", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr")}
            members, nonmembers = int(data["members"]), int(data["nonmembers"])
            attack = str(data["attack"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a membership-attack result: {exc!r}") from exc
        if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size < 2:
            raise ValueError("the ROC curve needs matching fpr/tpr lists of at least two points")
        if not (np.all((fpr >= 0) & (fpr <= 1) & (tpr >= 0) & (tpr <= 1)) and 0 <= numbers["auc"] <= 1):
            raise ValueError("ROC rates and the AUC must lie in [0, 1]")
        return cls(
            attack,
            numbers["auc"],
            numbers["auc_lower"],
            numbers["tpr_at_1pct_fpr"],
            numbers["tpr_at_01pct_fpr"],
            RocCurve(fpr, tpr, numbers["auc"]),
            members,
            nonmembers,
        )


def attack_result(
    attack: str, member_scores: torch.Tensor, nonmember_scores: torch.Tensor, *, z: float = 2.326
) -> AttackResult:
    """ROC, AUC (with lower bound at one-sided level ``z``) and TPR at 1% / 0.1% FPR."""
    curve = roc_curve(member_scores, nonmember_scores)
    m, n = len(member_scores), len(nonmember_scores)
    return AttackResult(
        attack,
        curve.auc,
        auc_lower_bound(curve.auc, members=m, nonmembers=n, z=z),
        tpr_at_fpr(curve, fpr=0.01),
        tpr_at_fpr(curve, fpr=0.001),
        curve,
        m,
        n,
    )


# ----------------------------------------------------------------------------- the attacks
@dataclass(frozen=True)
class MembershipResult:
    """Both attacks on one target: ``loss`` always, ``lira`` when shadow models were given."""

    attacks: dict[str, AttackResult]

    @property
    def strongest(self) -> AttackResult:
        """The attack with the highest AUC."""
        return max(self.attacks.values(), key=lambda a: a.auc)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Every attack's numbers as ``metrics.json`` entries, keyed ``{prefix}{attack}_{name}``."""
        out: dict[str, float] = {}
        for name, result in self.attacks.items():
            out.update(result.metrics(f"{prefix}{name}_"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; :meth:`from_dict` reads it back (no pickle anywhere)."""
        return {"attacks": {name: result.to_dict() for name, result in self.attacks.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MembershipResult:
        """Rebuild a result written by :meth:`to_dict` (``ValueError`` when it is not one)."""
        attacks = data.get("attacks") if isinstance(data, Mapping) else None
        if not isinstance(attacks, Mapping) or not attacks:
            raise ValueError("not a membership-inference result: no attacks")
        return cls({str(name): AttackResult.from_dict(result) for name, result in attacks.items()})


def membership_inference(
    target: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    nonmembers: tuple[torch.Tensor, torch.Tensor],
    *,
    shadow_models: Sequence[nn.Module] = (),
    device: torch.device | str = "cpu",
    z: float = 2.326,
) -> MembershipResult:
    """Loss attack and (with shadow models) offline LiRA against ``target``.

    Parameters
    ----------
    target : nn.Module
        The attacked classifier.
    members, nonmembers : (images, labels)
        Candidates known to be in / out of the data behind ``target``.
    shadow_models : sequence of nn.Module
        OUT models: trained with the target's recipe on data disjoint from all candidates.
    device : torch.device | str
        Where the models score the candidates.
    z : float
        Normal quantile of the one-sided confidence bound on each attack's AUC (2.326: 99%).

    Returns
    -------
    MembershipResult
        The loss attack's result and, with shadow models, LiRA's.
    """
    x = torch.cat([members[0], nonmembers[0]])
    y = torch.cat([members[1], nonmembers[1]])
    m = members[0].shape[0]
    logits = predict_logits(target, x, device=device)
    loss = loss_scores(logits, y)
    attacks = {"loss": attack_result("loss", loss[:m], loss[m:], z=z)}
    if shadow_models:
        phi = logit_confidence(logits, y)
        shadow = torch.stack([logit_confidence(predict_logits(s, x, device=device), y) for s in shadow_models])
        scores = lira_scores(phi, shadow)
        attacks["lira"] = attack_result("lira", scores[:m], scores[m:], z=z)
    return MembershipResult(attacks)


TrainFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], nn.Module]


def train_shadow_models(
    pool: tuple[torch.Tensor, torch.Tensor],
    *,
    count: int,
    size: int,
    train: TrainFn,
    generator: torch.Generator,
) -> list[nn.Module]:
    """``count`` OUT shadow models, each trained by ``train`` on ``size`` random pool images."""
    if count < 0:
        raise ValueError(f"shadow model count must be >= 0, got {count}")
    size = min(size, pool[0].shape[0])
    models = []
    for _ in range(count):
        pick = torch.randperm(pool[0].shape[0], generator=generator)[:size]
        models.append(train(pool[0][pick], pool[1][pick], generator))
    return models

