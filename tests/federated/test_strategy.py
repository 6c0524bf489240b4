"""FedCond's server steps on mock replies, malicious and broken ones included."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fedcond.config import FederatedConfig, parse_config
from fedcond.federated.aggregation import aggregate_sets
from fedcond.federated.records import (
    CONFIG_KEY,
    EPSILON,
    METRICS_KEY,
    MODEL_KEY,
    POLICY_REFUSED,
    SERVER_ROUND,
    SYNTHETIC_KEY,
    model_from_record,
)
from fedcond.federated.strategy import FedCond
from fedcond.federated.untrusted import client_text
from fedcond.federated.uploads import UploadStore
from fedcond.federated.validation import ReplyRejected, validate_reply
from fedcond.models import get_model
from fedcond.training import predict_logits

from .conftest import error_reply, forged_array, request_to, synthetic_reply


class FakeGrid:
    """Only what configure_train needs."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def _strategy(spec, **overrides) -> FedCond:
    config = parse_config(
        FederatedConfig, {"server_epochs": 2, "distill.ipc": 2, "min_reply_fraction": 0.5, **overrides}
    )
    return FedCond(spec=spec, config=config, device="cpu")


def _configure(strategy: FedCond, nodes, server_round=1, arrays=None) -> list[Message]:
    return list(
        strategy.configure_train(server_round, arrays or ArrayRecord(), ConfigRecord({"x": 1}), FakeGrid(nodes))
    )


def test_configure_train_sends_condense_messages_with_the_round(task_identity, digits_spec):
    strategy = _strategy(digits_spec)
    messages = _configure(strategy, [11, 12, 13])
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    assert all(m.metadata.message_type == "train.condense" for m in messages)
    assert messages[0].content.config_records[CONFIG_KEY][SERVER_ROUND] == 1
    assert MODEL_KEY not in messages[0].content.array_records  # round 1: clients use random nets


@pytest.mark.parametrize(("fraction", "expected"), [(0.15, 1), (0.35, 3), (0.5, 5), (0.01, 1), (1.0, 10)])
def test_partial_participation_samples_as_many_nodes_as_flowers_fedavg(task_identity, digits_spec, fraction, expected):
    # Flower's FedAvg samples int(N * fraction) (at least min_train_nodes = 1); FedCond samples
    # alike (rounding half to even would take 2 of 10 at 0.15, 4 at 0.35: unequal participation)
    strategy = _strategy(digits_spec, fraction_train=fraction)
    assert len(_configure(strategy, range(1, 11))) == expected


def test_multi_round_sends_the_global_model_from_round_two_only_when_asked(task_identity, digits_spec):
    model = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    # by default the clients condense with their own random networks (their policy refuses a
    # server-chosen one outside DP)
    messages = _configure(_strategy(digits_spec, rounds=3), [1, 2], server_round=2, arrays=model)
    assert not any(MODEL_KEY in m.content.array_records for m in messages)
    strategy = _strategy(digits_spec, rounds=3, server_embedder=True)
    messages = _configure(strategy, [1, 2], server_round=2, arrays=model)
    assert all(MODEL_KEY in m.content.array_records for m in messages)


def test_good_replies_are_aggregated_and_a_model_is_trained(task_identity, digits_spec):
    # random images are no class's images: the embedding outlier rule (tests/federated/test_robust.py)
    # would judge them, so this test of the aggregation itself runs without it
    strategy = _strategy(digits_spec, server_epochs=100, **{"robust.enabled": False})
    _configure(strategy, [1, 2])
    replies = [synthetic_reply(1, classes={0: 50, 1: 5}), synthetic_reply(2, classes={1: 45, 2: 30})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and len(arrays) > 0
    assert metrics["accepted"] == 2 and metrics["dropped"] == 0
    assert strategy.rounds[-1].trained and strategy.rounds[-1].union_images == 8
    # the returned weights are a model trained on the union: it fits the 8 union images
    model = model_from_record(get_model(strategy.config.model, digits_spec), arrays)
    fitted = predict_logits(model, strategy.union.images).argmax(1)
    assert (fitted == strategy.union.labels).float().mean().item() >= 0.75
    assert strategy.union is not None and len(strategy.union) == 8
    assert strategy.union.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]


