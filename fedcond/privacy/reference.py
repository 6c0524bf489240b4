"""The audit's real-data reference, stored once and reused across audits.

Most of an audit's cost is its reference: a model trained on ``reference_size`` real images and
attacked with the same membership-inference attacks (and its shadow models). It depends on the
dataset and the audit settings, not on the synthetic set under audit, so an auditor checking
several sets (every client's, every epsilon) can compute it once. The file is JSON (no pickle)
and carries an *identity*: digests of the train and test splits and the settings that shape the
reference. A file whose identity differs is refused with the differing fields named, never
silently reused or overwritten.

A reused reference was drawn with another run's random stream, so its numbers are an equally
valid reference measurement, not the bit-identical one a fresh audit of this set would draw.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from fedcond.config import AuditConfig
from fedcond.data.registry import ArrayDataset, DatasetSplits
from fedcond.privacy.membership import MembershipResult

__all__ = ["ReferenceCacheError", "load_reference", "reference_identity", "save_reference"]

REFERENCE_FORMAT = "fedcond-audit-reference"
FORMAT_VERSION = 1
#: the audit settings a reference depends on (the nearest-neighbour ones do not shape it)
IDENTITY_SETTINGS = ("seed", "reference_size", "shadow_models", "target_epochs", "max_candidates", "model")


class ReferenceCacheError(ValueError):
    """A stored reference that cannot be used: unreadable, or made for other data or settings."""


def _split_digest(split: ArrayDataset) -> str:
    digest = hashlib.sha256()
    for tensor in (split.images, split.labels):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def reference_identity(splits: DatasetSplits, config: AuditConfig) -> dict[str, Any]:
    """What a stored reference must match: the data (SHA-256 of both splits) and its settings."""
    return {
        "dataset": splits.spec.name,
        "train_sha256": _split_digest(splits.train),
        "test_sha256": _split_digest(splits.test),
        **{key: getattr(config, key) for key in IDENTITY_SETTINGS},
    }


def save_reference(
    path: str | Path, *, result: MembershipResult, accuracy: float, identity: dict[str, Any]
) -> Path:
    """Write the reference attack and its model's accuracy to ``path`` (atomically)."""
    path = Path(path)
    document = {
        "format": REFERENCE_FORMAT,
        "version": FORMAT_VERSION,
        "identity": identity,
        "reference_accuracy": float(accuracy),
        "reference": result.to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)
    return path


def load_reference(path: str | Path, *, identity: dict[str, Any]) -> tuple[MembershipResult, float]:
    """Read a stored reference, checking it was made for this data and these settings.

    Returns
    -------
    (MembershipResult, float)
        What :func:`fedcond.privacy.audit.run_audit` takes as ``reference``.

    Raises
    ------
    ReferenceCacheError
        For an unreadable or truncated file, another format, or another identity (the
        differing fields are named).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReferenceCacheError(f"reference file {path} is unreadable or corrupted: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != REFERENCE_FORMAT:
        raise ReferenceCacheError(f"{path} is not a fedcond audit reference")
    if document.get("version") != FORMAT_VERSION:
        raise ReferenceCacheError(
            f"{path} is reference format version {document.get('version')!r}; this fedcond reads {FORMAT_VERSION}"
        )
    stored = document.get("identity")
    if stored != identity:
        stored = stored if isinstance(stored, dict) else {}
        differing = sorted(k for k in stored.keys() | identity.keys() if stored.get(k) != identity.get(k))
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {identity.get(k)!r}" for k in differing[:4])
        raise ReferenceCacheError(
            f"reference file {path} was made for other data or settings ({shown}); "
            "delete it or pass another path to compute a new one"
        )
    try:
        result = MembershipResult.from_dict(document["reference"])
        accuracy = float(document["reference_accuracy"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceCacheError(f"reference file {path} is corrupted: {exc}") from exc
    if not (math.isfinite(accuracy) and 0 <= accuracy <= 1):
        raise ReferenceCacheError(f"reference file {path} holds an impossible accuracy {accuracy!r}")
    return result, accuracy
