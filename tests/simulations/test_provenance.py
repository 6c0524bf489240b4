"""simulations/provenance.py: the recorded command and the same-command check of ``--resume``."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def provenance():
    return load_script("provenance")


def test_the_recorded_command_re_runs_the_parsed_options(provenance):
    command = provenance.recorded_command(["--baselines", "", "--out", "a b"])
    assert command.startswith("python ")
    assert shlex.split(command)[2:] == ["--baselines", "", "--out", "a b"]


def test_earlier_run_returns_the_same_commands_file_and_refuses_another(provenance, tmp_path):
    path = tmp_path / "bench.json"
    assert provenance.earlier_run(path, "python bench.py --seed 0") is None
    path.write_text(json.dumps({"command": "python bench.py --seed 0 --resume", "rows": [1]}))
    assert provenance.earlier_run(path, "python bench.py --seed 0")["rows"] == [1]
    assert provenance.earlier_run(path, "python bench.py --resume --seed 0")["rows"] == [1]
    with pytest.raises(SystemExit, match="written by another command"):
        provenance.earlier_run(path, "python bench.py --seed 1")


def test_earlier_run_refuses_a_file_written_on_another_machine(provenance, tmp_path):
    path = tmp_path / "bench.json"
    here = provenance.machine_facts()
    machine = {key: here[key] for key in ("cpu_model", "cpu_count", "cpu_flags")}
    record = {"command": "python bench.py", "rows": [1], **machine}
    path.write_text(json.dumps(record))
    assert provenance.earlier_run(path, "python bench.py")["rows"] == [1]
    path.write_text(json.dumps({**record, "cpu_flags": [*here["cpu_flags"], "amx_tile-elsewhere"]}))
    with pytest.raises(SystemExit, match="written on another machine.*cpu_flags"):
        provenance.earlier_run(path, "python bench.py")
    path.write_text(json.dumps({**record, "cpu_model": "another CPU"}))
    with pytest.raises(SystemExit, match="cpu_model 'another CPU'"):
        provenance.earlier_run(path, "python bench.py")
