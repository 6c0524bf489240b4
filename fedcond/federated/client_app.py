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

The job settings arrive in the message's ``ConfigRecord``; the node's **client policy**
(:mod:`fedcond.federated.policy`) decides which of them it honours. A request that breaks a rule
gets an error reply with code :data:`~fedcond.federated.records.POLICY_REFUSED` naming the
rule, which the server counts as *refused*. Every non-DP upload passes the release gate
(:mod:`fedcond.federated.release`) first. The node's data is its own data source when the
policy names one, else the partition of the server-named dataset given by ``node_config``
(``partition-id``/``num-partitions``, set by the simulation engine or ``flower-supernode
--node-config``).

``app`` reads the policy from the node config key ``policy`` (a TOML file); simulation drivers
build their ClientApp with :func:`build_client_app` and one policy for every simulated node.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log as flower_log

from fedcond.config import DataConfig, DistillConfig, offset_seed
from fedcond.data.registry import ArrayDataset
from fedcond.devices import keep_freed_cpu_memory, resolve_device
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.client import client_partition, condense_partition, load_splits, local_train
from fedcond.federated.job import FederatedJob, job_from_mapping
from fedcond.federated.policy import (
    DEFAULT_POLICY,
    ClientPolicy,
    PolicyError,
    PolicyViolation,
    check_iterations_run,
    check_request,
    load_node_policy,
)
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
    MEMORY_PRIVACY_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    POLICY_KEY,
    POLICY_REFUSED,
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
from fedcond.federated.release import gate_release
from fedcond.models import get_model
from fedcond.privacy.accounting import PrivacyBudgetError
from fedcond.privacy.dp import derive_noise_seed
from fedcond.privacy.ledger import PrivacyLedger, check_ledger_writable, data_source_digest
from fedcond.privacy.private_condensation import PrivateCondensation
from fedcond.training import accuracy

__all__ = ["app", "build_client_app"]

logger = logging.getLogger(__name__)



class MalformedRequest(ValueError):
    """The server's message holds a config the node cannot read: refused like a broken rule."""


def _job(message: Message) -> tuple[FederatedJob, int]:
    config = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    try:
        server_round = config.get(SERVER_ROUND, 1)
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
            raise ValueError(f"config key {SERVER_ROUND!r} must be a round number >= 1, got {server_round!r}")
        return job_from_mapping(dict(config)), server_round
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise MalformedRequest(f"the request's config is malformed: {exc}") from exc


def _partition_of(context: Context, job: FederatedJob) -> tuple[int, int]:
    node_config = context.node_config
    if PARTITION_ID in node_config:
        num = int(node_config.get(NUM_PARTITIONS, job.federated.num_clients))
        return int(node_config[PARTITION_ID]), num
    # Flower's node ids are random 64-bit integers: ``node_id % num_clients`` would collide (two
    # nodes on one partition, another never trained) with near certainty, so refuse instead
    raise ValueError(
        f"this SuperNode has no {PARTITION_ID!r} in its node config and its policy names no data source; "
        f"give the policy a [data] table, or start each SuperNode with --node-config "
        f"\"{PARTITION_ID}=I {NUM_PARTITIONS}=N\" (I = 0..N-1), as simulations/deploy_local.sh does"
    )


def _device(job: FederatedJob) -> torch.device:
    # the ClientApp is a process entry point like the CLI: re-use freed CPU memory (idempotent)
    keep_freed_cpu_memory()
    return resolve_device(job.device)


def _node_data(policy: ClientPolicy, context: Context, job: FederatedJob) -> tuple[ArrayDataset, int]:
    """The node's training data and the id that seeds it (the partition id, 0 for own data).

    With a policy data source the server's ``dataset``/``data-dir`` are never read: the node
    loads its own training split and refuses a job whose images or classes do not match it.
    """
    source = policy.data
    if source.dataset is None:
        partition_id, num_partitions = _partition_of(context, job)
        # the server names the dataset and folder here, never a download: a node reaches the
        # network only if its operator fetched the data beforehand
        job = dataclasses.replace(job, data=dataclasses.replace(job.data, download=False))
        return client_partition(job, partition_id=partition_id, num_partitions=num_partitions), partition_id
    own = load_splits(DataConfig(dataset=source.dataset, data_dir=source.data_dir)).train
    if job.data.dataset != "imagefolder":
        from fedcond.data.registry import get_spec

        wanted = get_spec(job.data.dataset)
        if (wanted.image_shape, wanted.num_classes) != (own.spec.image_shape, own.spec.num_classes):
            raise PolicyViolation(
                "data.dataset",
                f"the job is for {job.data.dataset!r} ({wanted.num_classes} classes of {wanted.image_shape}), this "
                f"node holds {source.dataset!r} ({own.spec.num_classes} classes of {own.spec.image_shape})",
            )
        # synthetic images live in the dataset's normalised space: the server's must be the node's
        normalisation = (*wanted.mean, *wanted.std), (*own.spec.mean, *own.spec.std)
        if any(abs(a - b) > 1e-4 for a, b in zip(*normalisation, strict=True)):
            raise PolicyViolation(
                "data.dataset",
                f"the job normalises images as {job.data.dataset!r} (mean {wanted.mean}, std {wanted.std}), this "
                f"node's {source.dataset!r} as mean {own.spec.mean}, std {own.spec.std}",
            )
    return own, 0


