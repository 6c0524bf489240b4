"""Byte accounting, DP clients, the Flower app config, and the Deployment Engine script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.config import flatten_dict

from fedcond.config import ConfigError, load_toml
from fedcond.federated.accounting import CountingGrid
from fedcond.federated.job import DEMO_JOB, job_from_mapping
from fedcond.federated.records import CONFIG_KEY, POLICY_REFUSED, SERVER_ROUND, payload_bytes
from fedcond.federated.untrusted import client_text

ROOT = Path(__file__).resolve().parents[2]


class EchoGrid:
    """A grid whose nodes reply with a fixed payload."""

    def __init__(self, reply_content):
        self.reply_content = reply_content

    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, *, timeout=None):
        return [Message(self.reply_content, reply_to=m) for m in messages]


def test_counting_grid_counts_every_payload_per_round_and_direction(task_identity):
    model = ArrayRecord({"w": Array(np.zeros((10, 10), np.float32))})  # 400 bytes of data + npy header
    reply = RecordDict({"arrays": model, "metrics": MetricRecord({"num-examples": 5})})
    grid = CountingGrid(EchoGrid(reply))
    for server_round in (1, 2):
        content = RecordDict({"arrays": model, CONFIG_KEY: ConfigRecord({SERVER_ROUND: server_round, "lr": 0.1})})
        messages = [Message(content=content, dst_node_id=n, message_type="train") for n in (1, 2)]
        for m in messages:
            m.metadata.__dict__["_message_id"] = f"id-{server_round}-{m.metadata.dst_node_id}"
        grid.send_and_receive(messages)
    traffic = grid.traffic
    assert set(traffic) == {1, 2}
    down = payload_bytes(content)
    assert down > model.count_bytes() > 400
    assert traffic[1].downlink_bytes == 2 * down and traffic[1].messages_sent == 2
    assert traffic[2].uplink_bytes == 2 * payload_bytes(reply) and traffic[2].replies_received == 2
    assert grid.uplink_bytes == 4 * payload_bytes(reply)


def test_pyproject_app_config_and_demo_toml_are_the_demo():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedcond.federated.server_app:app",
        "clientapp": "fedcond.federated.client_app:app",
    }
    demo = job_from_mapping(DEMO_JOB)
    assert job_from_mapping(flatten_dict(app["config"])).federated == demo.federated
    assert job_from_mapping(load_toml(ROOT / "configs" / "demo.toml")).federated == demo.federated
    for name in ("mnist.toml", "mnist-fedavg.toml", "digits-fedavg.toml", "digits-multiround.toml", "digits-dp.toml"):
        job_from_mapping(load_toml(ROOT / "configs" / name))  # every shipped config parses


def test_flwr_run_config_overrides_reach_the_job():
    """``flwr run . --run-config`` only overrides keys the app config declares (Flower refuses
    the others), so every key the docs tell Flower users to override must be declared."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    overrides = parse_config_args(['rounds=3 distill.ipc=5 distill.matching="mmd" distill.augment.layout="sample"'])
    job = job_from_mapping(get_fused_config_from_dir(ROOT, overrides))
    assert job.federated.rounds == 3 and job.federated.distill.ipc == 5
    assert job.federated.distill.matching == "mmd" and job.federated.distill.augment.layout == "sample"
    with pytest.raises(ValueError, match="not present"):
        get_fused_config_from_dir(ROOT, parse_config_args(["distill.no-such-key=1"]))


