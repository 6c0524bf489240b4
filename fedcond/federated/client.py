"""What a client does with its own data, free of Flower: load its partition, condense, train.

:mod:`fedcond.federated.client_app` wraps these functions in a Flower ``ClientApp``; tests
and benchmarks can call them directly. Raw data never leaves these functions: ``condense_partition``
returns a synthetic set and ``local_train`` a model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedcond.config import DataConfig, DistillConfig
from fedcond.data.partition import partition_indices
from fedcond.data.registry import ArrayDataset, DatasetSplits, load_dataset
from fedcond.devices import resolve_device
from fedcond.digests import tensor_digest
from fedcond.distill.condenser import get_condenser
from fedcond.distill.dm import initial_synthetic
from fedcond.distill.formation import encode_formation
from fedcond.distill.synthetic import SyntheticSet
from fedcond.federated.job import FederatedJob
from fedcond.federated.proximal import ProximalTerm
from fedcond.training import train_model

if TYPE_CHECKING:
    from fedcond.privacy.private_condensation import PrivateCondensation

__all__ = [
    "CondenseOutcome",
    "check_partition",
    "client_partition",
    "condense_partition",
    "federated_test_set",
    "initial_images",
    "load_splits",
    "local_train",
    "per_class_subset",
]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _cached_splits(dataset: str, data_dir: str | None, download: bool) -> DatasetSplits:
    return load_dataset(DataConfig(dataset=dataset, data_dir=Path(data_dir) if data_dir else None, download=download))


def load_splits(data: DataConfig) -> DatasetSplits:
    """The dataset's splits, loaded once per process (Ray actors serve many clients)."""
    return _cached_splits(data.dataset, str(data.data_dir) if data.data_dir else None, data.download)


