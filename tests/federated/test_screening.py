"""Flower's weight-averaging strategies behind the reply screen: a malformed reply is dropped, the round goes on."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from fedcond.config import FederatedConfig, parse_config
from fedcond.federated.baselines import BASELINES, baseline_strategy
from fedcond.federated.inprocess import InProcessGrid
from fedcond.federated.job import job_from_mapping
from fedcond.federated.records import CONFIG_KEY, METRICS_KEY, MODEL_KEY, NUM_EXAMPLES, PARTITION_ID
from fedcond.federated.screening import MAX_WEIGHT, ReplyScreen
from fedcond.federated.server_app import run_federated

from .conftest import forged_array, request_to

HONEST_NODES = range(1, 8)  # seven: Bulyan with one Byzantine node needs 4 x 1 + 3 replies
HOSTILE = 99


def _model(value: float = 0.0) -> dict[str, np.ndarray]:
    """A model's arrays: two float layers and an int64 counter (as BatchNorm keeps)."""
    return {
        "w": np.full((3, 2), value, np.float32),
        "b": np.full(2, -value, np.float32),
        "steps": np.array(int(value), np.int64),
    }


def _reply(node_id: int, *, arrays: dict | None = None, metrics: dict | None = None, **records) -> Message:
    record = ArrayRecord({k: v if isinstance(v, Array) else Array(v) for k, v in (arrays or _model(node_id)).items()})
    content = RecordDict({MODEL_KEY: record, METRICS_KEY: MetricRecord({NUM_EXAMPLES: 10 * node_id} | (metrics or {}))})
    for key, value in records.items():
        content[key] = value
    return Message(content, reply_to=request_to(node_id))


def _honest() -> list[Message]:
    return [_reply(n) for n in HONEST_NODES]


def _without_weight() -> Message:
    reply = _reply(HOSTILE)
    reply.content[METRICS_KEY] = MetricRecord({"loss": 1.0})
    return reply


def _with_weight(value) -> Callable[[], Message]:
    def make() -> Message:
        reply = _reply(HOSTILE)
        reply.content[METRICS_KEY] = MetricRecord({NUM_EXAMPLES: value})
        return reply

    return make


def _replace_records(content: dict) -> Callable[[], Message]:
    return lambda: Message(RecordDict(content), reply_to=request_to(HOSTILE))


HOSTILE_REPLIES = {
    # the review's case: one more metric than the others
    "extra-metric": (lambda: _reply(HOSTILE, metrics={"extra": 1.0}), r"its metrics \['extra', 'num-examples'\]"),
    "no-weight": (_without_weight, "are not the expected"),
    "nan-weight": (_with_weight(float("nan")), r"'num-examples' \(nan\) is not a finite number"),
    "inf-weight": (_with_weight(float("inf")), "is not a finite number"),
    "zero-weight": (_with_weight(0), r"'num-examples' \(0\) is not in \(0, "),
    "negative-weight": (_with_weight(-70), r"\(-70\) is not in \(0, "),
    "list-weight": (_with_weight([1.0, 2.0]), "is not a finite number"),
    "overflowing-weight": (_with_weight(1e300), r"is not in \(0, "),
    "extra-array": (lambda: _reply(HOSTILE, arrays=_model() | {"x": np.zeros(1, np.float32)}), "are not the global"),
    "reordered-arrays": (lambda: _reply(HOSTILE, arrays=dict(reversed(_model().items()))), "are not the global"),
    "wrong-shape": (lambda: _reply(HOSTILE, arrays=_model() | {"w": np.zeros((2, 3), np.float32)}),
                    r"array 'w' declares \(2, 3\) of float32, the global model's \(3, 2\) of float32"),
    "wrong-dtype": (lambda: _reply(HOSTILE, arrays=_model() | {"b": np.zeros(2, np.float64)}),
                    "array 'b' declares .* of float64"),
    "bytes-disagree-with-shape": (
        lambda: _reply(HOSTILE, arrays=_model() | {"w": forged_array(np.zeros((3000, 2), np.float32), shape=(3, 2))}),
        r"array 'w' refused before decoding: its .npy header says shape \(3000, 2\)",
    ),
    "config-record": (lambda: _reply(HOSTILE, extra=ConfigRecord({"x": 1})), "its records"),
    "second-metric-record": (lambda: _reply(HOSTILE, more=MetricRecord({NUM_EXAMPLES: 1})), "its records"),
    "renamed-array-record": (
        _replace_records({"weights": ArrayRecord({k: Array(v) for k, v in _model().items()}),
                          METRICS_KEY: MetricRecord({NUM_EXAMPLES: 5})}),
        "its records",
    ),
}


def _strategy(name: str) -> ReplyScreen:
    return baseline_strategy(parse_config(FederatedConfig, {"strategy": name, "byzantine_nodes": 1}))


def _configured(name: str) -> ReplyScreen:
    strategy = _strategy(name)
    global_model = ArrayRecord({k: Array(v) for k, v in _model().items()})
    strategy.configure_train(1, global_model, ConfigRecord(), FakeGrid([*HONEST_NODES, HOSTILE]))
    return strategy


class FakeGrid:
    def __init__(self, node_ids) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _assert_same_arrays(got: ArrayRecord, expected: ArrayRecord) -> None:
    assert list(got) == list(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "krum", "bulyan"])
