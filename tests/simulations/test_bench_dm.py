"""simulations/bench_dm.py: the IDM variant rows and the CIFAR-10 options."""

from __future__ import annotations

import json

import pytest

from fedcond.config import DistillConfig
from tests.killed import Killed, killed_at_call
from tests.simulations.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_dm")


def test_each_variant_names_real_config_fields(bench):
    assert bench.dm_variant_options("queue", idm_queue=7) == {"queue_size": 7}
    assert bench.dm_variant_options("expand", idm_queue=7) == {"factor": 2}
    assert bench.dm_variant_options("idm", idm_queue=7) == {"queue_size": 7, "factor": 2}
    for name in bench.DM_VARIANTS:  # every variant builds a checked config
        DistillConfig(**bench.dm_variant_options(name, idm_queue=4))
    with pytest.raises(ValueError, match="unknown DM variant 'gm'"):
        bench.dm_variant_options("gm", idm_queue=4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "cifar10"], "needs --cifar-dir"),
        (["--datasets", "fashion-mnist"], "needs --data-dir"),
        (["--datasets", "svhn"], "unknown ['svhn']"),
        (["--dm-variants", "idm,fast"], "unknown ['fast']"),
        (["--dm-set", "time_budget=-1"], "--dm-set"),
        (["--dm-set", "speed=3"], "--dm-set"),
        (["--dm-reference", "--time-budget", "5"], "--dm-reference runs at equal iterations"),
        (["--dm-reference", "--dm-set", "time_budget=5"], "--dm-reference runs at equal iterations"),
        (["--dm-reference", "--dm-init", "noise"], "--dm-reference starts from real images"),
        (["--dm-reference", "--dm-dsa-layout", "sample"], "--dm-reference starts from real images"),
        (["--dm-reference", "--dm-set", "factor=2"], "the reference takes no --dm-set ['factor']"),
    ],
)
def test_bad_options_are_refused_by_name(bench, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(["--sections", "methods", "--out", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


def test_variant_rows_run_on_digits_and_record_their_options(bench, tmp_path):
    bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "1",
                "--digits-iterations", "2", "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "",
                "--dm-matchings", "mean", "--dm-variants", "queue,idm", "--idm-queue", "2", "--no-compile",
                "--gm-iterations", "1", "--dm-set", "batch_real=16", "--dm-set", "time_budget=30",
                "--out", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench_dm.json").read_text())["methods"]}
    assert list(rows) == ["dm", "dm+queue", "dm+idm", "gm"]
    assert rows["gm"]["iterations"] == 1 and rows["dm"]["iterations"] == 2
    assert rows["dm"]["iterations_run"] == [2] and rows["gm"]["dm_settings"] is None
    assert rows["dm"]["dm_settings"] == {"batch_real": "16", "time_budget": "30"}
    table = (tmp_path / "bench_dm.md").read_text()
    assert "| dm (batch_real=16, time_budget=30) | 2 |" in table
    assert rows["dm"]["dm_options"] is None
    assert rows["dm+queue"]["dm_options"] == {"queue_size": 2}
    assert rows["dm+idm"]["dm_options"] == {"queue_size": 2, "factor": 2}


def test_a_time_budget_row_records_the_iterations_it_ran(bench, tmp_path):
    bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "1",
                "--digits-iterations", "500", "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "",
                "--dm-matchings", "mean", "--no-compile", "--dm-set", "time_budget=0.01", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "bench_dm.json").read_text())["methods"]
    assert row["iterations"] == 500 and 1 <= row["iterations_run"][0] < 500


def test_a_killed_run_keeps_every_finished_row(bench, tmp_path, monkeypatch):
    evaluate = bench.evaluate
    calls = []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second row's evaluation: the process is killed
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(bench, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "1",
                    "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "random,herding",
                    "--dm-matchings", "", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_dm.json").read_text())
    assert [r["method"] for r in saved["methods"]] == ["random"]
    assert saved["complete"] is False


def test_one_time_budget_caps_every_iterative_row(bench, tmp_path):
    bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "1",
                "--digits-iterations", "500", "--gm-iterations", "500", "--eval-runs", "1", "--eval-epochs", "1",
                "--baselines", "random", "--dm-matchings", "mean", "--no-compile", "--time-budget", "0.01",
                "--out", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench_dm.json").read_text())["methods"]}
    for method in ("dm", "gm"):
        assert rows[method]["time_budget"] == 0.01
        assert rows[method]["iterations"] == 500 and 1 <= rows[method]["iterations_run"][0] < 500
    assert rows["random"]["time_budget"] is None and rows["random"]["iterations_run"] is None


def test_a_budget_given_twice_is_refused(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sections", "methods", "--datasets", "digits", "--time-budget", "5",
                    "--dm-set", "time_budget=5", "--out", str(tmp_path)])
    assert "give the budget once" in capsys.readouterr().err


def test_resume_keeps_the_finished_rows_and_runs_the_rest(bench, tmp_path, monkeypatch):
    argv = ["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "1",
            "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "random,herding", "--dm-matchings", "",
            "--out", str(tmp_path)]
    evaluate = bench.evaluate
    monkeypatch.setattr(bench, "evaluate", killed_at_call(evaluate, 2))
    with pytest.raises(Killed):
        bench.main(argv)
    first = json.loads((tmp_path / "bench_dm.json").read_text())["methods"][0]
    evaluated = []
    monkeypatch.setattr(bench, "evaluate", lambda *a, **k: evaluated.append(1) or evaluate(*a, **k))
    bench.main([*argv, "--resume"])
    saved = json.loads((tmp_path / "bench_dm.json").read_text())
    assert [r["method"] for r in saved["methods"]] == ["random", "herding"]
    assert saved["methods"][0] == first and len(evaluated) == 1 and saved["complete"] is True
    with pytest.raises(SystemExit, match="written by another command"):
        bench.main([*argv[:-2], "--baselines", "random", "--out", str(tmp_path), "--resume"])


def test_the_reference_row_runs_at_the_dm_rows_iterations(bench, tmp_path, monkeypatch):
    calls = []
    reference = bench.reference_dm
    monkeypatch.setattr(bench, "reference_dm", lambda data, **kw: calls.append(kw) or reference(data, **kw))
    bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "1", "--digits-seeds", "2",
                "--digits-iterations", "3", "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "",
                "--dm-matchings", "mean", "--dm-reference", "--no-compile", "--dm-set", "batch_real=16",
                "--out", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench_dm.json").read_text())["methods"]}
    assert list(rows) == ["dm", "dm-reference"]
    assert [(c["ipc"], c["iterations"], c["seed"], c["batch_real"]) for c in calls] == [(1, 3, 0, 16), (1, 3, 1, 16)]
    assert rows["dm-reference"]["iterations"] == 3 and rows["dm-reference"]["iterations_run"] == [3, 3]
    assert rows["dm-reference"]["seeds"] == [0, 1] and len(rows["dm-reference"]["accuracy_per_seed"]) == 2


def test_a_method_that_cannot_make_a_set_from_the_data_is_recorded_and_the_run_goes_on(bench, tmp_path):
    # partition-and-expand from real images needs ipc x 4 images per class: digits holds about 143
    bench.main(["--sections", "methods", "--datasets", "digits", "--digits-ipcs", "50", "--digits-seeds", "1",
                "--digits-iterations", "1", "--eval-runs", "1", "--eval-epochs", "1", "--baselines", "",
                "--dm-matchings", "", "--dm-variants", "expand,queue", "--idm-queue", "2", "--no-compile",
                "--dm-set", "batch_real=8", "--out", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "bench_dm.json").read_text())["methods"]}
    assert list(rows) == ["dm+expand", "dm+queue"]
    assert "fewer than ipc x factor^2 = 50 x 4 = 200 images" in rows["dm+expand"]["not_possible"]
    assert "accuracy_mean" not in rows["dm+expand"] and rows["dm+queue"]["accuracy_mean"] > 0
    assert "| digits | 50 | dm+expand | – | 1 | not possible:" in (tmp_path / "bench_dm.md").read_text()