def per_class_subset(labels: torch.Tensor, *, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` samples of every class (all when ``None``), seeded."""
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"per-class subsample size must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    keep = [rng.permutation(np.flatnonzero(labels_np == c))[:per_class] for c in np.unique(labels_np)]
    return np.sort(np.concatenate(keep))


def federated_test_set(job: FederatedJob) -> ArrayDataset:
    """The server's held-out real test set (optionally ``test_per_class`` per class).

    The subsample is drawn with a fixed seed (0), not the job's: runs over several seeds are
    then scored on the same test images, and their spread is the runs', not the exam's.
    """
    test = load_splits(job.data).test
    fed = job.federated
    if fed.test_per_class is None:
        return test
    return test.subset(per_class_subset(test.labels, per_class=fed.test_per_class, seed=0))


@functools.lru_cache(maxsize=8)
def _cached_partition(
    dataset: str,
    data_dir: str | None,
    download: bool,
    method: str,
    num_partitions: int,
    seed: int,
    alpha: float,
    shards: int,
    min_size: int,
    per_class: int | None,
) -> tuple[np.ndarray, ...]:
    labels = _cached_splits(dataset, data_dir, download).train.labels  # the same cache entry as load_splits
    pool = per_class_subset(labels, per_class=per_class, seed=seed)
    parts = partition_indices(
        labels.numpy()[pool],
        method=method,
        num_partitions=num_partitions,
        seed=seed,
        alpha=alpha,
        shards_per_client=shards,
        min_partition_size=min_size,
    )
    return tuple(pool[part] for part in parts)


def client_partition(job: FederatedJob, *, partition_id: int, num_partitions: int) -> ArrayDataset:
    """Training samples of client ``partition_id`` out of ``num_partitions``.

    Raises
    ------
    ValueError
        When ``partition_id`` is outside ``[0, num_partitions)``.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition id {partition_id} is outside [0, {num_partitions})")
    splits = load_splits(job.data)
    return splits.train.subset(_partition(job, num_partitions=num_partitions)[partition_id])


def check_partition(job: FederatedJob, *, num_partitions: int | None = None) -> None:
    """Make the job's split once on the server, before any client starts.

    An infeasible split (e.g. Dirichlet with a tiny ``alpha`` and a ``min_partition_size`` that
    no redraw meets) is then one clear error instead of one per client, each after seconds of
    redraws. The result is cached, so an in-process client reuses it.

    Raises
    ------
    PartitionError
        When the split cannot be made (the message says why).
    """
    _partition(job, num_partitions=num_partitions or job.federated.num_clients)


def _partition(job: FederatedJob, *, num_partitions: int) -> tuple[np.ndarray, ...]:
    fed = job.federated
    return _cached_partition(
        job.data.dataset,
        str(job.data.data_dir) if job.data.data_dir else None,
        job.data.download,
        fed.partition,
        num_partitions,
        fed.seed,
        fed.alpha,
        fed.shards_per_client,
        fed.min_partition_size,
        fed.train_per_class,
    )


@dataclass(frozen=True)
class CondenseOutcome:
    """A client's condensation result.

    Attributes
    ----------
    synthetic : SyntheticSet
        Images sorted by label; classes the client lacks are absent.
    seconds : float
        DM optimisation time (all class groups).
    final_loss : float
        Sum of the groups' last DM losses (NaN with zero iterations).
    epsilon, delta : float | None
        Spent privacy budget under DP (cumulative over the earlier rounds), else ``None``.
    skipped_classes : list[int]
        Classes the client lacks.
    """

    synthetic: SyntheticSet
    seconds: float
    final_loss: float
    epsilon: float | None = None
    delta: float | None = None
    skipped_classes: list[int] = field(default_factory=list)


def initial_images(
    data: ArrayDataset,
    *,
    classes: list[int],
    ipc: int,
    init: str,
    generator: torch.Generator,
    model: str = "convnet",
) -> torch.Tensor:
    """Initial synthetic images, ``ipc`` per class in ``classes`` (label order).

    Real init draws real images without replacement, herding init takes the class's herding
    coreset (under a random ``model``), kmeans init its ``ipc`` pixel-space k-means centroids; a
    class with fewer than ``ipc`` images repeats them, each repeat jittered by N(0, 0.1^2) so DM
    can move the copies apart.
    """
    if init == "noise":
        return torch.randn((len(classes) * ipc, *data.spec.image_shape), generator=generator)
    chunks = []
    for c in classes:
        pool = (data.labels == c).nonzero().flatten()
        if init in ("herding", "kmeans") and pool.numel() >= ipc:
            chunks.append(initial_synthetic(data.subset(pool), ipc=ipc, init=init, classes=[c],
                                            generator=generator, model=model)[0])
            continue
        order = torch.randperm(pool.numel(), generator=generator)
        picks = pool[order[torch.arange(ipc) % pool.numel()]]
        chunk = data.images[picks].clone()
        repeats = torch.arange(ipc) >= pool.numel()
        if bool(repeats.any()):
            noise = 0.1 * torch.randn((int(repeats.sum()), *data.spec.image_shape), generator=generator)
            chunk[repeats] += noise
        chunks.append(chunk)
    return torch.cat(chunks)


def condensation_checkpoint(
    folder: Path,
    data: ArrayDataset,
    *,
    distill: DistillConfig,
    start: torch.Tensor,
    embedder: nn.Module | None = None,
    private: PrivateCondensation | None = None,
) -> Path:
    """The checkpoint file of one condensation request in ``folder``.

    Its name is a digest of everything the run depends on: the DM settings, the client's data,
    the start images, the embedding network's weights and the DP plan. A repeated request
    (the same job after a restart) finds its checkpoint; any other request gets a file of its own.
    """
    request = {
        "distill": dataclasses.asdict(distill),
        "tensors": tensor_digest(data.images, data.labels, start,
                                 *([] if embedder is None else embedder.state_dict().values())),
        "dp": None if private is None else private.statistics.fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode())
    return folder / f"condense-{digest.hexdigest()[:24]}.pt"


def condense_partition(
    data: ArrayDataset,
    *,
    distill: DistillConfig,
    device: torch.device | str = "cpu",
    private: PrivateCondensation | None = None,
    embedder: nn.Module | None = None,
    warm_start: SyntheticSet | None = None,
    start: torch.Tensor | None = None,
    checkpoints: Path | None = None,
    checkpoint_every: int = 20,
) -> CondenseOutcome:
    """Condense a client's partition with DM into ``ipc`` images per class it holds.

    Non-IID clients often hold a class with fewer real images than ``ipc``; real init then
    repeats that class's images (jittered) so one DM run still covers every class. That start,
    or the previous round's set (a warm start), is handed to DM as its ``start`` images. Under
    DP the init is noise (real init would publish real images).

    Parameters
    ----------
    data : ArrayDataset
        The client's real training data (never returned).
    distill : DistillConfig
        DM settings (ipc, iterations, init ...).
    private : PrivateCondensation | None
        Differentially private DM: the run's plan, budget checks and ledger, built for this
        data and ``distill`` (its set then carries ``epsilon``, ``delta`` and the plan).
    embedder : nn.Module | None
        Multi-round mode: the global model as DM's embedding network.
    warm_start : SyntheticSet | None
        The client's previous synthetic set (from ``Context.state``); used as the start point
        when it holds exactly ``ipc`` images of each class present. Under DP only when its
        metadata carries an ``epsilon``: the caller vouches that it is an earlier DP output of
        this same data (the ClientApp keeps that record on the node, beside the set).
    start : torch.Tensor | None
        Explicit start images (stored images, label order), e.g. the release gate's
        re-condensation; overrides the init and the warm start.
    checkpoints : Path | None
        The node's checkpoint folder: DM writes a checkpoint there every ``checkpoint_every``
        iterations and at the end (:func:`condensation_checkpoint` names the file), and a
        repeated request continues from it.
    """
    counts = data.class_counts()
    present = [c for c in range(data.spec.num_classes) if counts[c] > 0]
    if not present:
        raise ValueError("the client's partition is empty")
    skipped = [c for c in range(data.spec.num_classes) if counts[c] == 0]
    init = distill.init if private is None else "noise"
    generator = torch.Generator().manual_seed(distill.seed)
    expected_labels = torch.tensor(present).repeat_interleave(distill.ipc)
    fits = start is None and warm_start is not None and torch.equal(warm_start.labels, expected_labels)
    # a DP run may start only from what reveals nothing more: noise or an earlier DP set
    warm = fits and (private is None or "epsilon" in warm_start.meta)
    if fits and not warm:
        logger.warning("the previous synthetic set was not condensed with DP: not reused as a DP run's start")
    if start is not None:
        if private is not None:
            raise ValueError("an explicit start is published with the set: a DP run starts from noise")
        if start.shape[0] != expected_labels.shape[0]:
            raise ValueError(f"start holds {start.shape[0]} images, {expected_labels.shape[0]} expected")
    elif warm:
        start = warm_start.images
    else:
        if warm_start is not None and not fits:
            logger.warning(
                "the previous synthetic set does not hold ipc=%d images of each class: not reused", distill.ipc
            )
        # multi-formation: factor^2 start images per stored one, downsampled and tiled
        start = initial_images(
            data,
            classes=present,
            ipc=distill.ipc * distill.factor**2,
            init=init,
            generator=generator,
            model=distill.model,
        )
        start = encode_formation(start, factor=distill.factor)
    # the start is given explicitly, so DM's own init is never drawn ("noise": nothing to check)
    config = dataclasses.replace(distill, init="noise", checkpoint_every=checkpoint_every if checkpoints else 0)
    resumable = {}
    if checkpoints is not None:
        path = condensation_checkpoint(checkpoints, data, distill=distill, start=start, embedder=embedder,
                                       private=private)
        path.parent.mkdir(parents=True, exist_ok=True)
        resumable = {"checkpoint_path": path, "resume": True}
    if private is None:
        engine = get_condenser("dm", config, device=device, embedder=embedder)
        result = engine.condense(data, start=start, **resumable)
    else:
        engine = get_condenser("dm", config, device=device, real_statistics=private.statistics, embedder=embedder)
        # the start is data-independent noise or the previous round's DP set (post-processing)
        result = private.condense(engine, data, start=start, start_is_public=True, **resumable)
    meta = {**result.synthetic.meta, "init": init, "warm_start": warm}
    synthetic = SyntheticSet(result.synthetic.images, result.synthetic.labels, meta)
    loss = result.losses[-1] if result.losses else float("nan")
    return CondenseOutcome(synthetic, result.seconds, loss, meta.get("epsilon"), meta.get("delta"), skipped)


def local_train(
    model: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    proximal_mu: float = 0.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """FedAvg/FedProx local update: SGD (momentum 0.9, weight decay 5e-4) on the client's data.

    The learning rate stays ``lr`` for all local epochs (no in-round decay).
    ``proximal_mu > 0`` adds FedProx's ``mu/2 ||w - w_global||^2`` (a :class:`ProximalTerm`
    anchored at the weights the model arrives with, the global ones).
    """
    device = resolve_device(device)
    proximal = ProximalTerm(model.to(device), mu=proximal_mu) if proximal_mu > 0 else None
    return train_model(
        model,
        data.images,
        data.labels,
        epochs=epochs,
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=batch_size,
        augment=None,
        generator=generator,
        device=device,
        loss_hook=proximal,
        lr_decay=False,
    )
