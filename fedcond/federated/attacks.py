"""Hostile clients for simulations: Flower client mods that rewrite an honest reply.

An attack is a Flower *mod* (``mod(message, context, call_next)``): the honest ClientApp
(:mod:`fedcond.federated.client_app`) computes its reply unchanged, and the mod rewrites it
before it leaves the node. Only the simulation driver installs it
(:func:`attacked_client_app`, used by :mod:`fedcond.federated.simulation` for both engines),
and only nodes whose ``partition-id`` is below ``attackers`` turn hostile. Nothing in a job's
config, a ``ConfigRecord`` or the honest client code can switch an attack on, so a deployment
never runs one.

Kinds (:data:`ATTACKS`):

===================  =======================================================================
``extreme-pixels``   FedCond: every pixel +-1e20 (finite). FedAvg/FedProx: every weight +-1e20.
``count-inflation``  FedCond: each held class claims 10^6 real samples. FedAvg/FedProx:
                     ``num-examples`` x 10^6.
``class-flood``      FedCond: ``ipc x classes`` images (the set repeated), all labelled with the
                     client's largest class, whose count absorbs the others.
``label-flip``       FedCond: labels and counts shifted to the next class (``c -> c + 1 mod C``).
``noise-images``     FedCond: uniform noise over the dataset's real pixel range, honest labels
                     and counts. FedAvg/FedProx: Gaussian weights of the update's scale.
``scaled-update``    FedAvg/FedProx: ``global - 10 x (local - global)`` (a boosted reversed update).
``drop-out``         Any strategy: the node answers every ``train`` request (FedCond's
                     ``train.condense`` included) with an error and
                     sends nothing (a faulty or departed client). It is the reference for the
                     other kinds: a defence that refuses an attacker's reply can at best reach
                     the accuracy of the federation without that client's data.
===================  =======================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcond.data.registry import get_spec
from fedcond.federated.records import (
    CLASS_COUNTS,
    CONFIG_KEY,
    IMAGES,
    LABELS,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    PARTITION_ID,
    SERVER_ROUND,
    SYNTHETIC_KEY,
)

__all__ = ["ATTACKS", "DROP_OUT_ERROR", "AttackConfig", "attack_mod", "attacked_client_app", "check_attack"]

INFLATED_COUNT = 1_000_000
EXTREME_VALUE = 1e20
UPDATE_SCALE = -10.0
#: ``Error.code`` of a ``drop-out`` node's reply (the server counts it as dropped)
DROP_OUT_ERROR = 4099


@dataclass(frozen=True)
class _Context:
    """What an attack may use: the request, the node's dataset spec and a seeded generator."""

    request: Message
    num_classes: int
    pixel_range: tuple[float, float]
    ipc: int
    generator: torch.Generator


SyntheticAttack = Callable[
    [torch.Tensor, torch.Tensor, list[int], _Context], tuple[torch.Tensor, torch.Tensor, list[int]]
]
WeightsAttack = Callable[[dict[str, np.ndarray], float, _Context], tuple[dict[str, np.ndarray], float]]


@dataclass(frozen=True)
class _Attack:
    synthetic: SyntheticAttack | None = None
    weights: WeightsAttack | None = None
    #: the node sends no reply content at all (``drop-out``), whatever the strategy
    drop: bool = False


def _extreme_pixels(images, labels, counts, ctx):
    return torch.where(images >= 0, EXTREME_VALUE, -EXTREME_VALUE).float(), labels, counts


def _count_inflation(images, labels, counts, ctx):
    return images, labels, [INFLATED_COUNT if v > 0 else 0 for v in counts]


def _class_flood(images, labels, counts, ctx):
    target = int(np.argmax(counts))
    total = ctx.ipc * ctx.num_classes
    repeat = torch.arange(total) % len(labels)
    flooded = [0] * ctx.num_classes
    flooded[target] = int(sum(counts))
    return images[repeat], torch.full((total,), target, dtype=labels.dtype), flooded


def _label_flip(images, labels, counts, ctx):
    c = ctx.num_classes
    return images, (labels + 1) % c, [counts[(k - 1) % c] for k in range(c)]


def _noise_images(images, labels, counts, ctx):
    low, high = ctx.pixel_range
    noise = torch.rand(images.shape, generator=ctx.generator) * (high - low) + low
    return noise.float(), labels, counts


def _global_weights(ctx: _Context) -> dict[str, np.ndarray]:
    record = ctx.request.content.array_records[MODEL_KEY]
    return {k: np.asarray(v.numpy()) for k, v in record.items()}


def _extreme_weights(weights, num_examples, ctx):
    extreme = {k: np.where(v >= 0, EXTREME_VALUE, -EXTREME_VALUE).astype(v.dtype) for k, v in weights.items()}
    return extreme, num_examples


def _inflated_examples(weights, num_examples, ctx):
    return weights, num_examples * INFLATED_COUNT


def _noise_weights(weights, num_examples, ctx):
    out = {}
    for k, v in weights.items():
        if not np.issubdtype(v.dtype, np.floating):
            out[k] = v
            continue
        scale = float(v.std()) if v.size > 1 else 1.0
        noise = torch.randn(v.shape, generator=ctx.generator).numpy() * scale
        out[k] = noise.astype(v.dtype)
    return out, num_examples


