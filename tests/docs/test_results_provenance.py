"""Every JSON file in docs/results names the command, the commit and the machine that produced it.

A file whose run did not record one of them says so (``command_basis``, ``commit_basis``,
``machine``) rather than leaving it out; the check is ``render_results.py --provenance``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


def _renderer():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "simulations" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_file_carries_command_commit_and_machine() -> None:
    lacking = _renderer().provenance()
    assert not lacking, "docs/results files without provenance:\n" + "\n".join(lacking)


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"command": "python x.py", "commit": SHA, "cpu_flags": []}, []),
        ({"command": "python x.py", "commit": SHA + "-dirty", "cpu_flags": ["avx2"]}, []),
        ({"commands": ["python x.py"], "commit": SHA, "machine": "not recorded by the run"}, []),
        ({"sources": [{"file": "a.json"}], "commit": SHA, "machine": "not recorded by the run"}, []),
        ({"command": None, "command_basis": "not recorded by the run", "commit": SHA, "cpu_flags": []}, []),
        ({"command": None, "commit": SHA, "cpu_flags": []}, ["command"]),
        ({"argv": ["--out", "x"], "commit": SHA, "cpu_flags": []}, ["command"]),
        ({"command": "python x.py", "cpu_flags": []}, ["commit"]),
        ({"command": "python x.py", "commit": "abc123", "cpu_flags": []}, ["commit"]),
        ({"command": "python x.py", "commit": None, "cpu_flags": []}, ["commit"]),
        ({"command": "python x.py", "commit": SHA, "torch": "2.4", "threads": 1}, ["machine"]),
        ({"rows": []}, ["command", "commit", "machine"]),
    ],
)
def test_the_check_names_what_a_file_lacks(data: dict, missing: list[str]) -> None:
    assert _renderer().missing_provenance(data) == missing


def test_a_file_without_provenance_is_listed(tmp_path, monkeypatch) -> None:
    renderer = _renderer()
    (tmp_path / "full.json").write_text(json.dumps({"command": "python x.py", "commit": SHA, "cpu_flags": []}))
    (tmp_path / "bare.json").write_text(json.dumps({"command": "python x.py", "rows": []}))
    monkeypatch.setattr(renderer, "RESULTS", tmp_path)
    assert renderer.provenance() == ["bare.json: no commit, machine"]
