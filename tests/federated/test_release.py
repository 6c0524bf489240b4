"""The release gate's actions on a client's upload, and the client app enforcing its policy."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedcond.cli.main import main
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.client_app import build_client_app
from fedcond.federated.job import job_from_mapping, job_to_mapping
from fedcond.federated.policy import GatePolicy, PolicyViolation, load_policy, policy_from_mapping
from fedcond.federated.records import (
    CONDENSE_ACTION,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_PARTITIONS,
    PARTITION_ID,
    POLICY_KEY,
    POLICY_REFUSED,
    SERVER_ROUND,
    SYNTHETIC_KEY,
)
from fedcond.federated.release import gate_release
from fedcond.privacy.ledger import LedgerError, PrivacyLedger, data_source_digest


def half_copies(digits) -> SyntheticSet:
    """Ten images: five copies of training images, five far from any image."""
    train = digits.train
    far = torch.full((5, 1, 8, 8), 6.0)
    images = torch.cat([train.images[:5], far])
    labels = torch.cat([train.labels[:5], train.labels[:5]])
    return SyntheticSet(images, labels, {"num_classes": 10})


def no_recondense(start: torch.Tensor) -> SyntheticSet:
    raise AssertionError("only the replace action re-condenses")


def test_withhold_leaves_the_flagged_images_out(digits):
    synthetic, report = gate_release(
        half_copies(digits), digits.train, policy=GatePolicy(), recondense=no_recondense, seed=0
    )
    assert len(synthetic) == 5 and bool((synthetic.images == 6.0).all())
    assert (report.flagged, report.withheld, report.uploaded, report.replaced) == (5, 5, 5, 0)
    assert report.metrics()["gate-withheld"] == 5


def test_refuse_raises_naming_the_gate(digits):
    with pytest.raises(PolicyViolation) as info:
        gate_release(
            half_copies(digits), digits.train, policy=GatePolicy(action="refuse"), recondense=no_recondense, seed=0
        )
    assert info.value.rule == "gate"


def test_replace_recondenses_from_noise_then_withholds_what_stays_flagged(digits):
    starts = []

    def recondense(start: torch.Tensor) -> SyntheticSet:
        starts.append(start.clone())
        images = start.clone()
        images[0] = digits.train.images[0]  # one image goes back to a copy
        return SyntheticSet(images, half_copies(digits).labels, {"num_classes": 10})

    synthetic, report = gate_release(
        half_copies(digits), digits.train, policy=GatePolicy(action="replace"), recondense=recondense, seed=0
    )
    assert len(starts) == 1
    assert not torch.equal(starts[0][:5], digits.train.images[:5])  # the flagged images restart from noise
    assert torch.equal(starts[0][5:], half_copies(digits).images[5:])  # the others are kept as the start
    assert (report.flagged, report.replaced, report.withheld, report.uploaded) == (5, 5, 1, 9)


def test_a_set_of_copies_only_is_never_uploaded(digits):
    train = digits.train
    copies = SyntheticSet(train.images[:6].clone(), train.labels[:6].clone(), {"num_classes": 10})
    with pytest.raises(PolicyViolation, match="nothing is uploaded"):
        gate_release(copies, train, policy=GatePolicy(), recondense=no_recondense, seed=0)


# --------------------------------------------------------------------------- the ClientApp


def condense_message(job_values: dict) -> Message:
    config = ConfigRecord({**job_to_mapping(job_from_mapping(job_values)), SERVER_ROUND: 1})
    message = Message(content=RecordDict({CONFIG_KEY: config}), dst_node_id=1, message_type=f"train.{CONDENSE_ACTION}")
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config={PARTITION_ID: 0, NUM_PARTITIONS: 2, **node_config},
                   state=RecordDict(), run_config={})


SMALL_JOB = {"num_clients": 2, "partition": "iid", "distill.ipc": 2, "distill.iterations": 2, "device": "cpu",
             "distill.mixed_precision": False}


def test_the_default_policy_refuses_real_init_with_zero_iterations(task_identity):
    app = build_client_app()
    reply = app(condense_message({**SMALL_JOB, "distill.init": "real", "distill.iterations": 0}), context())
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert "'allowed_init'" in reply.error.reason


def test_a_policy_file_in_node_config_is_read_and_enforced(task_identity, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('serve = ["evaluate"]\n')
    reply = build_client_app()(condense_message(SMALL_JOB), context(**{POLICY_KEY: str(path)}))
    assert reply.has_error() and reply.error.code == POLICY_REFUSED and "'serve'" in reply.error.reason
    path.write_text("serve = [\n")  # a broken policy refuses everything, naming the file problem
    reply = build_client_app()(condense_message(SMALL_JOB), context(**{POLICY_KEY: str(path)}))
    assert reply.has_error() and reply.error.code == POLICY_REFUSED and "not valid TOML" in reply.error.reason


def test_the_default_policy_serves_a_noise_init_request_through_the_gate(task_identity):
    reply = build_client_app()(condense_message(SMALL_JOB), context())
    assert not reply.has_error()
    metrics = reply.content.metric_records[METRICS_KEY]
    uploaded = reply.content.array_records[SYNTHETIC_KEY]["labels"].numpy()
    assert "gate-flagged" in metrics and metrics["gate-uploaded"] == len(uploaded)


def test_own_data_source_replaces_the_server_named_partition(task_identity, digits):
    policy = policy_from_mapping({"data.dataset": "digits", "allowed_init": ["noise"]})
    reply = build_client_app(policy)(condense_message(SMALL_JOB), Context(
        run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    counts = reply.content.metric_records[METRICS_KEY]["class-counts"]
    assert sum(counts) == len(digits.train)  # the node's whole training split, not a partition
    mismatch = build_client_app(policy_from_mapping({"data.dataset": "digits"}))(
        condense_message({**SMALL_JOB, "dataset": "mnist"}), context())
    assert mismatch.has_error() and "'data.dataset'" in mismatch.error.reason


def test_dp_budget_exhaustion_survives_a_restart(task_identity, tmp_path):
    ledger = tmp_path / "ledger.json"
    policy = policy_from_mapping({"dp.budget_epsilon": 1.05, "dp.ledger": str(ledger)})
    job = {**SMALL_JOB, "dp.epsilon": 1.0}
    first = build_client_app(policy)(condense_message(job), context())
    assert not first.has_error(), first.error.reason if first.has_error() else ""
    path = ledger.with_name("ledger-partition-0.json")
    state = json.loads(path.read_text())
    assert len(state["runs"]) == 1 and state["runs"][0]["epsilon_after"] <= 1.0 + 1e-9
    # a fresh app and a fresh Context: a restarted node, a new run; the ledger on disk remembers
    second = build_client_app(policy)(condense_message(job), context())
    assert second.has_error() and second.error.code == POLICY_REFUSED
    assert "budget is exhausted" in second.error.reason
    assert len(json.loads(path.read_text())["runs"]) == 1


def test_a_dp_plan_the_node_cannot_make_is_a_refusal_not_a_crash(task_identity):
    # delta 0.1 is more than 1/N for the node's ~720 images: the plan is refused by name
    policy = policy_from_mapping({"dp.budget_delta": 0.5})
    reply = build_client_app(policy)(condense_message({**SMALL_JOB, "dp.epsilon": 1.0, "dp.delta": 0.1}), context())
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert "at least 1/N" in reply.error.reason


def test_ledger_file_errors(tmp_path, digits):
    source = data_source_digest(digits.train.images, digits.train.labels)
    path = tmp_path / "l.json"
    ledger = PrivacyLedger(path, source=source)
    ledger.record(noise_multiplier=2.0, sample_rate=0.1, steps=10, delta=1e-5)
    assert PrivacyLedger(path, source=source).spent(delta=1e-5) == pytest.approx(ledger.spent(delta=1e-5))
    with pytest.raises(Exception, match="another data source"):
        PrivacyLedger(path, source="0" * 64)
    path.write_text("{not json")
    with pytest.raises(Exception, match="corrupt"):
        PrivacyLedger(path, source=source)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(Exception, match="not a fedcond DP ledger"):
        PrivacyLedger(path, source=source)


def test_own_data_normalised_otherwise_than_the_job_is_refused(task_identity, mnist_root):
    policy = policy_from_mapping({"data.dataset": "mnist", "data.data_dir": str(mnist_root)})
    job = {**SMALL_JOB, "dataset": "fashion-mnist", "data_dir": str(mnist_root)}  # same shape, other statistics
    reply = build_client_app(policy)(condense_message(job), context())
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert "'data.dataset'" in reply.error.reason and "normalises" in reply.error.reason


def test_a_node_refuses_a_dp_request_with_an_unwritable_ledger_as_the_policy_check_does(task_identity, tmp_path,
                                                                                          capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    path = tmp_path / "policy.toml"
    for data in ("", '[data]\ndataset = "digits"\n'):  # without a data table: per-partition ledgers
        path.write_text(f'[dp]\nbudget_epsilon = 5.0\nledger = "afile/l.json"\n{data}')
        assert main(["policy", str(path)]) == 2
        checked = capsys.readouterr().err.strip()
        # a node whose policy file names it refuses every request, DP or not, with the same words
        for job in ({**SMALL_JOB, "dp.epsilon": 1.0}, SMALL_JOB):
            reply = build_client_app()(condense_message(job), context(**{POLICY_KEY: str(path)}))
            assert reply.has_error() and reply.error.code == POLICY_REFUSED
            assert checked.endswith(reply.error.reason) and "is a file, not a folder" in reply.error.reason
        # an app built with the policy (a simulation's clients) stops at once
        with pytest.raises(LedgerError, match="is a file, not a folder"):
            build_client_app(load_policy(path))
