"""The Flower ``ClientApp``: condense (FedCond), train locally (FedAvg/FedProx), evaluate.

Handlers
--------
``train.condense`` (FedCond)
    Load this node's partition, condense it with DM (the received global model, if any, as the
    embedding network; the previous round's set from ``Context.state`` as the start point) and
    reply with the synthetic set (``ArrayRecord``) and per-class counts plus condensation
    metrics (``MetricRecord``). Raw data never leaves the node.
``train`` (Flower's FedAvg/FedProx)
    Load the global model, run ``local_epochs`` of SGD (with the proximal term when the config
    holds ``proximal-mu``) and reply with the weights and ``num-examples``.
``evaluate``
    Accuracy of the received model on the node's partition.

The job settings arrive in the message's ``ConfigRecord`` (the server is the one source of
truth); the partition id comes from ``node_config`` (``partition-id``/``num-partitions``, set by
the simulation engine or ``flower-supernode --node-config``).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log as flower_log

from fedcond.devices import keep_freed_cpu_memory, resolve_device
from fedcond.distill.evaluate import accuracy
from fedcond.federated.client import client_partition, condense_partition, local_train
from fedcond.federated.job import FederatedJob, job_from_mapping
from fedcond.federated.records import (
    CLASS_COUNTS,
    CONDENSE_ACTION,
    CONFIG_KEY,
    DELTA,
    DISTILL_SECONDS,
    DP_LEDGER_KEY,
    EPSILON,
    FINAL_LOSS,
    LOCAL_ACCURACY,
    MEMORY_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    PROXIMAL_MU,
    SERVER_ROUND,
    SYNTHETIC_IMAGES,
    SYNTHETIC_KEY,
    ledger_from_record,
    ledger_to_record,
    model_from_record,
    model_to_record,
    synthetic_from_record,
    synthetic_to_record,
)
from fedcond.models import get_model

__all__ = ["app"]

app = ClientApp()


def _job(message: Message) -> tuple[FederatedJob, int]:
    config = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    return job_from_mapping(dict(config)), int(config.get(SERVER_ROUND, 1))


def _partition_of(context: Context, job: FederatedJob) -> tuple[int, int]:
    node_config = context.node_config
    if PARTITION_ID in node_config:
        num = int(node_config.get(NUM_PARTITIONS, job.federated.num_clients))
        return int(node_config[PARTITION_ID]), num
    # Flower's node ids are random 64-bit integers: ``node_id % num_clients`` would collide (two
    # nodes on one partition, another never trained) with near certainty, so refuse instead
    raise ValueError(
        f"this SuperNode has no {PARTITION_ID!r} in its node config; start each SuperNode with "
        f"--node-config \"{PARTITION_ID}=I {NUM_PARTITIONS}=N\" (I = 0..N-1), as simulations/deploy_local.sh does"
    )


def _device(job: FederatedJob) -> torch.device:
    # the ClientApp is a process entry point like the CLI: re-use freed CPU memory (idempotent)
    keep_freed_cpu_memory()
    return resolve_device(job.device)


@app.train(CONDENSE_ACTION)
def condense(message: Message, context: Context) -> Message:
    """FedCond: reply with this node's synthetic set."""
    job, server_round = _job(message)
    partition_id, num_partitions = _partition_of(context, job)
    data = client_partition(job, partition_id=partition_id, num_partitions=num_partitions)
    fed = job.federated
    distill = dataclasses.replace(fed.distill, seed=fed.distill.seed + 1000 * partition_id + server_round)
    embedder = None
    if MODEL_KEY in message.content.array_records:
        embedder = model_from_record(get_model(fed.model, data.spec), message.content.array_records[MODEL_KEY])
    warm_start = None
    if MEMORY_KEY in context.state.array_records:
        warm_start = synthetic_from_record(context.state.array_records[MEMORY_KEY])
    ledger = None
    if fed.dp is not None and DP_LEDGER_KEY in context.state.config_records:
        ledger = ledger_from_record(context.state.config_records[DP_LEDGER_KEY])
    dp = fed.dp
    if dp is not None and dp.noise_seed is not None:
        # one configured seed, independent noise per client and round
        from fedcond.privacy.dp import derive_noise_seed

        dp = dataclasses.replace(dp, noise_seed=derive_noise_seed(dp.noise_seed, partition_id, server_round))
    outcome = condense_partition(
        data,
        distill=distill,
        device=_device(job),
        dp=dp,
        embedder=embedder,
        warm_start=warm_start,
        dp_rounds=fed.rounds,
        dp_ledger=ledger,
    )
    # the distilled memory and the privacy ledger stay on the node across rounds
    # (Context.state never leaves it); the reported epsilon is cumulative over the rounds
    context.state[MEMORY_KEY] = synthetic_to_record(outcome.synthetic)
    if outcome.dp_ledger is not None:
        context.state[DP_LEDGER_KEY] = ledger_to_record(outcome.dp_ledger)
    counts = data.class_counts()
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: int(counts.sum()),
            CLASS_COUNTS: [int(v) for v in counts.tolist()],
            SYNTHETIC_IMAGES: len(outcome.synthetic),
            DISTILL_SECONDS: float(outcome.seconds),
            FINAL_LOSS: float(outcome.final_loss),
        }
    )
    if outcome.epsilon is not None:
        metrics[EPSILON] = float(outcome.epsilon)
        metrics[DELTA] = float(outcome.delta or 0.0)
    # through Flower's logger: it reaches the console wherever the ClientApp runs (a Ray actor,
    # a SuperNode), which a library logger without a handler would not
    flower_log(
        logging.INFO,
        "fedcond client: partition %d/%d round %d: %d real -> %d synthetic images in %.1fs",
        partition_id,
        num_partitions,
        server_round,
        int(counts.sum()),
        len(outcome.synthetic),
        outcome.seconds,
    )
    content = RecordDict({SYNTHETIC_KEY: synthetic_to_record(outcome.synthetic), METRICS_KEY: metrics})
    return Message(content=content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """FedAvg/FedProx local update."""
    job, server_round = _job(message)
    partition_id, num_partitions = _partition_of(context, job)
    data = client_partition(job, partition_id=partition_id, num_partitions=num_partitions)
    fed = job.federated
    model = model_from_record(get_model(fed.model, data.spec), message.content.array_records[MODEL_KEY])
    config = message.content.config_records[CONFIG_KEY]
    generator = torch.Generator().manual_seed(fed.seed + 1000 * partition_id + server_round)
    local_train(
        model,
        data,
        epochs=fed.local_epochs,
        lr=fed.local_lr,
        batch_size=fed.local_batch_size,
        proximal_mu=float(config.get(PROXIMAL_MU, 0.0)),
        generator=generator,
        device=_device(job),
    )
    content = RecordDict(
        {
            MODEL_KEY: model_to_record(model.cpu()),
            METRICS_KEY: MetricRecord({NUM_EXAMPLES: len(data)}),
        }
    )
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Accuracy of the received model on this node's partition."""
    job, _ = _job(message)
    partition_id, num_partitions = _partition_of(context, job)
    data = client_partition(job, partition_id=partition_id, num_partitions=num_partitions)
    record: ArrayRecord = message.content.array_records[MODEL_KEY]
    model = model_from_record(get_model(job.federated.model, data.spec), record)
    acc = accuracy(model, data, device=_device(job))
    content = RecordDict({METRICS_KEY: MetricRecord({NUM_EXAMPLES: len(data), LOCAL_ACCURACY: acc})})
    return Message(content=content, reply_to=message)
