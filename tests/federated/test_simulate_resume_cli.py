"""``fedcond simulate --resume`` and ``--attack`` at the command line."""

from __future__ import annotations

import json

import pytest

from fedcond.cli.main import main
from tests.killed import Killed

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



def test_a_simulation_killed_during_condensation_resumes_from_the_clients_checkpoints(tmp_path, monkeypatch):
    import fedcond.distill.optimisation as optimisation

    args = ["simulate", *FAST, "--strategy", "fedcond", "--rounds", "1", "--num-clients", "2", "--ipc", "1",
            "--iterations", "30", "--set", "server_epochs=2"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    step, steps = optimisation._step, []

    def dies_at_step_45(*a, **k):
        steps.append(1)
        if len(steps) == 45:  # the second client, iteration 15 (checkpoints every 20: one at 20 of the first)
            raise Killed
        return step(*a, **k)

    monkeypatch.setattr(optimisation, "_step", dies_at_step_45)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        main([*args, "--out", str(out)])
    assert not (out / "metrics.json").exists() and any((out / "client-checkpoints").glob("condense-*.pt"))
    steps.clear()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert len(steps) < 2 * 30  # the first client's condensation came from its checkpoint
    assert resumed["client_policy"]["checkpoints"]["folder"] == str(out / "client-checkpoints")


SMALL_RUN = ["simulate", "--engine", "inprocess", "--num-clients", "2", "--partition", "iid", "--ipc", "1",
             "--iterations", "2", "--set", "server-epochs=2", "--device", "cpu"]


def test_resume_refuses_a_folder_of_other_runs_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "fedcond"
    assert main([*SMALL_RUN, "--out", str(out)]) == 0
    before = (out / "metrics.json").read_text()
    fedavg = ["simulate", "--engine", "inprocess", "--num-clients", "2", "--partition", "iid", "--device", "cpu",
              "--strategy", "fedavg", "--rounds", "1"]
    code = main([*fedavg, "--resume", "--out", str(out)])
    assert code != 0 and "holds the run(s) ['fedcond']" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    distilled = tmp_path / "distilled"
    assert main(["distill", "--ipc", "1", "--iterations", "2", "--eval-runs", "0", "--out", str(distilled)]) == 0
    code = main([*SMALL_RUN, "--resume", "--out", str(distilled)])
    assert code != 0 and "not written by fedcond simulate" in capsys.readouterr().err


def test_overwrite_removes_the_replaced_runs_uploads(tmp_path):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--rounds", "2", "--out", str(out)]) == 0
    assert (out / "uploads" / "round-2").is_dir()
    assert main([*SMALL_RUN, "--rounds", "1", "--overwrite", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "uploads").iterdir()) == ["round-1"]


def test_each_fedcond_run_of_a_comparison_keeps_its_own_uploads(tmp_path):
    out = tmp_path / "compare"
    assert main([*SMALL_RUN, "--compare", "fedcond=2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["runs"]) == ["fedcond", "fedcond-2"]
    assert sorted(p.name for p in (out / "uploads").iterdir()) == ["round-1"]
    later = out / "runs" / "fedcond-2" / "uploads"
    assert sorted(p.name for p in later.iterdir()) == ["round-1", "round-2"]
