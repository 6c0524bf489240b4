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


def test_a_condensation_cache_runs_each_condensation_once_and_changes_no_result(bench, tmp_path, monkeypatch):
    from fedcond.distill import dm

    optimise, runs = dm.optimise_pixels, []

    def recorded(*args, **kwargs):
        run = optimise(*args, **kwargs)
        runs.append((run.resumed_from, len(run.losses)))
        return run

    monkeypatch.setattr(dm, "optimise_pixels", recorded)
    argv = ["--datasets", "digits", "--seeds", "0", "--strategies", "fedcond", "--attackers", "0",
            "--set", "distill.iterations=4", "--set", "server_epochs=2"]
    cached = tmp_path / "cached.json"
    bench.main([*argv, "--out", str(cached), "--fedcond-variants", "robust", "plain",
                "--condensation-cache", str(tmp_path / "cache")])
    first, second = runs[: len(runs) // 2], runs[len(runs) // 2:]
    assert first and all(done == (0, 4) for done in first)  # the robust run condenses
    assert all(done == (4, 0) for done in second)  # the plain run loads every finished set
    runs.clear()
    fresh = tmp_path / "fresh.json"
    bench.main([*argv, "--out", str(fresh), "--fedcond-variants", "plain"])
    assert all(done == (0, 4) for done in runs)
    (plain_cached,) = [r for r in json.loads(cached.read_text())["results"] if r["method"] == "fedcond-plain"]
    (plain_fresh,) = json.loads(fresh.read_text())["results"]
    assert plain_cached["test_accuracy"] == plain_fresh["test_accuracy"]


def test_weight_averaging_runs_are_served_with_and_without_the_condensation_cache(bench, tmp_path):
    for cache in ([], ["--condensation-cache", str(tmp_path / "cache")]):
        out = tmp_path / f"fedavg{len(cache)}.json"
        bench.main(["--out", str(out), "--datasets", "digits", "--seeds", "0", "--strategies", "fedavg",
                    "--fedavg-rounds", "1", "--attackers", "0", *cache])
        (run,) = json.loads(out.read_text())["results"]
        assert run["accepted"] == 10 and run["refused"] == 0 and run["test_accuracy"] is not None
