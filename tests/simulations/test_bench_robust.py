"""simulations/bench_robust.py: an interrupted benchmark resumed with --resume."""

from __future__ import annotations

import json

import pytest

from tests.killed import Killed
from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_robust")


def test_resume_keeps_the_finished_runs_and_runs_the_rest(bench, tmp_path, monkeypatch):
    out = tmp_path / "robust.json"
    argv = ["--out", str(out), "--datasets", "digits", "--seeds", "0", "--strategies", "fedavg",
            "--fedavg-rounds", "1", "--attacks", "scaled-update", "drop-out", "--attackers", "0", "1"]
    simulate, calls = bench.simulate, []

    def dies_in_the_third_run(job, **kwargs):
        calls.append(kwargs.get("attack"))
        if len(calls) == 3:
            raise Killed
        return simulate(job, **kwargs)

    monkeypatch.setattr(bench, "simulate", dies_in_the_third_run)
    with pytest.raises(Killed):
        bench.main(argv)
    kept = json.loads(out.read_text())["results"]
    assert [(r["attack"], r["attackers"]) for r in kept] == [(None, 0), ("scaled-update", 1)]
    calls.clear()

    def counted(job, **kwargs):
        calls.append(kwargs["attack"])
        return simulate(job, **kwargs)

    monkeypatch.setattr(bench, "simulate", counted)
    assert bench.main([*argv, "--resume"]) == 0
    assert [attack.kind for attack in calls] == ["drop-out"]
    results = json.loads(out.read_text())["results"]
    assert results[:2] == kept and [(r["attack"], r["attackers"]) for r in results[2:]] == [("drop-out", 1)]


def test_weight_set_reaches_the_weight_averaging_jobs_and_names_them(bench):
    import argparse

    from fedcond.federated.job import job_from_mapping

    args = argparse.Namespace(strategies=["fedcond", "krum"], fedcond_variants=["robust"], fedavg_rounds=5,
                              weight_set=["byzantine_nodes=3"])
    listed = bench._methods(args, bench.RECIPES["digits"])
    methods = {name: (strategy, overrides) for name, strategy, overrides in listed}
    assert list(methods) == ["fedcond-robust", "krum[byzantine_nodes=3]"]
    assert "byzantine_nodes" not in methods["fedcond-robust"][1]
    strategy, overrides = methods["krum[byzantine_nodes=3]"]
    job = job_from_mapping({"dataset": "digits", **overrides, "strategy": strategy})
    assert job.federated.byzantine_nodes == 3 and job.federated.rounds == 5
