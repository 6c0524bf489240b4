"""Crash safety: per-round checkpoints, resuming a killed run, refusing another job's folder;
and one end-to-end attacked simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedcond.federated.attacks import AttackConfig
from fedcond.federated.checkpoint import CheckpointMismatch, RunCheckpoint
from fedcond.federated.job import job_from_mapping
from fedcond.federated.server_app import run_identity
from fedcond.federated.simulation import simulate_in_process
from tests.killed import Killed as ProcessKilled

SMALL = {
    "dataset": "digits",
    "num_clients": 3,
    "partition": "iid",
    "local_epochs": 1,
    "train_per_class": 30,
    "test_per_class": 20,
    "device": "cpu",
}


class Killed(RuntimeError):
    """Stands for the process dying right after a round's checkpoint was written."""


def _kill_after(last_round: int):
    def on_round(report) -> None:
        if report.history[-1]["round"] == last_round:
            raise Killed(f"killed after round {last_round}")

    return on_round


def test_a_run_killed_between_rounds_resumes_to_the_uninterrupted_result(tmp_path):
    # FedMedian: its aggregate does not depend on the order replies arrive in, so equal seeds give equal runs
    job = job_from_mapping({**SMALL, "strategy": "fedmedian", "rounds": 3})
    whole = RunCheckpoint(tmp_path / "whole", identity=run_identity(job))
    uninterrupted = simulate_in_process(job, checkpoint=whole)
    killed = RunCheckpoint(tmp_path / "killed", identity=run_identity(job))
    with pytest.raises(Killed):
        simulate_in_process(job, checkpoint=killed, on_round=_kill_after(2))
    partial = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert partial["complete"] is False and [h["round"] for h in partial["history"]] == [0, 1, 2]
    resumed = simulate_in_process(job, checkpoint=killed)
    assert resumed.resumed_after == 2 and resumed.complete
    assert resumed.test_accuracy == uninterrupted.test_accuracy
    assert [h["test_accuracy"] for h in resumed.history] == [h["test_accuracy"] for h in uninterrupted.history]
    for key, value in uninterrupted.final_arrays.items():
        assert np.array_equal(resumed.final_arrays[key].numpy(), value.numpy())
    final = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert final["complete"] is True and final["trained_rounds"] == 3


def test_fedcond_resume_restores_the_union(tmp_path):
    job = job_from_mapping(
        {**SMALL, "strategy": "fedcond", "rounds": 2, "distill.iterations": 2, "distill.ipc": 2, "server_epochs": 2}
    )
    checkpoint = RunCheckpoint(tmp_path / "run", identity=run_identity(job))
    with pytest.raises(Killed):
        simulate_in_process(job, checkpoint=checkpoint, on_round=_kill_after(1))
    saved = checkpoint.load()
    assert saved.completed_round == 1 and len(saved.strategy_state["client_sets"]) == 3
    resumed = simulate_in_process(job, checkpoint=checkpoint)
    assert resumed.complete and resumed.trained_rounds == 2
    assert [h["round"] for h in resumed.history] == [0, 1, 2]


def test_a_checkpoint_of_another_job_is_refused_by_name(tmp_path):
    job = job_from_mapping({**SMALL, "strategy": "fedavg", "rounds": 2})
    RunCheckpoint(tmp_path, identity=run_identity(job)).save(
        completed_round=1, arrays=_arrays(), history=[], metrics={}
    )
    other = job_from_mapping({**SMALL, "strategy": "fedavg", "rounds": 2, "num_clients": 4})
    with pytest.raises(CheckpointMismatch, match="'num_clients' is 3 there, 4 here"):
        RunCheckpoint(tmp_path, identity=run_identity(other)).load()
    attacked = run_identity(job, AttackConfig("scaled-update", 1))
    with pytest.raises(CheckpointMismatch, match="'attack' is None there, 'scaled-update:1' here"):
        RunCheckpoint(tmp_path, identity=attacked).load()


def _arrays():
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})


def test_an_attacked_simulation_drops_the_attackers_and_stays_finite(tmp_path):
    job = job_from_mapping(
        {**SMALL, "num_clients": 4, "strategy": "fedcond", "distill.iterations": 5, "distill.ipc": 2,
         "server_epochs": 5}
    )
    report = simulate_in_process(job, attack=AttackConfig("extreme-pixels", 1))
    metrics = report.metrics()
    assert metrics["attack"] == "extreme-pixels" and metrics["attackers"] == 1 and metrics["complete"]
    assert metrics["dropped"] == 1 and metrics["accepted"] == 3
    dropped = report.history[1]["dropped"]
    assert len(dropped) == 1 and "outside the allowed" in next(iter(dropped.values()))
    assert report.test_accuracy is not None
    assert all(bool(torch.isfinite(torch.as_tensor(v.numpy())).all()) for v in report.final_arrays.values())


