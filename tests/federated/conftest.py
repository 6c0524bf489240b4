"""Shared fixtures: mock Flower messages without a running SuperLink."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcond.data import get_spec
from fedcond.federated.records import (
    CLASS_COUNTS,
    CONDENSE_ACTION,
    METRICS_KEY,
    NUM_EXAMPLES,
    SYNTHETIC_KEY,
)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Messages need a run id outside a running app; set one for the test and restore it."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def digits_spec():
    return get_spec("digits")


def request_to(node_id: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=node_id, message_type=f"train.{CONDENSE_ACTION}")


def synthetic_reply(
    node_id: int,
    *,
    classes: dict[int, int],
    ipc: int = 2,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    counts: list[int] | None = None,
    num_examples: float | None = None,
    seed: int = 0,
) -> Message:
    """A reply like the ClientApp's: ``classes`` maps class -> real count on the client."""
    generator = torch.Generator().manual_seed(seed + node_id)
    held = sorted(classes)
    if labels is None:
        labels = torch.tensor(held).repeat_interleave(ipc)
    if images is None:
        images = torch.randn((len(labels), 1, 8, 8), generator=generator)
    if counts is None:
        counts = [classes.get(c, 0) for c in range(10)]
    arrays = ArrayRecord({"images": Array(images.numpy()), "labels": Array(labels.numpy())})
    reported = int(sum(counts)) if num_examples is None else num_examples
    metrics = MetricRecord({NUM_EXAMPLES: reported, CLASS_COUNTS: counts, "distill-seconds": 1.0})
    return Message(RecordDict({SYNTHETIC_KEY: arrays, METRICS_KEY: metrics}), reply_to=request_to(node_id))


def error_reply(node_id: int, reason: str = "ValueError: client crashed") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=request_to(node_id))


def forged_array(values: np.ndarray, *, shape: tuple[int, ...], dtype: str | None = None, tail: bytes = b"") -> Array:
    """An Array that declares ``shape`` (and ``dtype``) while its bytes hold ``values`` (plus ``tail``)."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    declared = str(values.dtype) if dtype is None else dtype
    return Array(dtype=declared, shape=tuple(shape), stype="numpy.ndarray", data=buffer.getvalue() + tail)
