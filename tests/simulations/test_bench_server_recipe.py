"""simulations/bench_server_recipe.py: the server's training set rebuilt from a run's uploads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcond.federated.job import job_from_mapping, job_to_mapping
from fedcond.federated.simulation import simulate_in_process
from tests.killed import Killed
from tests.simulations.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"dataset": "digits", "num_clients": 3, "partition": "dirichlet", "alpha": 0.5, "train_per_class": 30,
         "test_per_class": 20, "device": "cpu", "strategy": "fedcond", "rounds": 1, "distill.ipc": 2,
         "distill.iterations": 2, "server_epochs": 3}


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_server_recipe")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    job = job_from_mapping({**SMALL, "out": str(folder)})
    report = simulate_in_process(job)
    config = {k: v for k, v in job_to_mapping(job).items() if k != "out"}
    results = folder / "results.json"
    results.write_text(json.dumps({"command": "test", "results": [{"config": config,
                                                                    "test_accuracy": report.test_accuracy}]}))
    return folder, results, report


def test_the_runs_own_recipe_reproduces_its_accuracy(bench, finished_run, tmp_path):
    folder, results, report = finished_run
    out = tmp_path / "recipe.json"
    bench.main(["--run", str(folder), "--results", str(results), "--epochs", "3", "--threads",
                str(torch.get_num_threads()), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["class_counts_source"] == "upload metadata" and written["clients"] == 3
    assert written["recipes"][0]["test_accuracy"] == report.test_accuracy
    assert "cpu_flags" in written and written["source_run"]["server_epochs"] == 3


def test_uploads_without_counts_take_them_from_the_jobs_partition(bench, finished_run):
    folder, results, _ = finished_run
    job = job_from_mapping(SMALL)
    from_meta, _ = bench.client_sets(folder / "uploads", job)
    stripped = folder / "stripped" / "round-1"
    stripped.mkdir(parents=True)
    for path in sorted((folder / "uploads" / "round-1").glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            del meta["client_reported"]["class-counts"]
            np.savez(stripped / path.name, images=archive["images"], labels=archive["labels"],
                     meta=np.array(json.dumps(meta)))
    recomputed, source = bench.client_sets(folder / "stripped", job)
    assert source == "job partition"
    assert [s.class_counts.tolist() for s in recomputed] == [s.class_counts.tolist() for s in from_meta]



def test_resume_keeps_finished_recipes_and_continues_the_killed_one(bench, finished_run, tmp_path, monkeypatch):
    folder, results, _ = finished_run
    argv = ["--run", str(folder), "--results", str(results), "--epochs", "3", "4", "--threads",
            str(torch.get_num_threads())]
    bench.main([*argv, "--out", str(tmp_path / "whole.json")])
    whole = json.loads((tmp_path / "whole.json").read_text())["recipes"]
    accuracy, calls = bench.accuracy, []

    def killed_in_the_second_evaluation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the 4-epoch recipe trained (and checkpointed), then the process died
            raise Killed
        return accuracy(*args, **kwargs)

    out = tmp_path / "killed.json"
    monkeypatch.setattr(bench, "accuracy", killed_in_the_second_evaluation)
    with pytest.raises(Killed):
        bench.main([*argv, "--out", str(out)])
    assert [r["server_epochs"] for r in json.loads(out.read_text())["recipes"]] == [3]
    monkeypatch.setattr(bench, "accuracy", accuracy)
    bench.main([*argv, "--out", str(out), "--resume"])
    recipes = json.loads(out.read_text())["recipes"]
    assert [(r["server_epochs"], r["resumed"]) for r in recipes] == [(3, False), (4, True)]
    assert [r["test_accuracy"] for r in recipes] == [r["test_accuracy"] for r in whole]


def test_resume_continues_a_first_recipe_killed_before_any_json(bench, finished_run, tmp_path, monkeypatch):
    folder, results, _ = finished_run
    argv = ["--run", str(folder), "--results", str(results), "--epochs", "4", "--threads",
            str(torch.get_num_threads())]
    bench.main([*argv, "--out", str(tmp_path / "whole.json")])
    (whole,) = json.loads((tmp_path / "whole.json").read_text())["recipes"]
    accuracy = bench.accuracy

    def killed_after_training(*args, **kwargs):
        raise Killed

    out = tmp_path / "killed.json"
    monkeypatch.setattr(bench, "accuracy", killed_after_training)
    with pytest.raises(Killed):
        bench.main([*argv, "--out", str(out)])
    assert not out.exists() and (tmp_path / "killed.json.checkpoints" / "epochs-4-lr-0.01.pt").is_file()
    monkeypatch.setattr(bench, "accuracy", accuracy)
    bench.main([*argv, "--out", str(out), "--resume"])
    (recipe,) = json.loads(out.read_text())["recipes"]
    assert recipe["resumed"] is True and recipe["test_accuracy"] == whole["test_accuracy"]