def test_flwr_run_path_checkpoints_every_round_and_resumes_with_resume_true(tmp_path, task_identity):
    from fedcond.federated.client_app import build_client_app
    from fedcond.federated.inprocess import InProcessGrid
    from fedcond.federated.server_app import serve

    values = {**SMALL, "strategy": "fedmedian", "rounds": 3, "out": str(tmp_path / "run")}
    grid = lambda: InProcessGrid(build_client_app(None), num_nodes=3)  # noqa: E731 - a fresh federation per call
    with pytest.raises(Killed):
        serve(grid(), job_from_mapping(values), on_round=_kill_after(2))
    partial = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert partial["complete"] is False and [h["round"] for h in partial["history"]] == [0, 1, 2]
    assert (tmp_path / "run" / "checkpoints" / "fedmedian" / "model.npz").is_file()
    # the folder holds a run: a plain start is refused, resume=true continues it
    with pytest.raises(ValueError, match="already holds a run.*resume=true"):
        serve(grid(), job_from_mapping(values))
    other = {**values, "num_clients": 4, "resume": True}
    with pytest.raises(ValueError, match="resume=true: .*'num_clients' is 3 there, 4 here"):
        serve(grid(), job_from_mapping(other))
    resumed = serve(grid(), job_from_mapping({**values, "resume": True}))
    assert resumed.resumed_after == 2 and resumed.complete
    uninterrupted = serve(grid(), job_from_mapping({**values, "out": str(tmp_path / "whole")}))
    assert [h["test_accuracy"] for h in resumed.history] == [h["test_accuracy"] for h in uninterrupted.history]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert final["complete"] is True and (tmp_path / "run" / "accuracy.png").is_file()
    with pytest.raises(ValueError, match="is finished; nothing to continue"):
        serve(grid(), job_from_mapping({**values, "resume": True}))
    with pytest.raises(ValueError, match="holds no run to continue"):
        serve(grid(), job_from_mapping({**values, "out": str(tmp_path / "empty"), "resume": True}))


@pytest.mark.parametrize(("values", "match"), [({"resume": "yes", "out": "x"}, "expected true or false"),
                                               ({"resume": True}, "needs 'out'")])
def test_resume_in_the_run_config_is_checked(values, match):
    from fedcond.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        job_from_mapping({**SMALL, **values})



def test_a_round_killed_during_server_training_continues_that_training(tmp_path, monkeypatch):
    import fedcond.federated.server_training as server_training

    job = job_from_mapping(
        {**SMALL, "strategy": "fedcond", "rounds": 1, "distill.iterations": 2, "distill.ipc": 2, "server_epochs": 12}
    )
    uninterrupted = simulate_in_process(job)
    train_model, epochs_run = server_training.train_model, []

    def dies_in_epoch_11(*args, **kwargs):
        def on_epoch(done: int) -> None:
            epochs_run.append(done)
            if done == 11:  # the checkpoint of epoch 10 is on disk
                raise ProcessKilled

        return train_model(*args, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(server_training, "train_model", dies_in_epoch_11)
    checkpoint = RunCheckpoint(tmp_path / "run", identity=run_identity(job))
    with pytest.raises(ProcessKilled):
        simulate_in_process(job, checkpoint=checkpoint)
    assert (tmp_path / "run" / "server-training-round-1.pt").is_file()
    epochs_run.clear()
    monkeypatch.setattr(server_training, "train_model",
                        lambda *a, **k: train_model(*a, on_epoch=epochs_run.append, **k))
    resumed = simulate_in_process(job, checkpoint=checkpoint)
    assert epochs_run == [11, 12]
    assert resumed.test_accuracy == uninterrupted.test_accuracy
    for key, value in uninterrupted.final_arrays.items():
        assert np.array_equal(resumed.final_arrays[key].numpy(), value.numpy())


def test_a_training_checkpoint_of_another_union_is_replaced(tmp_path, caplog):
    job = job_from_mapping(
        {**SMALL, "strategy": "fedcond", "rounds": 1, "distill.iterations": 2, "distill.ipc": 2, "server_epochs": 2}
    )
    uninterrupted = simulate_in_process(job)
    folder = tmp_path / "run"
    other = job_from_mapping({**SMALL, "strategy": "fedcond", "rounds": 1, "distill.iterations": 3,
                              "distill.ipc": 2, "server_epochs": 2})
    simulate_in_process(other, checkpoint=RunCheckpoint(folder, identity=run_identity(other)))
    for name in ("state.json", "model.npz", "strategy.npz", "metrics.json"):  # only the training file stays
        (folder / name).unlink(missing_ok=True)
    with caplog.at_level("WARNING"):
        resumed = simulate_in_process(job, checkpoint=RunCheckpoint(folder, identity=run_identity(job)))
    assert "belongs to another training run" in caplog.text and "training afresh" in caplog.text
    assert resumed.test_accuracy == uninterrupted.test_accuracy
