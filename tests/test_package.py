"""The public facade: every name in every package's ``__all__`` resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fedcond

PACKAGES = ("fedcond", "fedcond.data", "fedcond.distill", "fedcond.federated", "fedcond.continual", "fedcond.privacy")


@pytest.mark.parametrize("package", PACKAGES)
def test_all_public_names_resolve(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"


def test_the_facade_reaches_each_part() -> None:
    assert fedcond.DistributionMatching.__module__ == "fedcond.distill.dm"
    assert fedcond.simulate.__module__ == "fedcond.federated.simulation"
    assert fedcond.PrivacyAccountant.__module__ == "fedcond.privacy.accounting"


def test_importing_the_engine_starts_no_framework() -> None:
    # the federated, continual and privacy parts load on first access only
    code = "import sys, fedcond; print(sorted(m for m in ('flwr', 'avalanche', 'opacus', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