def _received_model(message: Message, job: FederatedJob, data: ArrayDataset) -> torch.nn.Module:
    """The global model the message carries, as the job's architecture for the node's data.

    Raises
    ------
    MalformedRequest
        When the message carries no model, or arrays that are not the job's architecture.
    """
    if MODEL_KEY not in message.content.array_records:
        raise MalformedRequest(f"the request carries no model (no {MODEL_KEY!r} array record)")
    try:
        return model_from_record(get_model(job.federated.model, data.spec), message.content.array_records[MODEL_KEY])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise MalformedRequest(f"the request's model does not fit the job's {job.federated.model!r}: {exc}") from exc


def _ledger_path(policy: ClientPolicy, context: Context) -> Path | None:
    """The persistent DP ledger file; one per partition when the node serves a server-named partition."""
    path = policy.dp.ledger
    if path is None or policy.data.dataset is not None or PARTITION_ID not in context.node_config:
        return path
    return path.with_name(f"{path.stem}-partition-{int(context.node_config[PARTITION_ID])}{path.suffix}")


def _private_condensation(
    job: FederatedJob,
    policy: ClientPolicy,
    context: Context,
    data: ArrayDataset,
    *,
    distill: DistillConfig,
    seed_id: int,
    server_round: int,
) -> PrivateCondensation:
    """This round's DP run: the job's budget over all its rounds, the earlier rounds from
    ``Context.state``, and the node's persistent ledger when the policy names one."""
    dp = job.federated.dp
    if dp.noise_seed is not None:
        # a server seed reaches this point only under a policy that honours it: one
        # configured seed, independent noise per client and round
        dp = dataclasses.replace(dp, noise_seed=derive_noise_seed(dp.noise_seed, seed_id, server_round))
    state = None
    if DP_LEDGER_KEY in context.state.config_records:
        state = ledger_from_record(context.state.config_records[DP_LEDGER_KEY])
    ledger = None
    ledger_path = _ledger_path(policy, context)
    if ledger_path is not None:
        source = data_source_digest(data.images, data.labels)
        ledger = PrivacyLedger(ledger_path, source=source, mechanism=dp.accountant)
    return PrivateCondensation(
        dp,
        distill=dataclasses.replace(distill, init="noise"),  # DP-DM starts from noise whatever the job says
        class_counts=data.class_counts(),
        rounds=job.federated.rounds,
        state=state,
        ledger=ledger,
        budget_epsilon=policy.dp.budget_epsilon,
        budget_delta=policy.dp.budget_delta,
    )


def _refusal(message: Message, exc: Exception) -> Message:
    flower_log(logging.WARNING, "fedcond client: refused %s: %s", message.metadata.message_type, exc)
    return Message(Error(code=POLICY_REFUSED, reason=str(exc)), reply_to=message)


