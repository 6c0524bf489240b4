"""The server's record of what left the clients: OUT/uploads/round-R/client-K.npz."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import Array

from fedcond.data import get_spec
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.records import METRICS_KEY, client_report
from fedcond.federated.untrusted import MAX_METRIC_NAME, MAX_METRICS
from fedcond.federated.uploads import UploadStore

from .conftest import forged_array, synthetic_reply


def test_a_kept_upload_holds_the_arrays_and_the_claimed_class_counts(task_identity, tmp_path):
    reply = synthetic_reply(1003, classes={2: 40, 7: 9})
    metrics = reply.content.metric_records[METRICS_KEY]
    metrics["too-long"] = list(range(11))  # longer than num_classes: not kept
    metrics["non-finite"] = [1.0, float("nan")]
    metrics["seconds-nan"] = float("nan")
    store = UploadStore(tmp_path / "uploads", spec=get_spec("digits"), max_images=20)
    path = store.keep(reply, server_round=2)
    assert path == tmp_path / "uploads" / "round-2" / "client-1003.npz"
    received = SyntheticSet.load(path)
    assert received.labels.tolist() == [2, 2, 7, 7] and received.meta["node_id"] == 1003
    reported = received.meta["client_reported"]
    assert reported["class-counts"] == [0, 0, 40, 0, 0, 0, 0, 9, 0, 0]
    assert reported["num-examples"] == 49 and reported["distill-seconds"] == 1.0
    assert not {"too-long", "non-finite", "seconds-nan"} & set(reported)
    with np.load(path, allow_pickle=False) as raw:  # stored as sent: no rescaling
        sent = reply.content.array_records["synthetic"]["images"].numpy()
        assert np.array_equal(raw["images"], sent) and json.loads(str(raw["meta"]))["round"] == 2


def test_a_flood_of_metric_names_reaches_neither_the_upload_nor_the_run_record(task_identity, tmp_path):
    reply = synthetic_reply(1003, classes={2: 40, 7: 9})
    metrics = reply.content.metric_records[METRICS_KEY]
    honest = dict(metrics.items())
    metrics["gate-" + "A" * 100_000] = 1.0  # a name far past MAX_METRIC_NAME
    for i in range(20_000):
        metrics[f"gate-k{i}\nround 1: node 3 accepted"] = 1.0  # forged log lines
    for i in range(20_000):
        metrics[f"gate-{i}"] = 1.0  # short printable names: kept up to MAX_METRICS in all
    path = UploadStore(tmp_path / "uploads", spec=get_spec("digits"), max_images=20).keep(reply, server_round=1)
    reported = SyntheticSet.load(path).meta["client_reported"]
    assert len(reported) == MAX_METRICS and path.stat().st_size < 20_000
    assert {k: reported[k] for k in honest} == {k: v if not isinstance(v, list) else list(v) for k, v in honest.items()}
    assert all(len(name) <= MAX_METRIC_NAME and "\n" not in name for name in reported)
    record = client_report(reply)
    assert len(record) <= MAX_METRICS and all(len(name) <= MAX_METRIC_NAME and "\n" not in name for name in record)
    assert len(json.dumps(record)) < 5_000


def _forged_reply(node_id: int, *, carried: int, declared: int) -> object:
    """A reply whose arrays declare ``declared`` images and carry ``carried``."""
    reply = synthetic_reply(node_id, classes={0: 10})
    arrays = reply.content.array_records["synthetic"]
    arrays["images"] = forged_array(np.zeros((carried, 1, 8, 8), np.float32), shape=(declared, 1, 8, 8))
    arrays["labels"] = forged_array(np.zeros(carried, np.int64), shape=(declared,))
    return reply


@pytest.mark.parametrize(
    ("carried", "declared"), [(2000, 2), (21, 21)], ids=["bytes-disagree-with-shape", "bytes-over-the-cap"]
)
def test_arrays_over_the_cap_or_larger_than_declared_are_neither_decoded_nor_written(
    task_identity, tmp_path, monkeypatch, caplog, carried, declared
):
    store = UploadStore(tmp_path / "uploads", spec=get_spec("digits"), max_images=20)
    reply = _forged_reply(9, carried=carried, declared=declared)
    monkeypatch.setattr(Array, "numpy", lambda self: pytest.fail("an array was decoded"))
    with caplog.at_level(logging.WARNING, logger="fedcond.federated.uploads"):
        assert store.keep(reply, server_round=1) is None
    assert not (tmp_path / "uploads").exists()
    assert any("node 9's arrays are not stored" in r.message for r in caplog.records)
