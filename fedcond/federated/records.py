"""Message record keys (named constants, one place) and record <-> object conversion.

A FedCond train message carries ``RecordDict({CONFIG_KEY: ConfigRecord, MODEL_KEY: ArrayRecord})``
(the model only in multi-round mode); the reply carries
``RecordDict({SYNTHETIC_KEY: ArrayRecord(images, labels), METRICS_KEY: MetricRecord})``.
FedAvg/FedProx use Flower's own keys, which are the same ``"arrays"``/``"config"`` strings.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import nn

from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.untrusted import client_metrics, client_text

__all__ = [
    "CLASS_COUNTS",
    "CONFIG_KEY",
    "DELTA",
    "DISTILL_SECONDS",
    "EPSILON",
    "FINAL_LOSS",
    "IMAGES",
    "LABELS",
    "LOCAL_ACCURACY",
    "MEMORY_KEY",
    "MEMORY_PRIVACY_KEY",
    "METRICS_KEY",
    "MODEL_KEY",
    "NUM_EXAMPLES",
    "PARTITION_ID",
    "POLICY_KEY",
    "POLICY_REFUSED",
    "NUM_PARTITIONS",
    "PROXIMAL_MU",
    "SERVER_ROUND",
    "SYNTHETIC_IMAGES",
    "SYNTHETIC_KEY",
    "TRAIN_LOSS",
    "client_report",
    "CONDENSE_ACTION",
    "DP_LEDGER_KEY",
    "ledger_from_record",
    "ledger_to_record",
    "model_from_record",
    "model_to_record",
    "payload_bytes",
    "synthetic_from_record",
    "synthetic_to_record",
]

# RecordDict keys
MODEL_KEY = "arrays"  # Flower's default ``arrayrecord_key``
CONFIG_KEY = "config"  # Flower's default ``configrecord_key``
SYNTHETIC_KEY = "synthetic"
METRICS_KEY = "metrics"
MEMORY_KEY = "fedcond-memory"  # Context.state: the client's last synthetic set
# Context.state: the last set's spent DP epsilon (absent when it was condensed without DP), so that
# a DP run warm-starts only from an earlier DP set
MEMORY_PRIVACY_KEY = "fedcond-memory-dp"
DP_LEDGER_KEY = "fedcond-dp-ledger"  # Context.state: the client's DP accountant history

# message action: FedCond sends "train.condense", FedAvg/FedProx the default "train"
CONDENSE_ACTION = "condense"

# ArrayRecord keys of a synthetic set
IMAGES = "images"
LABELS = "labels"

# ConfigRecord keys set by Flower's strategies
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

# node_config keys (Flower's convention for simulation and ``--node-config``)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
POLICY_KEY = "policy"  # path of the node's client-policy TOML file

#: ``Error.code`` of a reply in which a client refuses a request by its own policy (the server
#: counts it as *refused*, apart from replies *dropped* as faulty or malformed)
POLICY_REFUSED = 4023

# MetricRecord keys
NUM_EXAMPLES = "num-examples"  # Flower's ``weighted_by_key``
CLASS_COUNTS = "class-counts"
SYNTHETIC_IMAGES = "synthetic-images"
DISTILL_SECONDS = "distill-seconds"
FINAL_LOSS = "final-loss"
TRAIN_LOSS = "train-loss"
LOCAL_ACCURACY = "local-accuracy"
EPSILON = "epsilon"
DELTA = "delta"


def synthetic_to_record(synthetic: SyntheticSet) -> ArrayRecord:
    """The set's images and labels as an ``ArrayRecord`` (NumPy serialisation, no pickle)."""
    return ArrayRecord(
        OrderedDict(
            (
                (IMAGES, Array(synthetic.images.detach().cpu().numpy().astype(np.float32, copy=False))),
                (LABELS, Array(synthetic.labels.detach().cpu().numpy().astype(np.int64, copy=False))),
            )
        )
    )


def synthetic_from_record(record: ArrayRecord, *, meta: dict | None = None) -> SyntheticSet:
    """Rebuild a :class:`SyntheticSet` from :func:`synthetic_to_record`'s output.

    Only the record structure is checked here (keys, declared dtypes); value checks are
    :meth:`SyntheticSet.validate`'s job.

    Raises
    ------
    ValueError
        When a key is missing or an array has the wrong declared dtype.
    """
    missing = [key for key in (IMAGES, LABELS) if key not in record]
    if missing:
        raise ValueError(f"synthetic-set record lacks array(s) {missing}")
    images, labels = record[IMAGES], record[LABELS]
    if images.dtype != "float32":
        raise ValueError(f"images must be float32, got {images.dtype}")
    if labels.dtype != "int64":
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    return SyntheticSet(
        torch.from_numpy(np.array(images.numpy())),
        torch.from_numpy(np.array(labels.numpy())),
        dict(meta or {}),
    )


def ledger_to_record(state: dict) -> ConfigRecord:
    """A ``PrivacyAccountant.state_dict()`` as a ConfigRecord (kept in the client's ``Context.state``)."""
    history = state.get("history", [])
    return ConfigRecord(
        {
            "mechanism": str(state["mechanism"]),
            "noise-multipliers": [float(h[0]) for h in history],
            "sample-rates": [float(h[1]) for h in history],
            "steps": [int(h[2]) for h in history],
        }
    )


def ledger_from_record(record: ConfigRecord) -> dict:
    """The accountant state stored by :func:`ledger_to_record`."""
    sigmas, rates, steps = (list(record.get(k, [])) for k in ("noise-multipliers", "sample-rates", "steps"))
    if not len(sigmas) == len(rates) == len(steps):
        raise ValueError("the stored DP ledger is inconsistent (history columns differ in length)")
    return {
        "mechanism": str(record["mechanism"]),
        "history": [[float(a), float(b), int(c)] for a, b, c in zip(sigmas, rates, steps, strict=True)],
    }


#: MetricRecord key prefix of the release gate's results (fedcond.federated.release.GateReport)
GATE_PREFIX = "gate-"


def client_report(reply: Message) -> dict[str, object]:
    """A reply's facts for ``metrics.json``: error (if any), set size and release-gate results.

    Values are copied only as :func:`~fedcond.federated.untrusted.client_metrics` bounds them
    (the client's word: short printable names, finite scalars, a bounded number of them); an
    error reason is bounded to one line (:func:`~fedcond.federated.untrusted.client_text`).
    """
    if reply.has_error():
        return {"error_code": int(reply.error.code), "error": client_text(reply.error.reason)}
    out: dict[str, object] = {}
    if METRICS_KEY in reply.content.metric_records:
        for key, value in client_metrics(reply.content.metric_records[METRICS_KEY]).items():
            if key.startswith(GATE_PREFIX) or key in (SYNTHETIC_IMAGES, DISTILL_SECONDS, EPSILON):
                out[key] = value
    return out


def model_to_record(model: nn.Module) -> ArrayRecord:
    """A model's ``state_dict`` as an ``ArrayRecord``."""
    return ArrayRecord(model.state_dict())


def model_from_record(model: nn.Module, record: ArrayRecord) -> nn.Module:
    """Load ``record`` into ``model`` (strict) and return it."""
    model.load_state_dict(record.to_torch_state_dict(), strict=True)
    return model


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message payload: serialised arrays plus config/metric record sizes.

    The same measure as Flower's ``message_size_mod`` (each record's ``count_bytes``).
    """
    total = 0
    for record in content.values():
        if isinstance(record, (ArrayRecord, ConfigRecord, MetricRecord)):
            total += record.count_bytes()
    return total
