"""``fedcond simulate --resume`` and ``--attack`` at the command line."""

from __future__ import annotations

import json

import pytest

from fedcond.cli.main import main

FAST = ["--engine", "inprocess", "--dataset", "digits", "--partition", "iid", "--set", "train-per-class=20",
        "--set", "test-per-class=10", "--device", "cpu"]


def test_resume_finishes_a_run_and_refuses_another_jobs_folder_by_name(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["simulate", *FAST, "--strategy", "fedmedian", "--rounds", "1", "--num-clients", "2", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["complete"] is True
    assert main([*args, "--resume"]) == 0  # a finished run: kept as written
    other = [a if a != "2" else "3" for a in args]
    assert main([*other, "--resume"]) == 2
    assert "'num_clients' is 2 there, 3 here" in capsys.readouterr().err


def test_resume_without_a_run_and_attack_misuse_are_refused(tmp_path, capsys):
    assert main(["simulate", *FAST, "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    args = ["simulate", *FAST, "--strategy", "fedavg", "--out", str(tmp_path / "x")]
    assert main([*args, "--attack", "label-flip", "--attackers", "1"]) == 2
    assert "does not apply to strategy 'fedavg'" in capsys.readouterr().err
    assert main([*args, "--attackers", "1"]) == 2
    assert "--attackers needs --attack" in capsys.readouterr().err