def test_the_global_model_trains_with_the_class_count_weights(task_identity, digits_spec):
    # one image, sent once as class 0 by a client holding 90 real samples of it and four times as
    # class 1 by a client holding 10: the weights (4.5 against 4 x 0.125) must outvote the copies
    image = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    replies = [
        synthetic_reply(1, classes={0: 90}, ipc=1, images=image),
        synthetic_reply(2, classes={1: 10}, ipc=4, images=image.repeat(4, 1, 1, 1)),
    ]
    # the claims stand as sent (robust rule off: two clients give no median to cap against)
    strategy = _strategy(digits_spec, server_epochs=30, **{"distill.ipc": 4, "robust.enabled": False})
    _configure(strategy, [1, 2])
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.union.weights.tolist() == pytest.approx([4.5, 0.125, 0.125, 0.125, 0.125])
    model = model_from_record(get_model(strategy.config.model, digits_spec), arrays)
    logits = predict_logits(model, image)[0]
    assert logits.argmax().item() == 0 and logits[0] > logits[1]


@pytest.mark.parametrize(
    ("make_reply", "reason"),
    [
        (lambda: synthetic_reply(9, classes={0: 10}, images=torch.randn(2, 1, 7, 7)), "shape"),
        (lambda: synthetic_reply(9, classes={0: 10}, images=torch.full((2, 1, 8, 8), float("nan"))), "NaN"),
        (lambda: synthetic_reply(9, classes={0: 10}, labels=torch.tensor([0, 12])), "outside the valid range"),
        (lambda: synthetic_reply(9, classes={0: 10}, images=torch.randn(3, 1, 8, 8)), "one label per image"),
        (lambda: synthetic_reply(9, classes={0: 10}, labels=torch.zeros(500, dtype=torch.long)), "exceed the cap"),
        (lambda: synthetic_reply(9, classes={0: 10}, labels=torch.tensor([0.0, 0.0])), "int64"),
        (lambda: synthetic_reply(9, classes={0: 10}, counts=[10] * 3), "per-class counts"),
        (lambda: synthetic_reply(9, classes={0: 10}, labels=torch.tensor([0, 3])), "no real samples"),
        (lambda: synthetic_reply(9, classes={0: 10}, num_examples=float("nan")), "disagrees with the class counts"),
        (lambda: synthetic_reply(9, classes={0: 10}, num_examples=float("inf")), "disagrees with the class counts"),
        (lambda: synthetic_reply(9, classes={0: 10}, num_examples=10.5), "disagrees with the class counts"),
        (
            lambda: synthetic_reply(
                9, classes={0: 10}, images=torch.zeros(0, 1, 8, 8), labels=torch.zeros(0, dtype=torch.long)
            ),
            "no synthetic images",
        ),
        (lambda: error_reply(9), "client error: ValueError: client crashed"),
        # unchecked, these would end the run: TypeError / EOFError from Array.numpy()
        (lambda: _raw_images_reply(9, stype="torch.raw", data=bytes(2 * 64 * 4)), "serialisation 'torch.raw'"),
        (lambda: _raw_images_reply(9, stype="numpy.ndarray", data=b""), "no readable .npy header"),
        # unchecked, these would overflow int64 (crash), wrap around to an accepted negative total,
        # or outweigh everyone
        (lambda: synthetic_reply(9, classes={0: 10}, counts=[1e300] + [0.0] * 9), "integers in 0.."),
        (lambda: synthetic_reply(9, classes={0: 10}, counts=[2**62, 2**62] + [0] * 8, num_examples=-(2**63)),
         "integers in 0.."),
        (lambda: synthetic_reply(9, classes={0: 10}, counts=[2**40] + [0] * 9), "integers in 0.."),
        (lambda: synthetic_reply(9, classes={0: 10}, counts=[-1, 11] + [0] * 8), "integers in 0.."),
    ],
    ids=[
        "wrong-shape", "nan", "label-range", "label-count", "over-cap", "dtype", "counts", "orphan-class",
        "nan-num-examples", "inf-num-examples", "fractional-num-examples", "empty-set", "client-exception",
        "torch-serialisation", "empty-payload", "count-overflow", "count-wraparound", "count-inflation",
        "negative-count",
    ],
)
def test_malicious_or_broken_reply_is_dropped_and_the_round_goes_on(
    task_identity, digits_spec, caplog, make_reply, reason
):
    strategy = _strategy(digits_spec)
    _configure(strategy, [1, 2, 9])
    replies = [synthetic_reply(1, classes={0: 50}), make_reply(), synthetic_reply(2, classes={1: 40})]
    with caplog.at_level(logging.WARNING, logger="fedcond.federated.strategy"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None, "two of three valid replies meet min_reply_fraction=0.5"
    assert metrics["accepted"] == 2 and metrics["dropped"] == 1
    assert reason in strategy.rounds[-1].dropped[9]
    assert any("dropped reply of node 9" in r.message for r in caplog.records)
    assert set(strategy.union.node_ids) == {1, 2}


def _with_epsilon(reply: Message, epsilon: float) -> Message:
    reply.content.metric_records[METRICS_KEY][EPSILON] = epsilon
    return reply


def test_federation_epsilon_counts_every_node_in_every_round_dropped_replies_too(task_identity, digits_spec):
    # the federation's epsilon is the worst client's cumulative one (parallel composition); it used
    # to be taken over the last round's accepted replies only
    strategy = _strategy(digits_spec, rounds=2, fraction_train=0.5)
    _configure(strategy, [1, 2, 3])
    strategy.aggregate_train(1, [
        _with_epsilon(synthetic_reply(1, classes={0: 50}), 3.0),
        _with_epsilon(synthetic_reply(2, classes={0: 10}, labels=torch.tensor([0, 12])), 5.0),  # dropped
    ])
    _configure(strategy, [1, 2, 3], server_round=2)
    strategy.aggregate_train(2, [_with_epsilon(synthetic_reply(3, classes={1: 40}), 2.0)])
    assert strategy.rounds[0].dropped and strategy.rounds[-1].client_metrics["client-max-epsilon"] == 2.0
    assert strategy.node_epsilon == {1: 3.0, 2: 5.0, 3: 2.0}
    assert strategy.federation_epsilon == 5.0


def _raw_images_reply(node_id: int, *, stype: str, data: bytes) -> Message:
    reply = synthetic_reply(node_id, classes={0: 10})
    arrays = reply.content.array_records[SYNTHETIC_KEY]
    arrays["images"] = Array(dtype="float32", shape=(2, 1, 8, 8), stype=stype, data=data)
    return reply


def test_missing_records_are_rejected_with_a_reason(task_identity, digits_spec):
    empty = Message(RecordDict(), reply_to=request_to(4))
    with pytest.raises(ReplyRejected, match=SYNTHETIC_KEY):
        validate_reply(empty, num_classes=10, image_shape=(1, 8, 8), max_images=20)


def test_too_few_valid_replies_keep_the_previous_model(task_identity, digits_spec):
    strategy = _strategy(digits_spec, min_reply_fraction=0.75)
    _configure(strategy, [1, 2, 3, 4])
    replies = [synthetic_reply(1, classes={0: 9}), error_reply(2), error_reply(3), error_reply(4)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None
    assert metrics["accepted"] == 1 and not strategy.rounds[-1].trained


def test_a_client_failing_later_keeps_its_earlier_set(task_identity, digits_spec):
    strategy = _strategy(digits_spec, rounds=2, min_reply_fraction=0.5)
    _configure(strategy, [1, 2], server_round=1)
    strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 20}), synthetic_reply(2, classes={5: 20})])
    _configure(strategy, [1, 2], server_round=2)
    arrays, _ = strategy.aggregate_train(2, [synthetic_reply(1, classes={0: 20}, seed=5), error_reply(2)])
    assert arrays is not None
    assert sorted(set(strategy.union.labels.tolist())) == [0, 5], "node 2's round-1 set is not lost"


