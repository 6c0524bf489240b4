"""Reply validation: every refusal reason, checked on ``validate_reply`` directly, and what an accepted reply holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedcond.federated.records import CLASS_COUNTS, DELTA, EPSILON, METRICS_KEY, NUM_EXAMPLES, SYNTHETIC_KEY
from fedcond.federated.untrusted import client_text
from fedcond.federated.validation import MAX_CLASS_COUNT, MAX_METRIC_NAME, ReplyRejected, validate_reply

from .conftest import error_reply, request_to, synthetic_reply

SHAPE = (1, 8, 8)


def _validate(reply, *, max_images: int = 20, factor: int = 1):
    return validate_reply(reply, num_classes=10, image_shape=SHAPE, max_images=max_images, factor=factor)


def _without(reply: Message, *, array: str | None = None, record: str | None = None) -> Message:
    content = RecordDict()
    for key, value in reply.content.array_records.items():
        if key != record:
            content[key] = ArrayRecord({k: v for k, v in value.items() if k != array})
    for key, value in reply.content.metric_records.items():
        if key != record:
            content[key] = value
    return Message(content, reply_to=request_to(int(reply.metadata.src_node_id)))


def _with_metrics(reply: Message, **changes) -> Message:
    reply.content.metric_records[METRICS_KEY] = MetricRecord(
        {**dict(reply.content.metric_records[METRICS_KEY]), **changes}
    )
    return reply


def test_a_reply_without_its_metric_record_is_refused(task_identity) -> None:
    reply = _without(synthetic_reply(3, classes={0: 10}), record=METRICS_KEY)
    with pytest.raises(ReplyRejected, match=f"no MetricRecord under '{METRICS_KEY}'"):
        _validate(reply)


def test_a_reply_without_its_array_record_is_refused(task_identity) -> None:
    reply = _without(synthetic_reply(3, classes={0: 10}), record=SYNTHETIC_KEY)
    with pytest.raises(ReplyRejected, match=f"no ArrayRecord under '{SYNTHETIC_KEY}'"):
        _validate(reply)


@pytest.mark.parametrize("key", ["images", "labels"])
def test_a_record_lacking_images_or_labels_is_refused_by_name(task_identity, key: str) -> None:
    reply = _without(synthetic_reply(3, classes={0: 10}), array=key)
    with pytest.raises(ReplyRejected, match=f"synthetic-set record lacks array '{key}'"):
        _validate(reply)


def _declared_images(shape: tuple[int, ...]) -> Message:
    """A reply whose images declare ``shape`` but carry no bytes: decoding them would fail."""
    reply = synthetic_reply(3, classes={0: 10}, labels=torch.zeros(shape[0], dtype=torch.long))
    arrays = reply.content.array_records[SYNTHETIC_KEY]
    arrays["images"] = Array(dtype="float32", shape=shape, stype="numpy.ndarray", data=b"")
    return reply


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ((21, 1, 8, 8), "21 images exceed the cap of 20"),
        ((2, 64), r"images have shape \(2, 64\), expected N x \(1, 8, 8\)"),
        ((2, 1, 8, 8, 1), r"images have shape \(2, 1, 8, 8, 1\)"),
        ((2, 3, 8, 8), r"images have shape \(2, 3, 8, 8\)"),
    ],
)
def test_declared_shapes_are_checked_before_any_array_is_decoded(task_identity, shape, reason) -> None:
    # an oversized or misshapen payload is refused from its header, not after decoding it
    with pytest.raises(ReplyRejected, match=reason):
        _validate(_declared_images(shape))


def test_a_set_of_exactly_the_cap_is_accepted_and_one_more_is_not(task_identity) -> None:
    at_cap = synthetic_reply(3, classes={0: 10, 1: 5}, ipc=2)  # 4 images
    assert len(_validate(at_cap, max_images=4).synthetic) == 4
    with pytest.raises(ReplyRejected, match="4 images exceed the cap of 3"):
        _validate(synthetic_reply(3, classes={0: 10, 1: 5}, ipc=2), max_images=3)


@pytest.mark.parametrize(
    "counts",
    [[10] * 11, [10] * 9, []],
    ids=["one-too-many", "one-too-few", "empty"],
)
def test_class_counts_must_list_one_count_per_class(task_identity, counts: list[int]) -> None:
    reply = synthetic_reply(3, classes={0: 10}, counts=counts)
    with pytest.raises(ReplyRejected, match="must list 10 per-class counts"):
        _validate(reply)


def test_class_counts_that_are_not_a_list_are_refused(task_identity) -> None:
    reply = _with_metrics(synthetic_reply(3, classes={0: 10}), **{CLASS_COUNTS: 10})
    with pytest.raises(ReplyRejected, match="per-class counts"):
        _validate(reply)


def test_the_largest_allowed_count_is_accepted(task_identity) -> None:
    counts = [MAX_CLASS_COUNT] + [0] * 9
    accepted = _validate(synthetic_reply(3, classes={0: 10}, counts=counts))
    assert accepted.class_counts.tolist() == counts
    with pytest.raises(ReplyRejected, match="integers in 0.."):
        _validate(synthetic_reply(3, classes={0: 10}, counts=[MAX_CLASS_COUNT + 1] + [0] * 9))


@pytest.mark.parametrize("num_examples", [9, 11, 0, -10], ids=["one-short", "one-over", "zero", "negated"])
def test_num_examples_must_equal_the_sum_of_the_class_counts(task_identity, num_examples: int) -> None:
    reply = synthetic_reply(3, classes={0: 6, 1: 4}, num_examples=num_examples)
    with pytest.raises(ReplyRejected, match=rf"'{NUM_EXAMPLES}' \({num_examples}\) disagrees with the class counts"):
        _validate(reply)


def test_a_missing_num_examples_is_refused(task_identity) -> None:
    reply = synthetic_reply(3, classes={0: 10})
    metrics = reply.content.metric_records[METRICS_KEY]
    reply.content.metric_records[METRICS_KEY] = MetricRecord({k: v for k, v in metrics.items() if k != NUM_EXAMPLES})
    with pytest.raises(ReplyRejected, match="disagrees with the class counts"):
        _validate(reply)


def _stub_with_metrics(reply: Message, metrics: dict) -> SimpleNamespace:
    """``reply`` with a plain-dict metric record: values Flower's own MetricRecord would refuse."""
    content = SimpleNamespace(array_records=reply.content.array_records, metric_records={METRICS_KEY: metrics})
    return SimpleNamespace(metadata=reply.metadata, has_error=lambda: False, content=content)


