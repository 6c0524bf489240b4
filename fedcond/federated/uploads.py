"""What left the clients, kept by the server: ``OUT/uploads/round-R/client-K.npz``.

Every reply that carries a synthetic-set record is written before validation, byte for byte
as its arrays arrived (no rescaling, no filtering), in the :class:`~fedcond.distill.synthetic.
SyntheticSet` file format, so ``fedcond audit --synthetic OUT/uploads/round-1/client-K.npz``
audits exactly what a client released. ``K`` is the Flower node id, an identity the server
controls. The metadata holds the server's own facts (dataset, normalisation, round, node) and,
under ``client_reported``, the metrics the client claimed (untrusted, kept for the audit trail,
bounded by :func:`~fedcond.federated.untrusted.client_metrics`): finite scalars, and lists of at
most ``num_classes`` finite numbers (the per-class real counts the server weights the set by), so
that the files alone rebuild the server's training set.

Only arrays within the server's size cap are written: a reply whose declared arrays exceed it,
or whose bytes hold more or less than they declare
(:func:`~fedcond.federated.untrusted.check_array_payload`), is recorded as refused-to-store in
the log, never decoded nor written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message

from fedcond.data.registry import DatasetSpec
from fedcond.distill.synthetic import FORMAT_VERSION, dataset_meta
from fedcond.federated.records import IMAGES, LABELS, METRICS_KEY, SYNTHETIC_KEY
from fedcond.federated.untrusted import ArrayPayloadError, check_array_payload, client_metrics, client_text

__all__ = ["UPLOADS", "UploadStore"]

#: the folder of a run's ``--out`` that keeps what the server received
UPLOADS = "uploads"

logger = logging.getLogger(__name__)


class UploadStore:
    """Writes each received synthetic set under ``root/round-R/client-K.npz``.

    Parameters
    ----------
    root : str | Path
        The ``uploads`` folder (created on the first write).
    spec : DatasetSpec
        The job's dataset: its name and normalisation go into each file's metadata.
    max_images : int
        The largest image count stored from one reply (the server's per-client cap).
    factor : int
        The job's multi-formation factor (recorded so that the audit decodes the tiles).
    """

    def __init__(self, root: str | Path, *, spec: DatasetSpec, max_images: int, factor: int = 1) -> None:
        self.root = Path(root)
        self.spec = spec
        self.max_images = max_images
        self.factor = factor

    def path_for(self, *, server_round: int, node_id: int) -> Path:
        """Where the upload of ``node_id`` in ``server_round`` is kept."""
        return self.root / f"round-{server_round}" / f"client-{node_id}.npz"

    def keep(self, reply: Message, *, server_round: int) -> Path | None:
        """Write the reply's synthetic set (if it carries one within the cap); return the path."""
        if reply.has_error() or SYNTHETIC_KEY not in reply.content.array_records:
            return None
        record = reply.content.array_records[SYNTHETIC_KEY]
        node_id = int(reply.metadata.src_node_id)
        if IMAGES not in record or LABELS not in record:
            return None
        images, labels = record[IMAGES], record[LABELS]
        per_image = math.prod(self.spec.image_shape)
        try:
            # the declared sizes bind the bytes, so nothing over the cap is decoded or written
            check_array_payload(images, max_elements=self.max_images * per_image)
            check_array_payload(labels, max_elements=self.max_images)
        except ArrayPayloadError as exc:
            logger.warning("round %d: node %d's arrays are not stored: %s", server_round, node_id, exc)
            return None
        try:
            image_array, label_array = images.numpy(), labels.numpy()
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: an undecodable array is not stored
            logger.warning(
                "round %d: node %d's arrays do not decode (%s): not stored", server_round, node_id, client_text(exc)
            )
            return None
        meta = self._meta(reply, server_round=server_round, node_id=node_id)
        path = self.path_for(server_round=server_round, node_id=node_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, images=image_array, labels=label_array, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    def _meta(self, reply: Message, *, server_round: int, node_id: int) -> dict[str, Any]:
        reported: dict[str, Any] = {}
        if METRICS_KEY in reply.content.metric_records:
            reported = client_metrics(reply.content.metric_records[METRICS_KEY], max_list=self.spec.num_classes)
        return {
            "format_version": FORMAT_VERSION,
            **dataset_meta(self.spec),
            "factor": self.factor,
            "method": "federated-upload",
            "round": server_round,
            "node_id": node_id,
            "client_reported": reported,
        }
