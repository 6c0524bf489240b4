"""The federated job mapping: range checks at the job level, seed following, and the flat round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from fedcond.config import ConfigError, DataConfig
from fedcond.federated.job import FederatedJob, job_from_mapping, job_to_mapping


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_clients": 0}, "'num_clients' must be >= 1, got 0"),
        ({"local_epochs": 0}, "'local_epochs' must be >= 1, got 0"),
        ({"local-batch-size": 0}, "'local_batch_size' must be >= 1, got 0"),
        ({"server_epochs": 0}, "'server_epochs' must be >= 1, got 0"),
        ({"min_available_nodes": 0}, "'min_available_nodes' must be >= 1, got 0"),
        ({"rounds": -1}, "'rounds' must be >= 1, got -1"),
        ({"distill.ipc": 0}, "'distill.ipc' must be >= 1, got 0"),
        ({"fraction_train": 1.5}, r"'fraction_train' must lie in \(0, 1\], got 1.5"),
        ({"fraction_train": 0.0}, r"'fraction_train' must lie in \(0, 1\]"),
        ({"min_reply_fraction": 1.01}, r"'min_reply_fraction' must lie in \[0, 1\]"),
        ({"min_reply_fraction": -0.1}, r"'min_reply_fraction' must lie in \[0, 1\]"),
        ({"distill.iterations": -1}, "'distill.iterations' must be >= 0, got -1"),
        ({"partition": "shards", "shards_per_client": 0}, "'shards_per_client' must be >= 1, got 0"),
        ({"partition": "dirichlet", "alpha": 0.0}, "'alpha' must be"),
        ({"partition": "dirichlet", "alpha": -0.5}, "'alpha' must be"),
        ({"min_partition_size": 0}, "'min_partition_size' must be >= 1"),
        ({"partition": "stripes"}, "'partition' must be one of iid, dirichlet, shards; got 'stripes'"),
        ({"strategy": "fedsgd"}, "'strategy': 'fedsgd' is not one of fedcond, fedavg, fedprox"),
        ({"strategy": "fedprox", "dp.epsilon": 4.0}, "apply to FedCond's DP-DM only"),
        ({"device": "tpu"}, "'device': 'tpu' is not one of auto, cpu, cuda"),
        ({"distill.matching": "median"}, "'distill.matching'"),
    ],
)
def test_job_refuses_settings_that_would_train_nothing(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job_from_mapping(values)


@pytest.mark.parametrize(
    "values",
    [
        {"min_reply_fraction": 0.0},
        {"min_reply_fraction": 1.0},
        {"fraction_train": 1.0},
        {"fraction_train": 0.01},
        {"distill.iterations": 0},  # k-means centroids (or real images) sent as they are
        {"partition": "iid", "alpha": 0.0},  # alpha only matters for a Dirichlet split
        {"partition": "dirichlet", "shards_per_client": 0},  # shards only matter for a shard split
        {"num_clients": 1, "rounds": 1, "local_epochs": 1, "distill.ipc": 1, "min_available_nodes": 1},
        {"device": "cpu"},
        {"device": "cuda"},
    ],
)
def test_job_accepts_the_boundaries_of_every_range(values: dict) -> None:
    job = job_from_mapping(values)
    for key, value in values.items():
        if key == "device":
            assert job.device == value
        elif key.startswith("distill."):
            assert getattr(job.federated.distill, key.split(".", 1)[1]) == value
        else:
            assert getattr(job.federated, key) == value


def test_data_and_run_keys_are_split_from_the_federated_config(tmp_path: Path) -> None:
    job = job_from_mapping({"dataset": "mnist", "data-dir": str(tmp_path), "download": "true",
                            "device": "cpu", "out": str(tmp_path / "run"), "server-round": 3, "num-clients": 4})
    assert job.data == DataConfig(dataset="mnist", data_dir=tmp_path, download=True)
    assert job.device == "cpu" and job.out == tmp_path / "run"
    assert job.federated.num_clients == 4  # server-round (Flower's own) is ignored, not an unknown key


def test_empty_data_dir_and_out_mean_none() -> None:
    job = job_from_mapping({"data_dir": "", "out": ""})
    assert job.data.data_dir is None and job.out is None
    assert job_from_mapping({}) == FederatedJob()


@pytest.mark.parametrize(
    ("values", "seeds"),
    [
        ({}, (0, 0)),
        ({"seed": 7}, (7, 7)),
        ({"seed": 7, "distill.seed": -1}, (7, 7)),
        ({"seed": 7, "distill.seed": "-1"}, (7, 7)),
        ({"seed": 7, "distill.seed": 3}, (7, 3)),
        ({"seed": 7, "distill.seed": 0}, (7, 0)),  # 0 is a seed, not "follow"
    ],
)
def test_distill_seed_follows_the_job_seed_unless_set(values: dict, seeds: tuple[int, int]) -> None:
    fed = job_from_mapping(values).federated
    assert (fed.seed, fed.distill.seed) == seeds


def test_job_mapping_round_trip_keeps_every_setting(tmp_path: Path) -> None:
    job = job_from_mapping({
        "dataset": "fashion-mnist", "data_dir": str(tmp_path), "download": True, "device": "cpu",
        "out": str(tmp_path / "out"), "strategy": "fedcond", "num_clients": 3, "partition": "shards",
        "shards_per_client": 3, "rounds": 2, "fraction_train": 0.5, "min_reply_fraction": 0.25,
        "train_per_class": 20, "seed": 4, "distill.seed": 9, "distill.ipc": 5, "distill.augment.layout": "sample",
        "dp.epsilon": 2.5, "dp.noise_seed": 11,
    })
    flat = job_to_mapping(job)
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())  # fits a ConfigRecord
    back = job_from_mapping(dict(ConfigRecord(flat)))
    assert back == job
    assert back.data.download is True and back.data.data_dir == tmp_path and back.out == tmp_path / "out"
    assert back.federated.dp is not None and back.federated.dp.noise_seed == 11
    assert back.federated.distill.seed == 9 and back.federated.test_per_class is None


def test_job_mapping_without_dp_has_no_dp_keys_and_stays_without_dp() -> None:
    job = job_from_mapping({"strategy": "fedavg", "num_clients": 2})
    flat = job_to_mapping(job)
    assert not [k for k in flat if k.startswith("dp")]
    assert "data_dir" not in flat and "out" not in flat
    assert job_from_mapping(flat) == job and job_from_mapping(flat).federated.dp is None