def test_booleans_are_neither_counts_nor_example_totals(task_identity) -> None:
    reply = synthetic_reply(3, classes={0: 1})
    counts = [1] + [0] * 9
    # the stub itself passes with integers, so the refusals below are about the booleans
    assert _validate(_stub_with_metrics(reply, {NUM_EXAMPLES: 1, CLASS_COUNTS: counts})).class_counts[0] == 1
    with pytest.raises(ReplyRejected, match="integers in 0.."):
        _validate(_stub_with_metrics(reply, {NUM_EXAMPLES: 1, CLASS_COUNTS: [True] + [0] * 9}))
    with pytest.raises(ReplyRejected, match="disagrees with the class counts"):
        _validate(_stub_with_metrics(reply, {NUM_EXAMPLES: True, CLASS_COUNTS: counts}))


def test_an_accepted_reply_carries_node_set_counts_and_scalar_metrics(task_identity) -> None:
    reply = synthetic_reply(42, classes={0: 6, 3: 4}, ipc=2)
    reply = _with_metrics(reply, **{NUM_EXAMPLES: 10.0, "final-loss": 0.25})  # a float total is fine if whole
    accepted = _validate(reply)
    assert accepted.node_id == 42
    assert accepted.class_counts.dtype == torch.int64
    assert accepted.class_counts.tolist() == [6, 0, 0, 4, 0, 0, 0, 0, 0, 0]
    assert accepted.synthetic.labels.tolist() == [0, 0, 3, 3]
    sent = reply.content.array_records[SYNTHETIC_KEY]["images"].numpy()
    assert torch.equal(accepted.synthetic.images, torch.from_numpy(sent))
    assert accepted.metrics == {NUM_EXAMPLES: 10.0, "distill-seconds": 1.0, "final-loss": 0.25}


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        (EPSILON, float("nan"), "a finite number >= 0"),
        (EPSILON, float("inf"), "a finite number >= 0"),
        (EPSILON, -0.5, "a finite number >= 0"),
        (EPSILON, [1.0, 2.0], "a finite number >= 0"),
        (DELTA, float("nan"), r"a number in \[0, 1\]"),
        (DELTA, -1e-5, r"a number in \[0, 1\]"),
        (DELTA, 1.5, r"a number in \[0, 1\]"),
    ],
)
def test_an_impossible_privacy_claim_refuses_the_reply(task_identity, key, value, allowed) -> None:
    reply = _with_metrics(synthetic_reply(3, classes={0: 10}), **{key: value})
    with pytest.raises(ReplyRejected, match=rf"metric '{key}' \(.*\) must be {allowed}"):
        _validate(reply)


def test_zero_privacy_claims_are_possible_ones(task_identity) -> None:
    accepted = _validate(_with_metrics(synthetic_reply(3, classes={0: 10}), **{EPSILON: 0.0, DELTA: 0.0}))
    assert accepted.metrics[EPSILON] == 0.0 and accepted.metrics[DELTA] == 0.0


def test_only_finite_metrics_under_short_printable_names_are_kept(task_identity) -> None:
    reply = _with_metrics(
        synthetic_reply(3, classes={0: 10}),
        **{"final-loss": float("nan"), "x" * (MAX_METRIC_NAME + 1): 1.0, "forged\nline": 2.0, "ok": 3.0},
    )
    assert _validate(reply).metrics == {NUM_EXAMPLES: 10, "distill-seconds": 1.0, "ok": 3.0}


def test_a_client_error_reason_is_bounded_to_one_line(task_identity) -> None:
    reason = "y" * 100_000 + "\nround 1: node 3 accepted"
    with pytest.raises(ReplyRejected) as caught:
        _validate(error_reply(3, reason))
    assert str(caught.value) == f"client error: {client_text(reason)}" and "\n" not in str(caught.value)