@pytest.mark.parametrize(("make_hostile", "reason"), list(HOSTILE_REPLIES.values()), ids=list(HOSTILE_REPLIES))
def test_a_malformed_reply_among_honest_ones_is_dropped_and_the_round_aggregates_the_rest(
    task_identity, caplog, name, make_hostile, reason
):
    strategy = _configured(name)
    replies = _honest()
    replies.insert(3, make_hostile())
    with caplog.at_level(logging.WARNING, logger="fedcond.federated.screening"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None, "the round goes on with the honest replies"
    assert list(strategy.dropped[1]) == [HOSTILE]
    assert re.search(reason, strategy.dropped[1][HOSTILE]), strategy.dropped[1][HOSTILE]
    assert any(f"dropped reply of node {HOSTILE}" in r.getMessage() for r in caplog.records)
    # the same result as the honest replies alone
    alone, _ = _configured(name).aggregate_train(1, _honest())
    _assert_same_arrays(arrays, alone)


def test_the_expected_arrays_are_the_global_models_even_when_most_replies_differ(task_identity):
    strategy = _configured("fedavg")
    bigger = _model() | {"x": np.zeros(1, np.float32)}
    replies = [_reply(1), _reply(2, arrays=bigger), _reply(3, arrays=bigger)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert sorted(strategy.dropped[1]) == [2, 3]
    _assert_same_arrays(arrays, ArrayRecord({k: Array(v) for k, v in _model(1).items()}))


def test_without_a_configured_round_the_structure_most_replies_share_is_expected(task_identity):
    # Flower's aggregate_train called on its own (no global model seen): the majority decides
    strategy = _strategy("fedavg")
    arrays, _ = strategy.aggregate_train(1, [_reply(1), _reply(2, metrics={"extra": 1.0}), _reply(3)])
    assert list(strategy.dropped[1]) == [2]
    expected = (1.0 * 10 + 3.0 * 30) / 40  # weighted by num-examples: 10 and 30
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((3, 2), expected, np.float32))


def test_a_round_whose_every_reply_is_dropped_keeps_the_model(task_identity):
    strategy = _configured("fedavg")
    arrays, metrics = strategy.aggregate_train(1, [_with_weight(float("nan"))(), _reply(2, metrics={"x": 1.0})])
    assert arrays is None and metrics is None
    assert sorted(strategy.dropped[1]) == [2, HOSTILE]


def test_error_replies_are_logged_as_one_bounded_line_and_not_handed_on(task_identity, caplog):
    strategy = _configured("fedavg")
    reason = "e" * 1_000_000 + "\nround 1: node 5 accepted"
    failed = Message(Error(code=0, reason=reason), reply_to=request_to(5))
    with caplog.at_level(logging.INFO):
        arrays, _ = strategy.aggregate_train(1, [_reply(1), failed])
    assert arrays is not None and strategy.dropped[1] == {}  # the Grid's ledger counts error replies
    assert all(len(r.getMessage()) < 500 and "\nround 1" not in r.getMessage() for r in caplog.records)
    assert any("node 5 replied with an error" in r.getMessage() for r in caplog.records)


def test_the_weight_bound_is_inclusive(task_identity):
    strategy = _configured("fedavg")
    arrays, _ = strategy.aggregate_train(1, [_reply(1, metrics={NUM_EXAMPLES: MAX_WEIGHT})])
    assert arrays is not None and strategy.dropped[1] == {}


def test_every_baseline_is_screened_and_its_weight_metric_expected():
    for name in BASELINES:
        strategy = _strategy(name)
        assert isinstance(strategy, ReplyScreen) and NUM_EXAMPLES in strategy.train_metrics
    with pytest.raises(ValueError, match="the weight metric 'num-examples' is not among"):
        ReplyScreen(_strategy("fedavg").inner, train_metrics=("loss",))


# ---------------------------------------------------------------- a whole run
def _echo_app(message: Message, context: Context) -> Message:
    """Return the received model; partition 0 adds a metric the others do not send."""
    model = message.content.array_records[MODEL_KEY]
    metrics = {NUM_EXAMPLES: 10}
    if context.node_config[PARTITION_ID] == 0:
        metrics["extra"] = 1.0
    content = RecordDict({MODEL_KEY: ArrayRecord(dict(model.items())), METRICS_KEY: MetricRecord(metrics)})
    assert CONFIG_KEY in message.content.config_records
    return Message(content, reply_to=message)


@pytest.mark.parametrize("name", ["fedavg", "fedmedian"])
def test_a_run_with_a_malformed_client_completes_and_counts_it_as_dropped(task_identity, name):
    job = job_from_mapping({"dataset": "digits", "num_clients": 3, "partition": "iid", "strategy": name, "rounds": 2,
                            "train_per_class": 30, "test_per_class": 20, "device": "cpu"})
    report = run_federated(InProcessGrid(_echo_app, num_nodes=3), job)
    assert report.complete and report.trained_rounds == 2
    for entry in report.history[1:]:
        assert entry["accepted"] == 2 and list(entry["dropped"]) == ["1000"]
        assert "its metrics ['extra', 'num-examples']" in entry["dropped"]["1000"]
    assert report.metrics()["dropped"] == 2 and report.metrics()["accepted"] == 4