def _scaled_update(weights, num_examples, ctx):
    global_weights = _global_weights(ctx)
    out = {}
    for k, v in weights.items():
        g = global_weights[k]
        out[k] = (g + UPDATE_SCALE * (v - g)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
    return out, num_examples


#: attack name -> what it does to a FedCond reply and/or a FedAvg/FedProx reply
ATTACKS: dict[str, _Attack] = {
    "extreme-pixels": _Attack(_extreme_pixels, _extreme_weights),
    "count-inflation": _Attack(_count_inflation, _inflated_examples),
    "class-flood": _Attack(_class_flood),
    "label-flip": _Attack(_label_flip),
    "noise-images": _Attack(_noise_images, _noise_weights),
    "scaled-update": _Attack(None, _scaled_update),
    "drop-out": _Attack(drop=True),
}


@dataclass(frozen=True)
class AttackConfig:
    """A simulated attack: ``kind`` (one of :data:`ATTACKS`) run by the first ``attackers`` clients."""

    kind: str
    attackers: int

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if self.attackers < 0:
            raise ValueError(f"attackers must be >= 0, got {self.attackers}")


def check_attack(attack: AttackConfig, *, strategy: str, num_clients: int) -> None:
    """Refuse an attack the strategy's replies cannot carry, or more attackers than clients.

    Raises
    ------
    ValueError
        With the reason and the kinds that do apply.
    """
    synthetic = strategy == "fedcond"
    applies = [name for name, a in ATTACKS.items() if a.drop or (a.synthetic if synthetic else a.weights) is not None]
    if attack.kind not in applies:
        raise ValueError(
            f"attack {attack.kind!r} does not apply to strategy {strategy!r}; its attacks: {', '.join(applies)}"
        )
    if attack.attackers > num_clients:
        raise ValueError(f"{attack.attackers} attackers exceed the {num_clients} clients")


def _attack_context(request: Message, reply_classes: int, ipc: int, dataset: str, partition: int) -> _Context:
    spec = get_spec(dataset)
    low = min((0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    high = max((1.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    config = request.content.config_records.get(CONFIG_KEY)
    server_round = int(config.get(SERVER_ROUND, 1)) if config is not None else 1
    generator = torch.Generator().manual_seed(7_000_003 * (partition + 1) + server_round)
    return _Context(request, reply_classes, (low, high), ipc, generator)


def _rewrite_synthetic(reply: Message, attack: _Attack, ctx: _Context) -> Message:
    arrays = reply.content.array_records[SYNTHETIC_KEY]
    metrics = reply.content.metric_records[METRICS_KEY]
    images = torch.from_numpy(np.array(arrays[IMAGES].numpy()))
    labels = torch.from_numpy(np.array(arrays[LABELS].numpy()))
    counts = [int(v) for v in metrics[CLASS_COUNTS]]
    images, labels, counts = attack.synthetic(images, labels, counts, ctx)
    new_metrics = MetricRecord(dict(metrics))
    new_metrics[CLASS_COUNTS] = counts
    new_metrics[NUM_EXAMPLES] = int(sum(counts))
    content = RecordDict(
        {
            SYNTHETIC_KEY: ArrayRecord({IMAGES: Array(images.numpy()), LABELS: Array(labels.numpy())}),
            METRICS_KEY: new_metrics,
        }
    )
    return Message(content=content, reply_to=ctx.request)


def _rewrite_weights(reply: Message, attack: _Attack, ctx: _Context) -> Message:
    record = reply.content.array_records[MODEL_KEY]
    weights = {k: np.array(v.numpy()) for k, v in record.items()}
    metrics = reply.content.metric_records[METRICS_KEY]
    weights, num_examples = attack.weights(weights, float(metrics[NUM_EXAMPLES]), ctx)
    new_metrics = MetricRecord(dict(metrics))
    new_metrics[NUM_EXAMPLES] = int(num_examples)
    content = RecordDict({MODEL_KEY: ArrayRecord({k: Array(v) for k, v in weights.items()}), METRICS_KEY: new_metrics})
    return Message(content=content, reply_to=ctx.request)


def attack_mod(config: AttackConfig) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    """A Flower client mod that makes nodes with ``partition-id < config.attackers`` run ``config.kind``.

    Honest nodes, error replies and replies the attack does not touch (evaluation) pass unchanged.
    """
    attack = ATTACKS[config.kind]

    def mod(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        partition = int(context.node_config.get(PARTITION_ID, -1))
        hostile = 0 <= partition < config.attackers
        if hostile and attack.drop and message.metadata.message_type.split(".")[0] == "train":
            return Message(Error(code=DROP_OUT_ERROR, reason="drop-out: the node sends nothing"), reply_to=message)
        reply = call_next(message, context)
        if not hostile or reply.has_error():
            return reply
        job = dict(message.content.config_records.get(CONFIG_KEY, {}))
        dataset = str(job.get("dataset", "digits"))
        ipc = int(job.get("distill.ipc", 1))
        num_classes = get_spec(dataset).num_classes
        ctx = _attack_context(message, num_classes, ipc, dataset, partition)
        if SYNTHETIC_KEY in reply.content.array_records and attack.synthetic is not None:
            return _rewrite_synthetic(reply, attack, ctx)
        if message.metadata.message_type == "train" and MODEL_KEY in reply.content.array_records and attack.weights:
            return _rewrite_weights(reply, attack, ctx)
        return reply

    return mod


class _AttackedClientApp(ClientApp):
    """The honest app behind one app-wide mod (Flower's mod protocol)."""

    def __init__(self, honest: ClientApp, mod: Callable) -> None:
        super().__init__()
        self._honest = honest
        self._attack = mod

    def __call__(self, message: Message, context: Context) -> Message:
        return self._attack(message, context, self._honest)


def attacked_client_app(honest: ClientApp, config: AttackConfig | None) -> ClientApp:
    """``honest`` itself without an attack (or with 0 attackers), else the honest app behind :func:`attack_mod`."""
    if config is None or config.attackers == 0:
        return honest
    return _AttackedClientApp(honest, attack_mod(config))