def test_class_count_weights_follow_real_counts(task_identity, digits_spec):
    strategy = _strategy(digits_spec)
    replies = [synthetic_reply(1, classes={0: 90, 1: 10}), synthetic_reply(2, classes={0: 10})]
    sets = [validate_reply(r, num_classes=10, image_shape=(1, 8, 8), max_images=20) for r in replies]
    union = aggregate_sets(sets, num_classes=10)
    assert union.weights.mean().item() == pytest.approx(1.0)
    w = union.weights
    # class 0: client 1 (90 real, 2 images) vs client 2 (10 real, 2 images) -> 9:1 per image
    class0 = w[union.labels == 0]
    assert sorted(class0.tolist()) == pytest.approx([class0.min().item()] * 2 + [9 * class0.min().item()] * 2)
    # class totals follow the real class counts (100 vs 10)
    assert (w[union.labels == 0].sum() / w[union.labels == 1].sum()).item() == pytest.approx(10.0)
    assert strategy.max_images == 20


def test_weights_use_each_clients_actual_image_count(task_identity, digits_spec):
    # class 0: client 1 sends 4 images for 80 real samples, client 2 sends 1 image for 20
    one = synthetic_reply(1, classes={0: 80}, labels=torch.zeros(4, dtype=torch.long))
    two = synthetic_reply(2, classes={0: 20}, labels=torch.zeros(1, dtype=torch.long))
    sets = [validate_reply(r, num_classes=10, image_shape=(1, 8, 8), max_images=20) for r in (one, two)]
    union = aggregate_sets(sets, num_classes=10)
    w = union.weights
    assert sorted(union.node_ids) == [1, 2]
    # each image stands for n/m real samples: 80/4 = 20 and 20/1 = 20 -> equal weights, mean 1
    torch.testing.assert_close(w, torch.ones(5))


