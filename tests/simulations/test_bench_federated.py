"""simulations/bench_federated.py: the CIFAR-10 rows (--cifar-dir, the recipe, the baselines)."""

from __future__ import annotations

import json

import pytest

from fedcond.federated.job import job_from_mapping
from tests.killed import Killed
from tests.simulations.scripts import documented_commands, load_script, unparsable_commands


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_federated")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--datasets", "cifar10"], "--datasets cifar10 needs --cifar-dir"),
        (["--datasets", "mnist", "cifar10", "--data-dir", "mnist-root"], "--datasets cifar10 needs --cifar-dir"),
        (["--datasets", "svhn"], "invalid choice: 'svhn'"),
    ],
)
def test_bad_options_are_refused_by_name(bench, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_cifar10_jobs_read_the_cifar_dir_and_follow_the_recipe(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--datasets", "mnist", "cifar10", "--data-dir", "mnist-root",
                             "--cifar-dir", "cifar-root", "--partitions", "dirichlet-0.5", "--all-extras",
                             "--fedavg-rounds", "7"])
    jobs = dict(bench._jobs("cifar10", "dirichlet-0.5", args))
    assert list(jobs) == ["fedcond-oneshot", "fedcond-multi3", "fedavg", "fedprox"]
    for mapping in jobs.values():
        assert mapping["dataset"] == "cifar10" and mapping["data_dir"] == "cifar-root"
        assert mapping["num_clients"] == 10 and mapping["alpha"] == 0.5
        job = job_from_mapping({**mapping, "seed": 0})  # every row is a valid job
        assert job.federated.train_per_class is None and job.federated.model == "convnet"
    oneshot = job_from_mapping(jobs["fedcond-oneshot"]).federated
    assert (oneshot.rounds, oneshot.distill.ipc, oneshot.distill.iterations) == (1, 10, 200)
    assert (oneshot.distill.batch_real, oneshot.server_epochs, oneshot.distill.init) == (128, 300, "noise")
    assert job_from_mapping(jobs["fedcond-multi3"]).federated.rounds == 3
    for baseline in ("fedavg", "fedprox"):
        assert jobs[baseline]["strategy"] == baseline and jobs[baseline]["rounds"] == 7
    # MNIST keeps --data-dir
    assert all(m["data_dir"] == "mnist-root" for _, m in bench._jobs("mnist", "dirichlet-0.5", args))


def test_cifar10_rows_run_on_a_slice(bench, cifar10_slice, tmp_path):
    out = tmp_path / "bench"
    assert bench.main(["--out", str(out), "--datasets", "cifar10", "--cifar-dir", str(cifar10_slice),
                       "--partitions", "iid", "--num-clients", "2", "--strategies", "fedcond", "fedavg",
                       "--fedavg-rounds", "1", "--set", "distill.ipc=1", "--set", "distill.iterations=2",
                       "--set", "server_epochs=1"]) == 0
    report = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in report["results"]}
    assert list(runs) == ["fedcond-oneshot", "fedavg"]
    for run in runs.values():
        assert run["dataset"] == "cifar10" and run["config"]["data_dir"] == str(cifar10_slice)
        assert 0.0 <= run["test_accuracy"] <= 1.0
    # the independent check read the 3x32x32 uploads against each client's images
    oneshot = runs["fedcond-oneshot"]
    assert oneshot["independent_audited"] == oneshot["gate_uploaded"] > 0
    assert (out / "accuracy_cifar10_iid.png").exists()



def test_resume_keeps_finished_runs_and_continues_the_killed_one(bench, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--datasets", "digits", "--partitions", "iid", "--num-clients", "3",
            "--strategies", "fedcond", "fedavg", "--fedavg-rounds", "3", "--set", "distill.ipc=1",
            "--set", "distill.iterations=4", "--set", "server_epochs=1"]
    simulate = bench.simulate
    rounds_run = []

    def killed_after_round_2(job, **kwargs):
        def on_round(report):
            rounds_run.append(report.history[-1]["round"])
            if job.federated.strategy == "fedavg" and report.history[-1]["round"] == 2:
                raise Killed

        return simulate(job, on_round=on_round, **kwargs)

    monkeypatch.setattr(bench, "simulate", killed_after_round_2)
    with pytest.raises(Killed):
        bench.main(argv)
    first = json.loads((out / "results.json").read_text())["results"]
    assert [r["method"] for r in first] == ["fedcond-oneshot"] and first[0]["resumed"] is False
    rounds_run.clear()

    def counted(job, **kwargs):
        return simulate(job, on_round=lambda report: rounds_run.append(report.history[-1]["round"]), **kwargs)

    monkeypatch.setattr(bench, "simulate", counted)
    assert bench.main([*argv, "--resume"]) == 0
    assert rounds_run == [3]  # FedCond kept as measured; FedAvg continued after its round 2
    report = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in report["results"]}
    assert runs["fedcond-oneshot"] == first[0]
    assert runs["fedavg"]["resumed"] is True and len(runs["fedavg"]["accuracy_by_round"]) == 4
    assert len(report["summary"]) == 2


def test_documented_commands_parse(bench):
    assert any("cifar10" in argv for _, argv in documented_commands("simulations/bench_federated.py"))
    assert unparsable_commands("simulations/bench_federated.py", bench.parse_args) == []
