"""The public facade: every name in fedcond.__all__ resolves."""

from __future__ import annotations

import fedcond


def test_all_public_names_resolve() -> None:
    missing = [name for name in fedcond.__all__ if getattr(fedcond, name, None) is None]
    assert missing == []
    assert fedcond.DistributionMatching.__module__ == "fedcond.distill.dm"