def test_union_and_global_model_do_not_depend_on_reply_order_or_node_ids(task_identity, digits_spec):
    # Flower's simulation draws new node IDs every run and replies arrive in any order
    contents = [
        {"classes": {0: 30, 1: 10}, "images": torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(1))},
        {"classes": {0: 10, 2: 40}, "images": torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(2))},
        {"classes": {3: 20}, "images": torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))},
    ]

    def run(order: list[int], node_ids: list[int]):
        strategy = _strategy(digits_spec)
        _configure(strategy, node_ids)
        arrays, _ = strategy.aggregate_train(1, [synthetic_reply(node_ids[i], **contents[i]) for i in order])
        return strategy.union, model_from_record(get_model("convnet", digits_spec), arrays)

    first_union, first_model = run([0, 1, 2], [11, 12, 13])
    second_union, second_model = run([1, 2, 0], [905, 7, 42])
    torch.testing.assert_close(first_union.images, second_union.images, rtol=0, atol=0)
    torch.testing.assert_close(first_union.weights, second_union.weights, rtol=0, atol=0)
    for a, b in zip(first_model.state_dict().values(), second_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_aggregating_nothing_is_refused():
    with pytest.raises(ValueError, match="no client set to aggregate"):
        aggregate_sets([], num_classes=10)


def test_multi_formation_sets_are_decoded_and_weighted_per_tile(task_identity, digits_spec):
    from fedcond.distill.formation import decode_formation

    strategy = _strategy(digits_spec, **{"distill.factor": 2})
    reply = synthetic_reply(1, classes={0: 80, 1: 40})
    kept = validate_reply(reply, num_classes=10, image_shape=(1, 8, 8), max_images=20, factor=2)
    assert kept.synthetic.factor == 2
    union = aggregate_sets([kept], num_classes=10)
    # 2 stored images per class -> 8 training tiles per class, each standing for n / 8 real samples
    assert len(union) == 4 * len(kept.synthetic)
    torch.testing.assert_close(union.images, decode_formation(kept.synthetic.images, factor=2))
    w = union.weights
    assert w.mean().item() == pytest.approx(1.0)
    assert (w[union.labels == 0][0] / w[union.labels == 1][0]).item() == pytest.approx(2.0)
    # the strategy passes the job's factor to validation and trains on the decoded union
    strategy.aggregate_train(1, [reply])
    assert strategy.union is not None and len(strategy.union) == 4 * len(kept.synthetic)
    assert strategy.max_images == 20  # the cap counts stored images


@pytest.mark.parametrize(
    ("carried", "declared", "reason"),
    [(2000, 2, "header says shape (2000, 1, 8, 8)"), (21, 21, "21 images exceed the cap of 20")],
    ids=["bytes-disagree-with-shape", "bytes-over-the-cap"],
)
def test_a_reply_larger_than_it_declares_or_the_cap_is_dropped_undecoded_and_unstored(
    task_identity, digits_spec, tmp_path, monkeypatch, carried, declared, reason
):
    strategy = _strategy(digits_spec)
    strategy.uploads = UploadStore(tmp_path / "uploads", spec=digits_spec, max_images=strategy.max_images)
    _configure(strategy, [1, 2, 9])
    forged = synthetic_reply(9, classes={0: 10})
    arrays = forged.content.array_records[SYNTHETIC_KEY]
    arrays["images"] = forged_array(np.zeros((carried, 1, 8, 8), np.float32), shape=(declared, 1, 8, 8))
    arrays["labels"] = forged_array(np.zeros(carried, np.int64), shape=(declared,))
    decoded = []
    numpy = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: decoded.append(self) or numpy(self))
    replies = [synthetic_reply(1, classes={0: 50}), forged, synthetic_reply(2, classes={1: 40})]
    trained, metrics = strategy.aggregate_train(1, replies)
    assert trained is not None and metrics["accepted"] == 2 and metrics["dropped"] == 1
    assert reason in strategy.rounds[-1].dropped[9]
    assert not any(a is arrays["images"] or a is arrays["labels"] for a in decoded)
    assert sorted(p.name for p in (tmp_path / "uploads" / "round-1").iterdir()) == ["client-1.npz", "client-2.npz"]


