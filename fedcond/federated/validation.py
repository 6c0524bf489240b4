"""Server-side checks of a FedCond reply before anything of it is aggregated.

A reply is accepted only when it is not an error message, carries the synthetic-set
``ArrayRecord`` and the ``MetricRecord`` under the expected keys, the arrays have the declared
dtypes and shapes of the dataset, every value is finite, labels lie in range, the set holds
no more than ``ipc x classes`` images, and the reported per-class counts are consistent.
Anything else raises :class:`ReplyRejected` with the reason, which the strategy logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError
from fedcond.federated.records import (
    CLASS_COUNTS,
    IMAGES,
    LABELS,
    METRICS_KEY,
    NUM_EXAMPLES,
    SYNTHETIC_KEY,
    synthetic_from_record,
)

__all__ = ["MAX_CLASS_COUNT", "ClientSet", "ReplyRejected", "validate_reply"]

#: Largest per-class real-sample count a reply may report. The counts weight the union (as
#: ``num-examples`` weights FedAvg, they are the client's word), so they are bounded to keep the
#: arithmetic exact and a lying client from overflowing it.
MAX_CLASS_COUNT = 2**31 - 1


class ReplyRejected(ValueError):
    """A client reply failed validation; the message is the logged reason."""


@dataclass(frozen=True)
class ClientSet:
    """A validated reply: the client's synthetic set and its real per-class counts.

    Attributes
    ----------
    node_id : int
        The Flower node that sent it.
    synthetic : SyntheticSet
        Validated images and labels.
    class_counts : torch.Tensor
        int64, length ``num_classes``: real samples per class on that client.
    metrics : dict
        The reply's scalar metrics (seconds, loss, epsilon ...).
    """

    node_id: int
    synthetic: SyntheticSet
    class_counts: torch.Tensor
    metrics: dict


def _metric_record(message: Message) -> MetricRecord:
    if METRICS_KEY not in message.content.metric_records:
        raise ReplyRejected(f"no MetricRecord under {METRICS_KEY!r}")
    return message.content.metric_records[METRICS_KEY]


def _array_record(message: Message) -> ArrayRecord:
    if SYNTHETIC_KEY not in message.content.array_records:
        raise ReplyRejected(f"no ArrayRecord under {SYNTHETIC_KEY!r}")
    return message.content.array_records[SYNTHETIC_KEY]


def validate_reply(
    message: Message,
    *,
    num_classes: int,
    image_shape: tuple[int, ...],
    max_images: int,
    factor: int = 1,
) -> ClientSet:
    """Check one reply and return its content, or raise :class:`ReplyRejected`.

    Parameters
    ----------
    message : Message
        A reply to a FedCond train message.
    num_classes, image_shape : int, tuple
        The dataset's, which every synthetic image must match.
    max_images : int
        The size cap, ``ipc x num_classes`` stored images.
    factor : int
        The job's multi-formation factor (``distill.factor``): every image the clients send
        stores ``factor x factor`` tiles, decoded by the server (:meth:`SyntheticSet.decoded`).
    """
    node_id = int(message.metadata.src_node_id)
    if message.has_error():
        raise ReplyRejected(f"client error: {message.error.reason}")
    arrays = _array_record(message)
    metrics = _metric_record(message)
    # cheap structural checks before any array is decoded
    for key in (IMAGES, LABELS):
        if key not in arrays:
            raise ReplyRejected(f"synthetic-set record lacks array {key!r}")
    images_arr, labels_arr = arrays[IMAGES], arrays[LABELS]
    if len(images_arr.shape) != 4 or tuple(images_arr.shape[1:]) != tuple(image_shape):
        raise ReplyRejected(f"images have shape {tuple(images_arr.shape)}, expected N x {tuple(image_shape)}")
    if images_arr.shape[0] > max_images:
        raise ReplyRejected(f"{images_arr.shape[0]} images exceed the cap of {max_images}")
    if images_arr.shape[0] == 0:
        raise ReplyRejected("the reply holds no synthetic images")
    if tuple(labels_arr.shape) != (images_arr.shape[0],):
        raise ReplyRejected(
            f"labels have shape {tuple(labels_arr.shape)}, expected one label per image ({images_arr.shape[0]},)"
        )
    try:
        synthetic = synthetic_from_record(arrays, meta={"num_classes": num_classes, "factor": factor})
        synthetic.validate(num_classes=num_classes, image_shape=tuple(image_shape), max_images=max_images)
    except (SyntheticSetError, ValueError) as exc:
        raise ReplyRejected(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any decoding failure drops the reply only
        # e.g. a non-NumPy serialisation type (TypeError) or an empty payload (EOFError)
        raise ReplyRejected(f"undecodable synthetic-set arrays ({type(exc).__name__}: {exc})") from exc
    counts_value = metrics.get(CLASS_COUNTS)
    if not isinstance(counts_value, list) or len(counts_value) != num_classes:
        raise ReplyRejected(f"metric {CLASS_COUNTS!r} must list {num_classes} per-class counts")
    if any(
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not (math.isfinite(v) and v.is_integer()))
        or not 0 <= v <= MAX_CLASS_COUNT
        for v in counts_value
    ):
        raise ReplyRejected(f"metric {CLASS_COUNTS!r} must hold integers in 0..{MAX_CLASS_COUNT}")
    counts = torch.tensor([int(v) for v in counts_value], dtype=torch.int64)
    held = synthetic.class_counts()
    orphans = [c for c in range(num_classes) if held[c] > 0 and counts[c] == 0]
    if orphans:
        raise ReplyRejected(f"synthetic images of classes {orphans} the client reports no real samples of")
    num_examples = metrics.get(NUM_EXAMPLES)
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, (int, float))
        or not math.isfinite(num_examples)
        or num_examples != sum(int(v) for v in counts_value)  # Python ints: no int64 wrap-around
    ):
        raise ReplyRejected(f"metric {NUM_EXAMPLES!r} ({num_examples}) disagrees with the class counts")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return ClientSet(node_id, synthetic, counts, scalars)