def test_flwr_run_config_turns_dp_on_with_a_positive_epsilon_only():
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    default = job_from_mapping(get_fused_config_from_dir(ROOT, parse_config_args([])))
    assert default.federated.dp is None  # the declared dp.epsilon = 0.0 means "no DP"
    private = job_from_mapping(get_fused_config_from_dir(ROOT, parse_config_args(["dp.epsilon=8.0 dp.delta=1e-6"])))
    assert private.federated.dp is not None
    assert private.federated.dp.epsilon == 8.0 and private.federated.dp.delta == 1e-6
    # a baseline with DP declared off is fine; with DP on it is refused (it would run without privacy)
    assert job_from_mapping({"strategy": "fedavg", "dp.epsilon": 0.0, "dp.delta": 1e-5}).federated.dp is None
    with pytest.raises(ConfigError, match="apply to FedCond's DP-DM only"):
        job_from_mapping({"strategy": "fedavg", "dp.epsilon": 8.0})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"distill.matching": "median"}, "must be one of mean, mmd"),
        ({"distill.matching": "mmd", "dp.epsilon": 4.0}, "not private"),
    ],
)
def test_federated_matching_is_checked_when_the_job_is_read(overrides: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        job_from_mapping({"num_clients": 2, **overrides})
    assert job_from_mapping({"num_clients": 2, "distill.matching": "mmd"}).federated.distill.matching == "mmd"


def test_dp_client_reports_its_spent_budget():
    from fedcond.federated.client import client_partition, condense_partition
    from fedcond.privacy.private_condensation import PrivateCondensation

    job = job_from_mapping({"num_clients": 4, "alpha": 0.5, "distill.ipc": 2, "distill.iterations": 3,
                            "distill.mixed_precision": False, "dp.epsilon": 8.0, "dp.delta": 1e-5})
    data = client_partition(job, partition_id=0, num_partitions=4)
    distill = job.federated.distill
    private = PrivateCondensation(job.federated.dp, distill=distill, class_counts=data.class_counts())
    outcome = condense_partition(data, distill=distill, private=private)
    assert outcome.epsilon is not None and 0 < outcome.epsilon <= 8.0 + 1e-6
    assert outcome.delta == pytest.approx(1e-5)
    assert outcome.synthetic.meta["init"] == "noise"
    assert outcome.synthetic.meta["dp_noise"] == "secret"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FEDCOND_SLOW") != "1",
    reason="SuperLink + 2 SuperNodes + flwr run take 40-90 s on 2 busy cores; set FEDCOND_SLOW=1 to run it",
)
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLI is not on PATH")
def test_deployment_engine_with_two_supernodes_on_loopback(tmp_path):
    env = {**os.environ, "FEDCOND_DEPLOY_DIR": str(tmp_path / "deploy"), "FEDCOND_DEPLOY_TIMEOUT": "240"}
    done = subprocess.run(
        [str(ROOT / "simulations" / "deploy_local.sh"), "2", "distill.ipc=1", "distill.iterations=3",
         "server-epochs=5", 'device="cpu"'],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((tmp_path / "deploy" / "result" / "metrics.json").read_text())
    assert metrics["num_clients"] == 2 and metrics["history"][1]["accepted"] == 2
    assert metrics["uplink_bytes"] > 0
    # the ServerApp keeps exactly what each node released (the default policy: noise init, gate)
    assert len(list((tmp_path / "deploy" / "result" / "uploads" / "round-1").glob("client-*.npz"))) == 2
    assert all("gate-flagged" in facts for facts in metrics["clients"].values())
    assert (tmp_path / "deploy" / "result" / "accuracy.png").stat().st_size > 1000  # like fedcond simulate
    # the script stopped exactly what it started: nothing is left running from its folder
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "deploy")], capture_output=True, text=True)
    assert left.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FEDCOND_SLOW") != "1",
    reason="SuperLink + 2 SuperNodes + flwr run take 40-90 s on 2 busy cores; set FEDCOND_SLOW=1 to run it",
)
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLI is not on PATH")
def test_deployment_engine_nodes_enforce_the_policy_in_their_node_config(tmp_path):
    policy = tmp_path / "client-policy.toml"
    policy.write_text('serve = ["evaluate"]  # this node sends nothing trained on its data\n')
    env = {**os.environ, "FEDCOND_DEPLOY_DIR": str(tmp_path / "deploy"), "FEDCOND_DEPLOY_TIMEOUT": "240",
           "FEDCOND_CLIENT_POLICY": str(policy)}
    done = subprocess.run(
        [str(ROOT / "simulations" / "deploy_local.sh"), "2", "distill.ipc=1", "distill.iterations=3",
         "server-epochs=5", 'device="cpu"'],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((tmp_path / "deploy" / "result" / "metrics.json").read_text())
    assert (metrics["accepted"], metrics["refused"], metrics["dropped"]) == (0, 2, 0)
    assert all("'serve'" in reason for reason in metrics["history"][1]["refused"].values())
    assert metrics["test_accuracy"] is None
    assert not (tmp_path / "deploy" / "result" / "uploads").exists()  # nothing left any node
    # a bad policy file stops the script before any SuperNode starts
    policy.write_text("serve = [\n")
    bad = subprocess.run([str(ROOT / "simulations" / "deploy_local.sh"), "2"], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "not a valid client policy" in bad.stderr


def test_server_app_refuses_an_out_folder_holding_a_run_before_any_round(tmp_path, task_identity):
    from flwr.app import Context

    from fedcond.federated import server_app

    (tmp_path / "metrics.json").write_text('{"test_accuracy": 0.98}')

    class NoGrid:
        def get_node_ids(self):
            raise AssertionError("no round may start")

    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={**flatten_dict(DEMO_JOB), "out": str(tmp_path)})
    with pytest.raises(ValueError, match="already holds a run"):
        server_app.main(NoGrid(), context)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test_accuracy": 0.98}


def test_server_app_names_a_bad_run_config_key_in_one_log_line(task_identity, caplog):
    import logging

    from flwr.app import Context

    from fedcond.federated import server_app

    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={**flatten_dict(DEMO_JOB), "rounds": 0})
    with caplog.at_level(logging.ERROR, logger="fedcond"), pytest.raises(ConfigError):
        server_app.main(object(), context)
    assert any("bad --run-config" in r.getMessage() and "'rounds' must be >= 1" in r.getMessage()
               for r in caplog.records)


class ErrorGrid:
    """A grid whose node 1 refuses by its policy and node 2 fails, each with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, *, timeout=None):
        codes = {1: POLICY_REFUSED, 2: 0}
        return [Message(Error(code=codes[m.metadata.dst_node_id], reason=self.reason), reply_to=m) for m in messages]


def test_counting_grid_keeps_a_clients_error_reasons_as_one_bounded_line(task_identity):
    reason = "z" * 5_000_000 + "\nround 1: node 1 accepted"
    grid = CountingGrid(ErrorGrid(reason))
    content = RecordDict({CONFIG_KEY: ConfigRecord({SERVER_ROUND: 1})})
    grid.send_and_receive([Message(content=content, dst_node_id=n, message_type="train") for n in (1, 2)])
    traffic = grid.traffic[1]
    assert traffic.refused == {1: client_text(reason)} and traffic.errors == {2: client_text(reason)}
    assert "\n" not in traffic.refused[1] and traffic.refused[1].endswith("characters, truncated]")
