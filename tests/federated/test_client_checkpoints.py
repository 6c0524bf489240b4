"""A node's condensation checkpoints: a killed condensation continues where it stopped.

The policy's ``[checkpoints]`` table names a folder on the node's disk; a repeated request (the
same job after a restart) resumes its DM run from the last checkpoint and ends with the set an
uninterrupted run makes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import fedcond.distill.optimisation as optimisation
from fedcond.config import DistillConfig
from fedcond.data.registry import load_dataset
from fedcond.federated.client import condensation_checkpoint, condense_partition
from fedcond.federated.job import job_from_mapping
from fedcond.federated.policy import DEFAULT_POLICY, PolicyError, load_policy, policy_from_mapping
from fedcond.federated.simulation import simulate_in_process
from tests.killed import Killed


@pytest.fixture
def count_steps(monkeypatch):
    """Counts DM steps; ``kill_at`` makes the step with that number (1-based) kill the process."""
    state = {"steps": 0, "kill_at": None}
    step = optimisation._step

    def counted(*args, **kwargs):
        state["steps"] += 1
        if state["steps"] == state["kill_at"]:
            raise Killed
        return step(*args, **kwargs)

    monkeypatch.setattr(optimisation, "_step", counted)
    return state


@pytest.fixture(scope="module")
def client_data():
    train = load_dataset("digits").train
    return train.subset(torch.arange(200))


DISTILL = DistillConfig(ipc=2, iterations=12, init="noise", batch_real=32, compile=False, seed=3)


def test_a_killed_condensation_resumes_to_the_uninterrupted_set(tmp_path, client_data, count_steps):
    whole = condense_partition(client_data, distill=DISTILL)
    assert count_steps["steps"] == 12
    count_steps.update(steps=0, kill_at=10)  # killed in iteration 10: the checkpoint of iteration 5 survives
    with pytest.raises(Killed):
        condense_partition(client_data, distill=DISTILL, checkpoints=tmp_path, checkpoint_every=5)
    (saved,) = tmp_path.glob("condense-*.pt")
    count_steps.update(steps=0, kill_at=None)
    again = condense_partition(client_data, distill=DISTILL, checkpoints=tmp_path, checkpoint_every=5)
    assert count_steps["steps"] == 12 - 5  # continued from iteration 5
    assert torch.equal(again.synthetic.images, whole.synthetic.images)
    assert torch.equal(again.synthetic.labels, whole.synthetic.labels)
    assert list(tmp_path.glob("condense-*.pt")) == [saved]


def test_a_finished_request_repeated_is_served_from_its_checkpoint(tmp_path, client_data, count_steps):
    first = condense_partition(client_data, distill=DISTILL, checkpoints=tmp_path, checkpoint_every=5)
    count_steps["steps"] = 0
    repeated = condense_partition(client_data, distill=DISTILL, checkpoints=tmp_path, checkpoint_every=5)
    assert count_steps["steps"] == 0
    assert torch.equal(repeated.synthetic.images, first.synthetic.images)


@pytest.mark.parametrize(
    "change",
    [
        {"distill": dataclasses.replace(DISTILL, seed=4)},
        {"distill": dataclasses.replace(DISTILL, iterations=13)},
        {"data": "other half"},
        {"start": "other start"},
    ],
)
def test_every_other_request_gets_a_file_of_its_own(tmp_path, client_data, change):
    start = torch.zeros(2 * 10, 1, 8, 8)
    base = {"distill": DISTILL, "start": start}
    path = condensation_checkpoint(tmp_path, client_data, **base)
    assert path.parent == tmp_path and path.name.startswith("condense-")
    assert condensation_checkpoint(tmp_path, client_data, **base) == path
    data = client_data
    if change.pop("data", None):
        data = load_dataset("digits").train.subset(torch.arange(200, 400))
    if change.pop("start", None):
        base["start"] = start + 1
    assert condensation_checkpoint(tmp_path, data, **{**base, **change}) != path


def test_another_embedder_gets_a_file_of_its_own(tmp_path, client_data):
    start = torch.zeros(2 * 10, 1, 8, 8)
    first, second = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    with torch.no_grad():
        second.weight.copy_(first.weight)
        second.bias.copy_(first.bias)
    same = [condensation_checkpoint(tmp_path, client_data, distill=DISTILL, start=start, embedder=m)
            for m in (first, second)]
    assert same[0] == same[1]
    with torch.no_grad():
        second.weight.add_(1.0)
    assert condensation_checkpoint(tmp_path, client_data, distill=DISTILL, start=start, embedder=second) != same[0]


def test_the_policy_reads_its_checkpoint_folder_relative_to_its_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[checkpoints]\nfolder = "state"\nevery = 7\n')
    policy = load_policy(path)
    assert policy.checkpoints.folder == tmp_path / "state" and policy.checkpoints.every == 7
    assert DEFAULT_POLICY.checkpoints.folder is None
    assert policy.as_dict()["checkpoints"] == {"folder": str(tmp_path / "state"), "every": 7}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"checkpoints.every": 0}, "'checkpoints.every' must be >= 1"),
        ({"checkpoints.folders": "x"}, "unknown config key(s) checkpoints.folders"),
    ],
)
def test_bad_checkpoint_keys_are_refused_by_name(values, message):
    with pytest.raises(PolicyError) as info:
        policy_from_mapping(values)
    assert message in str(info.value)


def test_a_simulation_killed_during_condensation_resumes_to_the_uninterrupted_result(tmp_path, count_steps):
    job = job_from_mapping({
        "dataset": "digits", "num_clients": 3, "partition": "iid", "train_per_class": 20, "test_per_class": 10,
        "strategy": "fedcond", "rounds": 1, "distill.iterations": 6, "distill.ipc": 2, "distill.batch_real": 16,
        "server_epochs": 3, "device": "cpu",
    })
    policy = policy_from_mapping({"checkpoints.folder": str(tmp_path / "state"), "checkpoints.every": 2})
    uninterrupted = simulate_in_process(job)
    total = count_steps["steps"]
    assert total >= 3 * 6  # every client's DM (the gate may condense again)
    count_steps.update(steps=0, kill_at=6 + 5)  # the second client dies in its fifth iteration
    with pytest.raises(Killed):
        simulate_in_process(job, policy=policy)
    assert len(list(Path(tmp_path / "state").glob("condense-*.pt"))) == 2  # the first client's, the second's
    count_steps.update(steps=0, kill_at=None)
    resumed = simulate_in_process(job, policy=policy)
    assert count_steps["steps"] == total - 6 - 4  # the first client served from its file, the second from iteration 4
    assert resumed.test_accuracy == uninterrupted.test_accuracy
    for key, value in uninterrupted.final_arrays.items():
        assert np.array_equal(resumed.final_arrays[key].numpy(), value.numpy())