@pytest.mark.parametrize("code", [POLICY_REFUSED, 0], ids=["refusal", "client-error"])
def test_a_clients_reason_reaches_the_log_and_report_as_one_bounded_line(task_identity, digits_spec, caplog, code):
    strategy = _strategy(digits_spec)
    _configure(strategy, [1, 2, 9])
    reason = "x" * 5_000_000 + "\nround 1: node 9 accepted"
    hostile = Message(Error(code=code, reason=reason), reply_to=request_to(9))
    with caplog.at_level(logging.WARNING, logger="fedcond.federated.strategy"):
        arrays, _ = strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 50}), hostile,
                                                 synthetic_reply(2, classes={1: 40})])
    assert arrays is not None
    report = strategy.rounds[-1]
    stored = (report.refused if code == POLICY_REFUSED else report.dropped)[9]
    assert stored.endswith(f"x ... [{len(reason)} characters, truncated]") and len(stored) < 400
    assert report.clients[9]["error"] == client_text(reason) and "\n" not in report.clients[9]["error"]
    logged = [r.getMessage() for r in caplog.records if "node 9" in r.getMessage()]
    assert logged and all("\n" not in m and len(m) < 500 for m in logged)


@pytest.mark.parametrize("epsilon", [float("nan"), float("inf"), -1.0])
def test_an_impossible_epsilon_drops_the_reply_and_leaves_the_rounds_epsilon_finite(
    task_identity, digits_spec, epsilon
):
    strategy = _strategy(digits_spec)
    _configure(strategy, [1, 2, 9])
    hostile = _with_epsilon(synthetic_reply(9, classes={2: 30}), epsilon)
    replies = [_with_epsilon(synthetic_reply(1, classes={0: 50}), 3.0), hostile,
               _with_epsilon(synthetic_reply(2, classes={1: 40}), 2.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics["dropped"] == 1
    assert "metric 'epsilon'" in strategy.rounds[-1].dropped[9]
    assert strategy.rounds[-1].client_metrics["client-max-epsilon"] == 3.0
    assert strategy.federation_epsilon == 3.0


def test_a_non_finite_informational_metric_does_not_poison_the_rounds_means(task_identity, digits_spec):
    strategy = _strategy(digits_spec)
    _configure(strategy, [1, 2])
    nan_seconds = synthetic_reply(2, classes={1: 40})
    nan_seconds.content.metric_records[METRICS_KEY]["distill-seconds"] = float("nan")
    strategy.aggregate_train(1, [synthetic_reply(1, classes={0: 50}), nan_seconds])
    assert strategy.rounds[-1].accepted == [1, 2]
    assert strategy.rounds[-1].client_metrics["client-mean-distill-seconds"] == 1.0  # the NaN left out
