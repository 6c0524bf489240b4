"""Distribution matching (DM, Zhao & Bilen, WACV 2023).

Each iteration draws a freshly initialised embedding network (or uses a supplied one),
applies the *same* differentiable siamese augmentation to the real and synthetic images of
each class, and minimises

    loss = sum_c || mean(embed(real_c)) - mean(embed(syn_c)) ||^2

with SGD on the synthetic pixels (``matching="mmd"`` adds a Gaussian-kernel MMD per class,
see :mod:`fedcond.distill.matching`). All classes go through the network in one batched forward;
the real side runs under ``torch.inference_mode()`` (no autograd graph) and, where the device
supports it, in bf16 autocast.

:class:`DistributionMatchingLoss` is that loss; :class:`DistributionMatching` draws the start
and runs the loss in the shared pixel-optimisation loop (:func:`~fedcond.distill.optimisation.optimise_pixels`),
which owns the optimiser, checkpoints, resume, the time budget and progress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedcond.config import DistillConfig, choices_of
from fedcond.data.registry import DIGIT_DATASETS, ArrayDataset, DatasetSpec
from fedcond.devices import autocast_context, resolve_device
from fedcond.distill.augment import SiameseAugment
from fedcond.distill.condenser import ShortClassError, register_condenser
from fedcond.distill.coreset import HerdingSelector
from fedcond.distill.formation import check_factor, decode_formation, encode_formation, expand_labels
from fedcond.distill.kmeans import kmeans
from fedcond.distill.matching import class_mmd_loss, dm_loss
from fedcond.distill.optimisation import CondensationResult, DivergenceError, optimise_pixels
from fedcond.distill.statistics import MeanStatistics, RealStatistics, class_means
from fedcond.distill.synthetic import SyntheticSet, dataset_meta
from fedcond.models import get_model, reset_parameters

__all__ = [
    "INITS",
    "CondensationResult",
    "DistributionMatching",
    "DistributionMatchingLoss",
    "DivergenceError",
    "dm_loss",
    "initial_synthetic",
]

#: synthetic-set initialisations: random real images, the herding coreset, per-class k-means
#: centroids, or N(0, 1) noise
INITS = choices_of(DistillConfig, "init")

logger = logging.getLogger(__name__)

#: prefix of the real-side statistics' ``state_dict`` entries in the loss's state
_STATISTICS_PREFIX = "statistics."
#: a compiled real forward without chunking sees batches padded to a multiple of this
_COMPILED_BUCKET = 256


def _class_pools(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return list(torch.split(order, counts))


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def initial_synthetic(
    data: ArrayDataset,
    *,
    ipc: int,
    init: str,
    classes: list[int],
    generator: torch.Generator,
    model: str = "convnet",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial synthetic images and labels for ``classes``.

    ``init``: ``real`` draws random real images of each class, ``herding`` the herding coreset
    of each class (embeddings under a randomly initialised ``model`` drawn from ``generator``,
    the same selection as ``fedcond coreset --method herding``), ``kmeans`` the centroids of
    ``ipc`` k-means clusters of the class's images in pixel space (:func:`kmeans`), ``noise``
    N(0, 1) images.

    Raises
    ------
    ValueError
        If ``init`` is unknown, or a class holds fewer than ``ipc`` images under real, herding
        or kmeans init.
    """
    _check_init(init)
    pools = _class_pools(data.labels, data.spec.num_classes)
    selector = None
    if init == "herding":
        selector = HerdingSelector(model=model, spec=data.spec)
    images, labels = [], []
    for c in classes:
        if init != "noise":
            pool = pools[c]
            if pool.numel() < ipc:
                raise ValueError(
                    f"class {c} holds {pool.numel()} image(s) but ipc={ipc} with {init} init needs "
                    f"at least {ipc}; lower --ipc or use --init noise"
                )
            if init == "kmeans":
                images.append(kmeans(data.images[pool], k=ipc, generator=generator).centroids)
            elif selector is None:
                images.append(data.images[pool[torch.randperm(pool.numel(), generator=generator)[:ipc]]].clone())
            else:
                images.append(data.images[pool[selector.select(data.images[pool], k=ipc, generator=generator)]].clone())
        else:
            images.append(torch.randn((ipc, *data.spec.image_shape), generator=generator))
        labels.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def _slots_within_groups(groups: torch.Tensor, num_classes: int, slots_per_class: int) -> torch.Tensor:
    """Slot ``c * S + j`` for the j-th sample of class c (``groups`` must be sorted)."""
    counts = torch.bincount(groups, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(groups.numel()) - starts[groups]
    return groups * slots_per_class + position


def _check_real_data(data: ArrayDataset) -> None:
    """Refuse real data DM cannot match: empty, non-finite, or labels outside the classes."""
    if len(data) == 0:
        raise ValueError("cannot condense an empty dataset")
    if not bool(torch.isfinite(data.images).all()):
        raise ValueError("the real images contain NaN or infinite values")
    num_classes = data.spec.num_classes
    if int(data.labels.min()) < 0 or int(data.labels.max()) >= num_classes:
        raise ValueError(
            f"labels outside [0, {num_classes}) in the real data "
            f"(found {int(data.labels.min())}..{int(data.labels.max())})"
        )


@dataclass(frozen=True)
class _MatchingPlan:
    """What every iteration of one DM run reads and never changes.

    ``train_labels`` (CPU) and ``syn_groups`` (device) label the training images DM matches:
    the stored synthetic images, or their decoded tiles under multi-formation.
    """

    spec: DatasetSpec
    classes: list[int]
    present: torch.Tensor
    real_images: torch.Tensor
    pools: list[torch.Tensor]
    train_labels: torch.Tensor
    syn_groups: torch.Tensor
    augment: SiameseAugment | None
    per_class_augmentation: bool
    memory_format: torch.memory_format


@register_condenser("dm")
class DistributionMatching:
    """The DM condenser (registered as ``dm``).

    Parameters
    ----------
    config : DistillConfig
        IPC, iterations, init, optimiser, batch and speed switches.
    device : torch.device | str
        ``auto``, ``cpu``, ``cuda`` or a torch device.
    real_statistics : RealStatistics | None
        Samples the real batch and computes per-class means; :class:`MeanStatistics` by default.
        The DP variant from ``fedcond.privacy`` plugs in here. An object missing a member of
        the protocol is a ``TypeError``.
    embedder : nn.Module | None
        A fixed embedding network (e.g. the federated global model). When ``None`` a freshly
        initialised ``config.model`` is drawn every iteration, as in the paper. It is moved to
        ``device``; during :meth:`condense` it is frozen and in train mode, and afterwards its
        ``requires_grad`` flags and train/eval modes are as before.
    progress : bool
        Show a tqdm bar with the loss and it/s.

    Examples
    --------
    >>> from fedcond.data import load_dataset
    >>> splits = load_dataset("digits")
    >>> result = DistributionMatching(DistillConfig(ipc=1, iterations=5)).condense(splits.train)
    >>> len(result.synthetic)
    10
    """

    def __init__(
        self,
        config: DistillConfig,
        *,
        device: torch.device | str = "cpu",
        real_statistics: RealStatistics | None = None,
        embedder: nn.Module | None = None,
        progress: bool = False,
    ) -> None:
        # every field of ``config`` is in range: DistillConfig checks itself when built
        if real_statistics is not None and not isinstance(real_statistics, RealStatistics):
            raise TypeError(
                f"real_statistics ({type(real_statistics).__name__}) does not implement "
                "fedcond.distill.RealStatistics: it needs augmentation_per_class, means_only, sample_batch, "
                "class_means, fingerprint, state_dict and load_state_dict"
            )
        if config.matching == "mmd" and real_statistics is not None and real_statistics.means_only:
            raise ValueError(
                "matching='mmd' needs every real embedding, but the supplied real statistics "
                f"({type(real_statistics).__name__}) release only class means (as differentially "
                "private DM does): use matching='mean'"
            )
        if config.queue_size > 0:
            conflicts = [
                name
                for name, conflict in (
                    ("real_statistics (DP: the queue trains on raw real data)",
                     real_statistics is not None and real_statistics.means_only),
                    ("embedder", embedder is not None),
                    ("compile", config.compile),
                    ("checkpoint_every", config.checkpoint_every > 0),
                )
                if conflict
            ]
            if conflicts:
                raise ValueError(
                    f"queue_size > 0 (IDM's embedder queue) cannot be combined with {', '.join(conflicts)}"
                )
        check_factor(config.factor)
        self.config = config
        self.device = resolve_device(device)
        self.statistics: RealStatistics = real_statistics or MeanStatistics(batch_size=config.batch_real)
        self.embedder = embedder
        self.progress = progress
        #: the matching loss; it keeps its embedding network across runs
        self.loss = DistributionMatchingLoss(
            config, device=self.device, statistics=self.statistics, embedder=embedder
        )

    # ------------------------------------------------------------------------------ public
    def condense(
        self,
        data: ArrayDataset,
        *,
        start: torch.Tensor | None = None,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        on_iteration: Callable[[int, float], None] | None = None,
    ) -> CondensationResult:
        """Condense ``data`` into ``ipc`` synthetic images per class present.

        Parameters
        ----------
        data : ArrayDataset
            The (client's) real training data.
        start : torch.Tensor | None
            Start from these images instead of drawing ``config.init`` (e.g. a federated
            client's previous synthetic set): ``ipc`` images of each class present, class by
            class in increasing order. ``meta["given_start"]`` records it; ``meta["init"]``
            stays ``config.init``, so under DP the caller vouches that the start is private
            (noise, or an earlier DP output), as it does for a supplied ``embedder``.
        checkpoint_path : str | Path | None
            Where to write a checkpoint every ``config.checkpoint_every`` iterations (and at the
            end); with ``resume=True`` an existing checkpoint there is continued.
        on_iteration : callable | None
            Called as ``on_iteration(iteration, loss)`` after every step.

        Returns
        -------
        CondensationResult

        Raises
        ------
        ValueError
            For unusable real data or ``start`` images, and for a checkpoint that cannot be
            resumed: unreadable or corrupted, written by another run, or already past
            ``config.iterations`` (resuming it would label a longer run with a shorter count).
        """
        if self.embedder is None:
            return self._condense(
                data, start=start, checkpoint_path=checkpoint_path, resume=resume, on_iteration=on_iteration
            )
        # the supplied embedder is frozen and put in train mode for the run; give it back as it came
        training = {m: m.training for m in self.embedder.modules()}
        trainable = {p: p.requires_grad for p in self.embedder.parameters()}
        try:
            return self._condense(
                data, start=start, checkpoint_path=checkpoint_path, resume=resume, on_iteration=on_iteration
            )
        finally:
            for module, mode in training.items():
                module.training = mode
            for param, flag in trainable.items():
                param.requires_grad_(flag)
            self.loss.forget_network()  # the next condense() prepares it again

    def _condense(
        self,
        data: ArrayDataset,
        *,
        start: torch.Tensor | None,
        checkpoint_path: str | Path | None,
        resume: bool,
        on_iteration: Callable[[int, float], None] | None,
    ) -> CondensationResult:
        cfg = self.config
        _check_real_data(data)
        spec = data.spec
        check_factor(cfg.factor, image_size=spec.image_size)
        counts = data.class_counts()
        classes = [c for c in range(spec.num_classes) if counts[c] > 0]
        skipped = [c for c in range(spec.num_classes) if counts[c] == 0]
        if skipped:
            logger.warning("classes %s have no real samples on this client: skipped", skipped)

        generator = torch.Generator().manual_seed(cfg.seed)
        if start is None:
            images, labels = self._initial_images(data, classes=classes, counts=counts, generator=generator)
        else:
            images, labels = self._given_start(start, spec=spec, classes=classes)
        run = optimise_pixels(
            self.loss,
            data,
            images=images,
            labels=labels,
            config=cfg,
            generator=generator,
            device=self.device,
            checkpoint_path=checkpoint_path,
            resume=resume,
            on_iteration=on_iteration,
            progress=self.progress,
        )
        meta = {
            **dataset_meta(spec),
            "ipc": cfg.ipc,
            "method": "dm",
            "init": cfg.init,
            "given_start": start is not None,
            "dsa_layout": ("class" if self.loss.per_class_augmentation else "sample") if cfg.dsa else None,
            "matching": cfg.matching,
            "factor": cfg.factor,
            "seed": cfg.seed,
            "iterations": run.iterations_run,
            "skipped_classes": skipped,
        }
        return run.result(SyntheticSet(run.images, labels.cpu(), meta), skipped_classes=skipped)

    # ------------------------------------------------------------------------------ one run's pieces
    def _initial_images(
        self, data: ArrayDataset, *, classes: list[int], counts: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``config.init`` images and labels: ``ipc`` stored images per class present."""
        cfg = self.config
        factor = cfg.factor
        tiles_per_class = cfg.ipc * factor * factor  # training images per class DM matches
        short = [c for c in classes if counts[c] < tiles_per_class]
        if factor > 1 and cfg.init != "noise" and short:
            raise ShortClassError(
                f"classes {short} hold fewer than ipc x factor^2 = {cfg.ipc} x {factor * factor} = "
                f"{tiles_per_class} images, which {cfg.init} init with factor {factor} needs; "
                "lower ipc or factor, or use noise init"
            )
        # multi-formation: factor^2 initial images per stored one, downsampled and tiled
        images, labels = initial_synthetic(
            data, ipc=tiles_per_class, init=cfg.init, classes=classes, generator=generator, model=cfg.model
        )
        return encode_formation(images, factor=factor), labels[:: factor * factor].clone()

    def _given_start(
        self, start: torch.Tensor, *, spec: DatasetSpec, classes: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The caller's start images, checked, with their class-by-class labels."""
        labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(self.config.ipc)
        expected = (len(labels), *spec.image_shape)
        if tuple(start.shape) != expected:
            raise ValueError(
                f"start images have shape {tuple(start.shape)}; this run needs {expected} "
                f"(ipc={self.config.ipc} for each of the {len(classes)} classes present)"
            )
        if not bool(torch.isfinite(start).all()):
            raise ValueError("the start images contain NaN or infinite values")
        return start.detach().float().cpu().clone(), labels

class DistributionMatchingLoss:
    """DM's matching loss (a :class:`~fedcond.distill.optimisation.MatchingLoss`).

    Each call draws an embedding network (a fresh random one, the supplied ``embedder``, or
    one of IDM's queue), a real batch from ``statistics`` and one augmentation, and returns
    the squared distance between the class means of the real and synthetic embeddings (plus
    the MMD term under ``matching="mmd"``). The real forward may be compiled and chunked.

    Parameters
    ----------
    config : DistillConfig
        The run's settings (model, augmentation, matching, queue, speed switches).
    device : torch.device
        Where the networks and the real images live.
    statistics : RealStatistics
        Samples the real batch and computes the per-class means (DP plugs in here).
    embedder : nn.Module | None
        A fixed embedding network; ``None`` draws ``config.model`` afresh every iteration.
    """

    name = "DM"
    steps_per_iteration = 1

    def __init__(
        self,
        config: DistillConfig,
        *,
        device: torch.device,
        statistics: RealStatistics,
        embedder: nn.Module | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.statistics = statistics
        self.embedder = embedder
        self._plan: _MatchingPlan | None = None
        self._net: nn.Module | None = None
        self._net_shape: tuple[tuple[int, ...], int] | None = None
        self._real_embed: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._batch_statistics = False
        self._real_batch_sizes: set[int] = set()  # unchunked real batch sizes seen (compiled runs)
        self._queue: list[tuple[nn.Module, int]] = []  # IDM's embedders and their training steps

    # ------------------------------------------------------------------------------ MatchingLoss
    def prepare(self, data: ArrayDataset, *, synthetic_labels: torch.Tensor) -> None:
        """Move the real data to the device, fix what every iteration reads, start the queue afresh."""
        spec = data.spec
        if self.embedder is None and self._net_shape != (tuple(spec.image_shape), spec.num_classes):
            # the random network kept from an earlier run fits another image shape or class count
            self.forget_network()
            self._net_shape = (tuple(spec.image_shape), spec.num_classes)
        self._queue = []  # every run starts its queue afresh, from its own generator
        counts = data.class_counts()
        classes = [c for c in range(spec.num_classes) if counts[c] > 0]
        self._plan = self._make_plan(data, classes=classes, syn_labels=synthetic_labels)

    def loss(self, images: torch.Tensor, *, iteration: int, step: int, generator: torch.Generator) -> torch.Tensor:
        """One DM step's loss: draw a network, a real batch and one augmentation, and match."""
        if self._plan is None:
            raise RuntimeError("DistributionMatchingLoss.prepare() must run before loss()")
        return self._iteration_loss(self._plan, images, generator=generator)

    def remedy(self) -> str:
        """The settings to lower when DM diverges."""
        return f"lower --lr-img ({self.config.lr_img}) or --mmd-weight ({self.config.mmd_weight})"

    def fingerprint(self) -> dict[str, object]:
        """The real-side statistics' fingerprint (a DP plan) and the supplied embedder's type."""
        return {
            "statistics": self.statistics.fingerprint(),
            "embedder": None if self.embedder is None else type(self.embedder).__name__,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The real-side statistics' state (a seeded DP run's private generator), prefixed."""
        return {_STATISTICS_PREFIX + k: v for k, v in self.statistics.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the statistics' entries of :meth:`state_dict`."""
        self.statistics.load_state_dict(
            {k[len(_STATISTICS_PREFIX):]: v for k, v in state.items() if k.startswith(_STATISTICS_PREFIX)}
        )

    # ------------------------------------------------------------------------------ the run's pieces
    @property
    def per_class_augmentation(self) -> bool:
        """Whether one augmentation is drawn per class (else per sample slot)."""
        return self.config.augment.layout == "class" or self.statistics.augmentation_per_class

    def forget_network(self) -> None:
        """Drop the kept embedding network; the next run draws or prepares it again."""
        self._net, self._real_embed = None, None

    def _make_plan(self, data: ArrayDataset, *, classes: list[int], syn_labels: torch.Tensor) -> _MatchingPlan:
        """Move the real data to the device and fix what every iteration reads."""
        cfg = self.config
        spec = data.spec
        device = self.device
        # the training images DM matches: the stored ones, or their decoded tiles
        train_labels = expand_labels(syn_labels, factor=cfg.factor)
        present = torch.zeros(spec.num_classes, dtype=torch.bool, device=device)
        present[classes] = True
        return _MatchingPlan(
            spec=spec,
            classes=classes,
            present=present,
            real_images=data.images.to(device),
            pools=_class_pools(data.labels, spec.num_classes),
            train_labels=train_labels,
            syn_groups=train_labels.to(device),
            augment=SiameseAugment(cfg.augment, drop_flip=spec.name in DIGIT_DATASETS) if cfg.dsa else None,
            # one parameter set per class: the reference's Siamese mode, and required under DP (an
            # image's transform must not depend on which other images were sampled)
            per_class_augmentation=self.per_class_augmentation,
            memory_format=(
                torch.channels_last if cfg.channels_last and device.type == "cpu" else torch.contiguous_format
            ),
        )

    def _iteration_loss(self, plan: _MatchingPlan, syn: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """One DM step's loss: draw a network, a real batch and one augmentation, and match."""
        cfg = self.config
        device = self.device
        num_classes = plan.spec.num_classes
        memory_format = plan.memory_format
        if cfg.queue_size > 0:
            net = self._queued_network(plan, generator, memory_format)
        else:
            net = self._embedding_network(plan.spec, generator, memory_format)
        # augmentation draws from its own per-iteration stream, so how many parameters the
        # (possibly Poisson-sized, private) real batch needs never shifts later draws
        aug_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        batch = self.statistics.sample_batch(plan.pools, generator=generator)
        real_groups = batch.groups
        real_groups_on_device = real_groups.to(device)
        augment = plan.augment
        if augment is not None:
            if plan.per_class_augmentation:
                slots_per_class, real_slots, syn_slots = 1, real_groups, plan.train_labels
            else:
                largest = int(torch.bincount(real_groups).max()) if real_groups.numel() else 0
                slots_per_class = max(largest, cfg.ipc * cfg.factor * cfg.factor)
                real_slots = _slots_within_groups(real_groups, num_classes, slots_per_class)
                syn_slots = _slots_within_groups(plan.train_labels, num_classes, slots_per_class)
            params = augment.sample(
                num_classes * slots_per_class, generator=aug_generator, image_size=plan.spec.image_size
            )
        # real side: no graph, optional bf16
        with torch.inference_mode(), autocast_context(device, enabled=cfg.mixed_precision):
            real = plan.real_images[batch.indices.to(device)]
            if augment is not None:
                real = augment.apply(real, params, real_slots)
            if real.shape[0] == 0:  # an empty Poisson batch: the statistics add noise only
                real_emb = torch.zeros(0, net.feature_dim, device=device)
            else:
                real_emb = self._embed_real(real.contiguous(memory_format=memory_format))
        real_means = self.statistics.class_means(
            real_emb, real_groups_on_device, num_classes=num_classes, generator=generator
        ).clone()
        if cfg.matching == "mmd":
            real_emb = real_emb.clone()  # leaves inference mode: the kernel's backward reads it
        # synthetic side: the only graph
        with autocast_context(device, enabled=cfg.mixed_precision):
            x = decode_formation(syn, factor=cfg.factor)
            if augment is not None:
                x = augment.apply(x, params, syn_slots)
            syn_emb = net.embed(x.contiguous(memory_format=memory_format))
        syn_means = class_means(syn_emb, plan.syn_groups, num_classes=num_classes)
        loss = dm_loss(real_means[plan.present].float(), syn_means[plan.present])
        if cfg.matching == "mmd":
            loss = loss + class_mmd_loss(
                real_emb, real_groups_on_device, syn_emb, plan.syn_groups, classes=plan.classes, weight=cfg.mmd_weight
            )
        return loss

    # ------------------------------------------------------------------------------ helpers
    def _queued_network(
        self, plan: _MatchingPlan, generator: torch.Generator, memory_format: torch.memory_format
    ) -> nn.Module:
        """IDM's embedder: one of the queue's networks, trained one SGD step on real data first.

        A network that has taken ``queue_lifetime`` steps is replaced by a fresh one. The step
        is cross-entropy on up to 32 real images of every class present (lr 0.01, no momentum).
        """
        cfg = self.config
        while len(self._queue) < cfg.queue_size:
            fresh = get_model(cfg.model, plan.spec, generator=generator).to(self.device, memory_format=memory_format)
            self._queue.append((fresh, 0))
        slot = int(torch.randint(len(self._queue), (1,), generator=generator))
        net, steps = self._queue[slot]
        if steps >= cfg.queue_lifetime:
            net = get_model(cfg.model, plan.spec, generator=generator).to(self.device, memory_format=memory_format)
            steps = 0
        picks = [plan.pools[c][torch.randperm(plan.pools[c].numel(), generator=generator)[:32]] for c in plan.classes]
        targets = torch.cat(
            [torch.full((len(p),), c, dtype=torch.long) for p, c in zip(picks, plan.classes, strict=True)]
        )
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        images = plan.real_images[torch.cat(picks).to(self.device)].contiguous(memory_format=memory_format)
        loss = nn.functional.cross_entropy(net(images), targets.to(self.device))
        grads = torch.autograd.grad(loss, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads, strict=True):
                p.sub_(0.01 * g)
                p.requires_grad_(False)
        self._queue[slot] = (net, steps + 1)
        self._net, self._real_embed = net, net.embed
        self._batch_statistics = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        return net

    def _embedding_network(
        self, spec: object, generator: torch.Generator, memory_format: torch.memory_format
    ) -> nn.Module:
        """This iteration's embedding network: the supplied one, or the reused module re-drawn."""
        if self.embedder is not None:
            net = self.embedder
        elif self._net is None:
            net = get_model(self.config.model, spec, generator=generator)  # type: ignore[arg-type]
        else:
            # one module for the whole run, re-initialised in place: no allocation per iteration,
            # and a compiled forward stays valid (weights are graph inputs, not constants)
            net = reset_parameters(self._net, generator=generator)
        if net is not self._net:
            net = net.to(self.device, memory_format=memory_format)
            net.train()
            for p in net.parameters():
                p.requires_grad_(False)
            self._net = net
            self._real_embed = self._maybe_compile(net)
            # batch norm in train mode couples the samples of a forward: never split it
            self._batch_statistics = any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
            )
        return net

    def _embed_real(self, images: torch.Tensor) -> torch.Tensor:
        """Real-side embeddings, in fixed-size chunks on CPU (see ``DistillConfig.real_chunk``).

        A compiled forward is specialised to its input shape, so with ``compile`` the shapes are
        kept few: a chunked batch pads its tail to the chunk size, and once an unchunked batch
        (on CUDA, or a small one) has changed size (a DP run's Poisson batch does, every
        iteration, and would recompile until dynamo gives up) it is padded to a multiple of
        ``_COMPILED_BUCKET``. Instance norm is per sample, so the zero rows change nothing for
        the real ones and are dropped. Batch norm couples the samples: never split nor padded.
        """
        if self._batch_statistics:
            return self._embed_real_once(images)
        chunk = self.config.real_chunk
        if chunk > 0 and images.device.type == "cpu" and images.shape[0] > chunk:
            return torch.cat([self._embed_padded(part, size=chunk) for part in images.split(chunk)])
        if self.config.compile:
            self._real_batch_sizes.add(images.shape[0])
            if len(self._real_batch_sizes) > 1:
                return self._embed_padded(images, size=-(-images.shape[0] // _COMPILED_BUCKET) * _COMPILED_BUCKET)
        return self._embed_real_once(images)

    def _embed_padded(self, images: torch.Tensor, *, size: int) -> torch.Tensor:
        """Embeddings of ``images``, run as a batch of ``size`` (zero rows added) when compiling."""
        count = images.shape[0]
        if count < size and self.config.compile:
            images = torch.cat([images, images.new_zeros((size - count, *images.shape[1:]))])
        return self._embed_real_once(images)[:count]

    def _embed_real_once(self, images: torch.Tensor) -> torch.Tensor:
        assert self._real_embed is not None
        try:
            return self._real_embed(images)
        except Exception as exc:  # noqa: BLE001 - a failed compile falls back to eager, once
            if self._net is None or self._real_embed == self._net.embed:
                raise
            logger.warning("compiled forward failed (%s); falling back to eager mode", exc)
            self._real_embed = self._net.embed
            return self._real_embed(images)

    def _maybe_compile(self, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.config.compile:
            return net.embed
        try:
            return torch.compile(net.embed, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - compile support varies by platform
            logger.warning("torch.compile unavailable (%s); using eager mode", exc)
            return net.embed

