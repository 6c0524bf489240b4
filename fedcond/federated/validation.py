"""Server-side checks of a FedCond reply before anything of it is aggregated.

A reply is accepted only when it is not an error message, carries the synthetic-set
``ArrayRecord`` and the ``MetricRecord`` under the expected keys, the arrays declare the dtypes
and shapes of the dataset and their bytes hold exactly that (checked before decoding by
:func:`~fedcond.federated.untrusted.check_array_payload`), every value is finite, labels lie in
range, the set holds no more than ``ipc x classes`` images, the reported per-class counts are
consistent, and a reported ``epsilon`` is a finite number >= 0 and ``delta`` one in [0, 1].
Anything else raises :class:`ReplyRejected` with the reason, which the strategy logs; text the
client wrote (an error reason) enters the reason bounded to one line
(:func:`~fedcond.federated.untrusted.client_text`).

Two bounds stop a finite but hostile reply (``docs/robustness.md``): every pixel must lie in
the dataset's normalised pixel range widened by a margin (:func:`pixel_bounds`; a set beyond
it is refused, not clamped: a clamped set of extreme values would still enter the union as
saturated images), and no class may hold more than ``ipc`` stored images (one client cannot
flood a class). Claimed counts are capped by ``max_class_count``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedcond.data.registry import DatasetSpec
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError
from fedcond.federated.records import (
    CLASS_COUNTS,
    DELTA,
    EPSILON,
    IMAGES,
    LABELS,
    METRICS_KEY,
    NUM_EXAMPLES,
    SYNTHETIC_KEY,
    synthetic_from_record,
)
from fedcond.federated.untrusted import (
    MAX_METRIC_NAME,
    ArrayPayloadError,
    check_array_payload,
    client_metrics,
    client_text,
    finite_number,
)

__all__ = [
    "MAX_CLASS_COUNT",
    "MAX_METRIC_NAME",
    "PIXEL_MARGINS",
    "ClientSet",
    "ReplyRejected",
    "pixel_bounds",
    "validate_reply",
]

#: Largest per-class real-sample count a reply may report. The counts weight the union (as
#: ``num-examples`` weights FedAvg, they are the client's word), so they are bounded to keep the
#: arithmetic exact and a lying client from overflowing it.
MAX_CLASS_COUNT = 2**31 - 1


#: default pixel margin (in widths of the normalised pixel range) per DM matching. Honest sets
#: measured on digits, Dirichlet(0.1), 10 clients (docs/robustness.md): mean matching from real
#: images overshoots the range by at most 0.27 widths after 200 iterations, from noise by up to
#: 2.4 after 5 iterations; MMD matching (which grows images) by up to 90 after 200. The margins
#: leave headroom; the bound's job is to keep values far from float32 overflow, which is what a
#: finite but extreme reply uses to poison server training (the outlier rule judges content).
PIXEL_MARGINS: dict[str, float] = {"mean": 10.0, "mmd": 1000.0}
DEFAULT_PIXEL_MARGIN = 1000.0




class ReplyRejected(ValueError):
    """A client reply failed validation; the message is the logged reason."""


def _check_privacy_claims(metrics: MetricRecord) -> None:
    """Refuse a reported epsilon that is not a finite number >= 0, or a delta outside [0, 1].

    The server takes the federation's epsilon as the largest one reported: a NaN would make
    that maximum NaN, so a reply claiming one is refused like any other impossible number.
    """
    for key, high in ((EPSILON, math.inf), (DELTA, 1.0)):
        if key not in metrics:
            continue
        value = metrics[key]
        if not (finite_number(value) and 0 <= value <= high):
            allowed = "a finite number >= 0" if high == math.inf else f"a number in [0, {high:g}]"
            raise ReplyRejected(f"metric {key!r} ({client_text(value, limit=40)}) must be {allowed}")


def _reported_scalars(metrics: MetricRecord) -> dict[str, float]:
    """The reply's finite scalar metrics under short printable names (the ones averaged per round).

    A non-finite value (a NaN loss) is left out rather than averaged into the round's means.
    """
    return {key: value for key, value in client_metrics(metrics).items() if not isinstance(value, list)}


def pixel_bounds(spec: DatasetSpec, *, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel lowest and highest synthetic pixel value a reply may hold.

    Pixels ``[0, 1]`` map to ``[(0 - mean) / std, (1 - mean) / std]`` in the dataset's
    normalised space; the range is widened by ``margin`` times its width on each side, since
    DM legitimately pushes pixels past the real range.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        float32 ``(low, high)``, each of shape ``(C,)``.

    Raises
    ------
    ValueError
        For a negative or non-finite ``margin``.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"pixel margin must be a finite number >= 0, got {margin}")
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    low, high = (0.0 - mean) / std, (1.0 - mean) / std
    width = high - low
    return (low - margin * width).float(), (high + margin * width).float()


def _check_bounds(synthetic: SyntheticSet, bounds: tuple[torch.Tensor, torch.Tensor]) -> None:
    low, high = bounds
    images = synthetic.images
    per_channel_min = images.amin(dim=(0, 2, 3))
    per_channel_max = images.amax(dim=(0, 2, 3))
    for c in range(images.shape[1]):
        if per_channel_min[c] < low[c] or per_channel_max[c] > high[c]:
            raise ReplyRejected(
                f"pixel values of channel {c} span [{float(per_channel_min[c]):.4g}, {float(per_channel_max[c]):.4g}], "
                f"outside the allowed [{float(low[c]):.4g}, {float(high[c]):.4g}] of the normalised pixel range"
            )


def _check_per_class(synthetic: SyntheticSet, ipc: int) -> None:
    held = synthetic.class_counts()
    flooded = [c for c in range(held.numel()) if int(held[c]) > ipc]
    if flooded:
        raise ReplyRejected(
            f"classes {flooded} hold {[int(held[c]) for c in flooded]} images, more than ipc={ipc} per class"
        )


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
        The reply's finite scalar metrics (seconds, loss, epsilon ...) whose names are at most
        :data:`MAX_METRIC_NAME` printable characters.
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
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ipc: int | None = None,
    max_class_count: int = MAX_CLASS_COUNT,
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
    bounds : tuple[torch.Tensor, torch.Tensor] | None
        Per-channel ``(low, high)`` pixel bounds (:func:`pixel_bounds`); ``None`` checks
        finiteness only.
    ipc : int | None
        Most stored images one class may hold; ``None`` leaves only the total cap.
    max_class_count : int
        Largest real-sample count the reply may claim for one class (at most
        :data:`MAX_CLASS_COUNT`).
    """
    max_class_count = min(int(max_class_count), MAX_CLASS_COUNT)
    node_id = int(message.metadata.src_node_id)
    if message.has_error():
        raise ReplyRejected(f"client error: {client_text(message.error.reason)}")
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
    # the declared shapes bind the bytes: nothing larger than declared is decoded
    for key, array, max_elements in (
        (IMAGES, images_arr, max_images * math.prod(image_shape)),
        (LABELS, labels_arr, max_images),
    ):
        try:
            check_array_payload(array, max_elements=max_elements)
        except ArrayPayloadError as exc:
            raise ReplyRejected(f"synthetic-set array {key!r} refused before decoding: {exc}") from exc
    try:
        synthetic = synthetic_from_record(arrays, meta={"num_classes": num_classes, "factor": factor})
        synthetic.validate(num_classes=num_classes, image_shape=tuple(image_shape), max_images=max_images)
    except (SyntheticSetError, ValueError) as exc:
        raise ReplyRejected(client_text(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any decoding failure drops the reply only
        raise ReplyRejected(f"undecodable synthetic-set arrays ({type(exc).__name__}: {client_text(exc)})") from exc
    if bounds is not None:
        _check_bounds(synthetic, bounds)
    if ipc is not None:
        _check_per_class(synthetic, ipc)
    counts_value = metrics.get(CLASS_COUNTS)
    if not isinstance(counts_value, list) or len(counts_value) != num_classes:
        raise ReplyRejected(f"metric {CLASS_COUNTS!r} must list {num_classes} per-class counts")
    if any(
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not (math.isfinite(v) and v.is_integer()))
        or not 0 <= v <= max_class_count
        for v in counts_value
    ):
        raise ReplyRejected(f"metric {CLASS_COUNTS!r} must hold integers in 0..{max_class_count}")
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
    _check_privacy_claims(metrics)
    return ClientSet(node_id, synthetic, counts, _reported_scalars(metrics))
