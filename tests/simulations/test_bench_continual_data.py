"""simulations/bench_continual.py reads each benchmark's data from --data-dir before any run."""

from __future__ import annotations

import json

import pytest

from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_continual")


def test_a_data_dir_without_cifar10_stops_before_any_run(bench, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = bench.main(
        ["--benchmarks", "split-digits", "split-cifar10", "--data-dir", str(tmp_path / "none"), "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "train/<class>" in err
    assert not out.exists()


def test_split_cifar10_runs_from_the_cifar10_root(bench, cifar10_slice, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEDCOND_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    one_small_run = ["--seeds", "0", "--memories", "1", "--kinds", "random", "--gdumb-kinds", "--epochs", "1"]
    whole_slice = ["--train-per-class", "0", "--test-per-class", "0"]
    where = ["--data-dir", str(cifar10_slice), "--out", str(out)]
    code = bench.main(["--benchmarks", "split-cifar10", *where, *one_small_run, *whole_slice])
    assert code == 0
    (run,) = json.loads((out / "bench_continual.json").read_text())["runs"]
    assert run["benchmark"] == "split-cifar10" and run["replay"] == "random" and run["memory_images"] == 10


def test_resume_keeps_the_finished_runs_and_runs_the_rest(bench, tmp_path, monkeypatch) -> None:
    from tests.killed import Killed, killed_at_call

    out = tmp_path / "out"
    argv = ["--benchmarks", "split-digits", "--seeds", "0", "--memories", "1", "--kinds", "none", "random",
            "herding", "--gdumb-kinds", "--epochs", "1", "--out", str(out)]
    run_continual, ran = bench.run_continual, []
    monkeypatch.setattr(bench, "run_continual", killed_at_call(run_continual, 3))
    with pytest.raises(Killed):
        bench.main(argv)
    kept = json.loads((out / "bench_continual.json").read_text())["runs"]
    assert [r["replay"] for r in kept] == ["none", "random"]
    monkeypatch.setattr(bench, "run_continual", lambda config, **kw: ran.append(config) or run_continual(config, **kw))
    assert bench.main([*argv, "--resume"]) == 0
    runs = json.loads((out / "bench_continual.json").read_text())["runs"]
    assert len(ran) == 1 and runs[:2] == kept and [r["replay"] for r in runs] == ["none", "random", "herding"]
    with pytest.raises(SystemExit, match="written by another command"):
        bench.main([*argv, "--epochs", "2", "--resume"])