def build_client_app(policy: ClientPolicy | None = None) -> ClientApp:
    """The fedcond ``ClientApp``, enforcing ``policy`` (``None``: the node config's, or the default).

    Parameters
    ----------
    policy : ClientPolicy | None
        One policy for every node this app serves (simulations). ``None`` reads the TOML file
        named by the node config key ``policy`` on each node, else :data:`DEFAULT_POLICY`.
    """
    client_app = ClientApp()
    if policy is not None and policy.dp.ledger is not None:
        check_ledger_writable(policy.dp.ledger)  # an unwritable ledger stops the node now, not at a DP run

    def node_policy(context: Context) -> ClientPolicy:
        if policy is not None:
            return policy
        path = context.node_config.get(POLICY_KEY)
        if not path:
            return DEFAULT_POLICY
        return load_node_policy(str(path))  # every request, DP or not, meets an unwritable ledger

    def refusing(handler):  # noqa: ANN001, ANN202 - a ClientApp handler wrapper
        @functools.wraps(handler)
        def wrapped(message: Message, context: Context) -> Message:
            try:
                return handler(message, context, node_policy(context))
            # PrivacyBudgetError covers LedgerError: a DP plan the node cannot make (a budget the
            # accountant cannot meet, a delta of 1/N or more for its data) is refused like a rule
            except (PolicyViolation, PolicyError, PrivacyBudgetError, MalformedRequest) as exc:
                return _refusal(message, exc)

        return wrapped

    @client_app.train(CONDENSE_ACTION)
    @refusing
    def condense(message: Message, context: Context, policy: ClientPolicy) -> Message:
        """FedCond: reply with this node's synthetic set, if its policy allows the request."""
        job, server_round = _job(message)
        fed = job.federated
        check_request(
            policy,
            action="condense",
            init=fed.distill.init,
            iterations=fed.distill.iterations,
            dp_epsilon=None if fed.dp is None else fed.dp.epsilon,
            dp_delta=None if fed.dp is None else fed.dp.delta,
            server_noise_seed=fed.dp is not None and fed.dp.noise_seed is not None,
            server_embedder=MODEL_KEY in message.content.array_records,
        )
        data, seed_id = _node_data(policy, context, job)
        distill = dataclasses.replace(fed.distill, seed=offset_seed(fed.distill.seed, 1000 * seed_id + server_round))
        embedder = None
        if MODEL_KEY in message.content.array_records:
            embedder = _received_model(message, job, data)
        warm_start = None
        if MEMORY_KEY in context.state.array_records:
            privacy = context.state.config_records.get(MEMORY_PRIVACY_KEY)
            meta = {} if privacy is None else {"epsilon": float(privacy["epsilon"])}
            warm_start = synthetic_from_record(context.state.array_records[MEMORY_KEY], meta=meta)
        private = None
        if fed.dp is not None:
            private = _private_condensation(
                job, policy, context, data, distill=distill, seed_id=seed_id, server_round=server_round
            )
        device = _device(job)
        checkpoints = {"checkpoints": policy.checkpoints.folder, "checkpoint_every": policy.checkpoints.every}
        outcome = condense_partition(
            data, distill=distill, device=device, private=private, embedder=embedder, warm_start=warm_start,
            **checkpoints,
        )
        synthetic = outcome.synthetic
        check_iterations_run(policy, iterations_run=int(synthetic.meta.get("iterations", distill.iterations)))
        gate_metrics: dict[str, float | int] = {}
        if private is None and policy.gate.enabled:

            def recondense(start: torch.Tensor):  # noqa: ANN202 - returns a SyntheticSet
                again = condense_partition(
                    data, distill=distill, device=device, embedder=embedder, start=start, **checkpoints
                )
                return again.synthetic

            synthetic, report = gate_release(
                synthetic, data, policy=policy.gate, recondense=recondense, seed=distill.seed
            )
            gate_metrics = report.metrics()
            synthetic = SyntheticSet(synthetic.images, synthetic.labels, {**synthetic.meta, "gate": gate_metrics})
        # the distilled memory and the privacy ledger stay on the node across rounds
        # (Context.state never leaves it); the reported epsilon is cumulative over the rounds
        context.state[MEMORY_KEY] = synthetic_to_record(synthetic)
        if "epsilon" in synthetic.meta:
            context.state[MEMORY_PRIVACY_KEY] = ConfigRecord({"epsilon": float(synthetic.meta["epsilon"])})
        elif MEMORY_PRIVACY_KEY in context.state:
            del context.state[MEMORY_PRIVACY_KEY]
        if private is not None:
            context.state[DP_LEDGER_KEY] = ledger_to_record(private.state_dict())
        counts = data.class_counts()
        metrics = MetricRecord(
            {
                NUM_EXAMPLES: int(counts.sum()),
                CLASS_COUNTS: [int(v) for v in counts.tolist()],
                SYNTHETIC_IMAGES: len(synthetic),
                DISTILL_SECONDS: float(outcome.seconds),
                FINAL_LOSS: float(outcome.final_loss),
                **gate_metrics,
            }
        )
        if outcome.epsilon is not None:
            metrics[EPSILON] = float(outcome.epsilon)
            metrics[DELTA] = float(outcome.delta or 0.0)
        # through Flower's logger: it reaches the console wherever the ClientApp runs (a Ray actor,
        # a SuperNode), which a library logger without a handler would not
        flower_log(
            logging.INFO,
            "fedcond client: %s round %d: %d real -> %d synthetic images in %.1fs%s",
            f"partition {seed_id}" if policy.data.dataset is None else f"own data {policy.data.dataset!r}",
            server_round,
            int(counts.sum()),
            len(synthetic),
            outcome.seconds,
            f", gate flagged {gate_metrics['gate-flagged']}" if gate_metrics else "",
        )
        content = RecordDict({SYNTHETIC_KEY: synthetic_to_record(synthetic), METRICS_KEY: metrics})
        return Message(content=content, reply_to=message)

    @client_app.train()
    @refusing
    def train(message: Message, context: Context, policy: ClientPolicy) -> Message:
        """FedAvg/FedProx local update, if the policy serves ``train``."""
        check_request(policy, action="train")
        job, server_round = _job(message)
        data, seed_id = _node_data(policy, context, job)
        fed = job.federated
        model = _received_model(message, job, data)
        config = message.content.config_records[CONFIG_KEY]
        generator = torch.Generator().manual_seed(fed.seed + 1000 * seed_id + server_round)
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

    @client_app.evaluate()
    @refusing
    def evaluate(message: Message, context: Context, policy: ClientPolicy) -> Message:
        """Accuracy of the received model on this node's data, if the policy serves ``evaluate``."""
        check_request(policy, action="evaluate")
        job, _ = _job(message)
        data, _ = _node_data(policy, context, job)
        model = _received_model(message, job, data)
        acc = accuracy(model, data, device=_device(job))
        content = RecordDict({METRICS_KEY: MetricRecord({NUM_EXAMPLES: len(data), LOCAL_ACCURACY: acc})})
        return Message(content=content, reply_to=message)

    return client_app


app = build_client_app()
