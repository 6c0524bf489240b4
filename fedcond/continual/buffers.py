"""``DistilledBuffer``: an Avalanche storage policy that condenses each experience with DM.

After every training experience the buffer takes that experience's real data, condenses the
classes it holds with DM (the ``dm`` condenser of :func:`~fedcond.distill.get_condenser`) into as many synthetic
images per class as the class's quota, and keeps them; the real data is then dropped.

Budget (the same rules as Avalanche's :class:`~avalanche.training.storage_policy.ClassBalancedBuffer`,
so the two hold exactly the same number of images):

* ``adaptive_size=False, total_num_classes=K`` -- every class gets ``max_size // K`` images;
  :meth:`DistilledBuffer.per_class` builds this mode from ``memory_per_class``. The buffer
  holds ``quota x classes seen`` images and reaches ``max_size`` once all ``K`` classes are seen.
* ``adaptive_size=True`` (fixed total budget) -- the ``max_size`` images are divided over the
  classes seen so far: quota ``max_size // n`` and the ``max_size % n`` oldest classes get one
  more, so the buffer always holds exactly ``max_size`` images (once ``n <= max_size``).
  Quotas never grow when classes are added, so older classes *shrink*: each class's images are
  kept sorted by importance and a shrinking class keeps its first ``k``.

Importance order: herding (Welling 2009) on the synthetic images' embeddings under a seeded,
randomly initialised network of the DM family -- the prefix of length ``k`` is the subset whose
mean embedding best tracks the mean of all the class's synthetic images, which is exactly the
statistic DM matched to the real data.

Multi-formation (``DistillConfig(factor=f)``, IDC): each stored image holds ``f x f``
downsampled tiles. The budget counts *stored* images, so the buffer holds exactly as many
pixels as a buffer of real images; replay and GDumb train on the decoded tiles
(``f^2`` training images per stored one, see :attr:`DistilledBuffer.buffer`). A stored image's
importance is its tiles' mean embedding.

Edge cases (documented behaviour, tested):

* a class with fewer real images than its quota (even a single image) is condensed from noise
  initialisation (``init="noise"``), so the buffer still holds exactly its quota;
* a class that comes back in a later experience is re-condensed from its new real images plus
  its current synthetic images (which stand for the data already gone);
* a budget smaller than the number of classes (``max_size < K`` or, adaptive, fewer images than
  classes seen) raises :class:`ValueError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.training.storage_policy import ExemplarsBuffer

from fedcond.config import DistillConfig, offset_seed
from fedcond.continual.benchmarks import dataset_tensors, to_avalanche_dataset
from fedcond.data.registry import ArrayDataset, DatasetSpec
from fedcond.distill.condenser import accepts_option, condenser_class, get_condenser
from fedcond.distill.coreset import HerdingSelector, herding_order
from fedcond.distill.formation import decode_formation, expand_labels
from fedcond.distill.synthetic import SyntheticSet, dataset_meta

__all__ = ["ArrivalOrder", "DistilledBuffer", "class_quotas"]

logger = logging.getLogger(__name__)


class ArrivalOrder(dict):
    """Classes in order of arrival with the ``set`` methods Avalanche's buffers call.

    Avalanche's ``ClassBalancedBuffer`` / ``ParametricBuffer`` keep ``seen_classes`` /
    ``seen_groups`` as a ``set`` and hand the ``max_size % n`` extra images of an adaptive
    budget to the first classes the set iterates, i.e. to the smallest class ids. Put in
    their place, this gives them to the oldest classes (within one experience: the smallest
    id), as :func:`class_quotas` does for :class:`DistilledBuffer`, so every replay kind keeps
    the same images per class.
    """

    def update(self, classes: Any = (), /, **_: Any) -> None:  # type: ignore[override]
        """Add ``classes`` not seen before, smallest id first."""
        for c in sorted(int(x) for x in classes):
            self.setdefault(c, None)

    def add(self, c: int) -> None:
        """Add one class."""
        self.setdefault(int(c), None)


def class_quotas(
    classes: Sequence[int], *, max_size: int, total_num_classes: int | None = None
) -> dict[int, int]:
    """Images per class for a budget of ``max_size`` images.

    Parameters
    ----------
    classes : Sequence[int]
        Classes seen so far, in order of arrival (oldest first).
    max_size : int
        The budget in images.
    total_num_classes : int | None
        ``None``: adaptive -- ``max_size`` is divided over ``classes`` (the oldest
        ``max_size % n`` classes get one extra image). Otherwise every class gets
        ``max_size // total_num_classes``.

    Raises
    ------
    ValueError
        If the budget cannot give every class at least one image, or more classes arrive than
        ``total_num_classes``.
    """
    if max_size <= 0:
        raise ValueError(f"the memory budget must be positive, got {max_size} images")
    n = len(classes)
    if total_num_classes is not None:
        if total_num_classes <= 0:
            raise ValueError(f"total_num_classes must be positive, got {total_num_classes}")
        if max_size < total_num_classes:
            raise ValueError(
                f"a budget of {max_size} images is smaller than the {total_num_classes} classes: "
                "every class needs at least one image"
            )
        if n > total_num_classes:
            raise ValueError(
                f"{n} classes seen but the budget is divided among total_num_classes={total_num_classes}: "
                "the memory would exceed its budget"
            )
        return {c: max_size // total_num_classes for c in classes}
    if n == 0:
        return {}
    if max_size < n:
        raise ValueError(
            f"a budget of {max_size} images is smaller than the {n} classes seen so far: "
            "every class needs at least one image"
        )
    base, extra = divmod(max_size, n)
    return {c: base + (1 if i < extra else 0) for i, c in enumerate(classes)}


@contextmanager
def _classes_absent_is_expected() -> Iterator[None]:
    """An experience holds a few classes by design: mute DM's "classes skipped" warning."""
    dm_logger = logging.getLogger("fedcond.distill.dm")
    level = dm_logger.level
    dm_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        dm_logger.setLevel(level)


class DistilledBuffer(ExemplarsBuffer):
    """Replay memory of DM-condensed images, updated after each experience.

    Parameters
    ----------
    max_size : int
        Budget in images (see the module docstring for the two budget modes).
    spec : DatasetSpec
        Image shape, classes and name of the stream's dataset (DM needs them).
    distill : DistillConfig | None
        DM settings; ``ipc`` is ignored (the class quota is used) and ``seed`` is offset by the
        update count so that every experience draws its own, reproducible randomness.
    adaptive_size : bool
        ``True``: fixed total budget shared by the classes seen so far.
    total_num_classes : int | None
        Required when ``adaptive_size`` is ``False``: every class gets ``max_size // K``.
    device : torch.device | str
        Where DM runs.
    cache_dir : str | Path | None
        Reuse condensed sets keyed by a hash of the real data and the DM settings (files are
        ``.npz`` loaded without pickle). Lets a benchmark share one condensation between the
        replay and the GDumb protocols.
    progress : bool
        Show DM's tqdm bar.
    method : str
        The registered condenser that makes each class's images (``dm`` by default; see
        :func:`~fedcond.distill.list_condensers`). A method that selects real images refuses a
        class shorter than its quota (the small-class policy of :mod:`fedcond.distill.condenser`).

    Raises
    ------
    ValueError
        For an unknown ``method`` (the registered ones are listed) or a budget the classes do
        not fit.

    Examples
    --------
    >>> buffer = DistilledBuffer.per_class(10, spec=spec)       # doctest: +SKIP
    >>> plugin = DistilledReplayPlugin(buffer)                                  # doctest: +SKIP
    >>> Naive(model=model, optimizer=opt, plugins=[plugin]).train(experience)   # doctest: +SKIP
    """

    def __init__(
        self,
        max_size: int,
        *,
        spec: DatasetSpec,
        distill: DistillConfig | None = None,
        adaptive_size: bool = True,
        total_num_classes: int | None = None,
        device: torch.device | str = "cpu",
        cache_dir: str | Path | None = None,
        progress: bool = False,
        method: str = "dm",
    ) -> None:
        condenser_class(method)  # an unknown name fails here, not after the first experience
        if adaptive_size and total_num_classes is not None:
            raise ValueError("total_num_classes is only used with adaptive_size=False")
        if not adaptive_size and total_num_classes is None:
            raise ValueError("adaptive_size=False needs total_num_classes")
        # validates the budget against the class count up front
        class_quotas([], max_size=max_size, total_num_classes=None if adaptive_size else total_num_classes)
        super().__init__(max_size)
        self.spec = spec
        self.distill = distill or DistillConfig(iterations=200)
        self.adaptive_size = adaptive_size
        self.total_num_classes = total_num_classes
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.method = method
        self._memory: dict[int, torch.Tensor] = {}
        self._arrival: list[int] = []
        self._updates = 0
        self._dataset: AvalancheDataset | None = None
        self.condense_seconds = 0.0
        """Wall-clock seconds spent in DM (cache hits excluded)."""

    @classmethod
    def per_class(cls, memory_per_class: int, *, spec: DatasetSpec, **kwargs: Any) -> DistilledBuffer:
        """``memory_per_class`` images for every class of ``spec`` (budget ``memory_per_class x
        spec.num_classes``).

        Parameters
        ----------
        memory_per_class : int
            Images kept for each class, a positive whole number.
        spec : DatasetSpec
            The stream's dataset: its image shape and class count.
        **kwargs
            The constructor's other arguments (``distill``, ``method``, ``device``, ``cache_dir`` ...).

        Raises
        ------
        ValueError
            If ``memory_per_class`` is not a positive whole number.
        """
        if "num_classes" in kwargs:
            raise TypeError("DistilledBuffer.per_class takes the class count from spec: drop num_classes=")
        if isinstance(memory_per_class, bool) or not isinstance(memory_per_class, int) or memory_per_class <= 0:
            raise ValueError(f"memory_per_class must be a positive whole number, got {memory_per_class!r}")
        return cls(
            memory_per_class * spec.num_classes,
            spec=spec,
            adaptive_size=False,
            total_num_classes=spec.num_classes,
            **kwargs,
        )

    # ------------------------------------------------------------------------------ content
    def quotas(self, classes: Sequence[int] | None = None) -> dict[int, int]:
        """Images per class under the current budget (classes seen so far by default)."""
        return class_quotas(
            self._arrival if classes is None else classes,
            max_size=self.max_size,
            total_num_classes=None if self.adaptive_size else self.total_num_classes,
        )

    @property
    def seen_classes(self) -> list[int]:
        """Classes in memory, oldest first."""
        return list(self._arrival)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of the memory, classes in order of arrival."""
        if not self._arrival:
            shape = self.spec.image_shape
            return torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long)
        images = torch.cat([self._memory[c] for c in self._arrival])
        labels = torch.cat([torch.full((len(self._memory[c]),), c, dtype=torch.long) for c in self._arrival])
        return images, labels

    def class_counts(self) -> dict[int, int]:
        """Images held per class."""
        return {c: int(self._memory[c].shape[0]) for c in self._arrival}

    def synthetic_set(self) -> SyntheticSet:
        """The memory as a :class:`SyntheticSet` (e.g. to save it or train on it)."""
        images, labels = self.tensors()
        counts = self.class_counts()
        meta = {
            "factor": self.factor,
            **dataset_meta(self.spec),
            "method": f"{self.method}-continual",
            **({"ipc": max(counts.values())} if counts else {}),  # the largest quota; class_counts each
            "init": self.distill.init,
            "iterations": self.distill.iterations,
            "seed": self.distill.seed,
            "class_counts": {str(k): v for k, v in counts.items()},
        }
        return SyntheticSet(images.float().contiguous(), labels, meta)

    @property
    def factor(self) -> int:
        """Tiles per side of each stored image (``distill.factor``; 1 for plain DM)."""
        return self.distill.factor

    def training_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` a learner trains on: :meth:`tensors`, decoded when ``factor`` > 1."""
        images, labels = self.tensors()
        with torch.no_grad():
            return decode_formation(images, factor=self.factor), expand_labels(labels, factor=self.factor)

    @property
    def buffer(self) -> AvalancheDataset:
        """The memory as an Avalanche dataset of ``(x, y, 0)`` samples (what replay reads).

        With multi-formation (``factor`` > 1) it holds the decoded tiles, ``factor^2`` samples
        per stored image.
        """
        if self._dataset is None:
            self._dataset = to_avalanche_dataset(*self.training_tensors())
        return self._dataset

    @buffer.setter
    def buffer(self, new_buffer: AvalancheDataset) -> None:
        # ExemplarsBuffer.__init__ assigns an empty dataset; content lives in per-class tensors
        if len(new_buffer) != 0:
            raise AttributeError("DistilledBuffer's content is set by post_adapt/update_from_tensors")

    # ------------------------------------------------------------------------------ updates
    def post_adapt(self, agent_state: Any, exp: Any) -> None:
        """Condense experience ``exp``'s data into memory (Avalanche's storage-policy hook)."""
        images, labels = dataset_tensors(exp.dataset)
        self.update_from_tensors(images, labels)

    def update_from_tensors(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Condense the classes in ``(images, labels)`` and make room by shrinking older ones.

        Raises
        ------
        ValueError
            If the data is empty, labels fall outside the dataset's classes, or the budget
            cannot hold one image for every class seen.
        """
        if labels.numel() == 0:
            raise ValueError("cannot update the distilled buffer from an empty experience")
        labels = labels.to(torch.long).cpu()
        if int(labels.min()) < 0 or int(labels.max()) >= self.spec.num_classes:
            raise ValueError(
                f"labels span [{int(labels.min())}, {int(labels.max())}], outside the "
                f"{self.spec.num_classes} classes of {self.spec.name}"
            )
        present = sorted(int(c) for c in torch.unique(labels))
        arrival = self._arrival + [c for c in present if c not in self._memory]
        quotas = self.quotas(arrival)
        images = images.detach().float().cpu()
        # classes seen before: their synthetic images (decoded) stand for the real data already gone
        old = [c for c in present if c in self._memory]
        if old:
            with torch.no_grad():
                kept = [decode_formation(self._memory[c], factor=self.factor) for c in old]
            images = torch.cat([images, *kept])
            labels = torch.cat([labels, *(torch.full((len(k),), c) for c, k in zip(old, kept, strict=True))])
        ipc = max(quotas[c] for c in present)
        condensed = self._condense(ArrayDataset(images, labels, self.spec), ipc=ipc)
        for c in present:
            self._memory[c] = condensed[c][: quotas[c]].contiguous()
        self._arrival = arrival
        self._updates += 1
        self._shrink_to(quotas)

    def resize(self, strategy: Any, new_size: int) -> None:
        """Change the budget; older classes keep the first images of their importance order.

        A larger budget does not grow existing classes (their real data is gone); it only
        raises the quota of classes condensed later.
        """
        quotas = class_quotas(
            self._arrival, max_size=new_size, total_num_classes=None if self.adaptive_size else self.total_num_classes
        )
        self.max_size = new_size
        self._shrink_to(quotas)

    def _shrink_to(self, quotas: dict[int, int]) -> None:
        for c, quota in quotas.items():
            self._memory[c] = self._memory[c][:quota]
        self._dataset = None

    # ------------------------------------------------------------------------------ DM
    def _condense(self, data: ArrayDataset, *, ipc: int) -> dict[int, torch.Tensor]:
        """``ipc`` synthetic images for every class in ``data``, sorted by importance."""
        counts = data.class_counts()
        classes = [c for c in range(self.spec.num_classes) if counts[c] > 0]
        config = dataclasses.replace(self.distill, ipc=ipc, seed=offset_seed(self.distill.seed, 1009 * self._updates))
        scarce = [c for c in classes if counts[c] < ipc * self.factor**2]
        groups: list[tuple[list[int], str]] = []
        plenty = [c for c in classes if c not in scarce]
        if config.init == "noise":
            groups.append((classes, "noise"))
        else:
            if plenty:
                groups.append((plenty, config.init))
            if scarce:
                logger.warning(
                    "classes %s hold fewer real images than the quota of %d (x %d tiles): condensed from noise init",
                    scarce,
                    ipc,
                    self.factor**2,
                )
                groups.append((scarce, "noise"))
        out: dict[int, torch.Tensor] = {}
        for group, init in groups:
            subset = data.subset(torch.nonzero(torch.isin(data.labels, torch.tensor(group))).flatten())
            synthetic = self._condense_group(subset, dataclasses.replace(config, init=init))
            generator = torch.Generator().manual_seed(config.seed)
            selector = HerdingSelector(model=config.model, spec=self.spec)
            for c in group:
                members = synthetic.images[synthetic.labels == c]
                # a stored image's importance: the mean embedding of the tiles it trains as
                tiles = decode_formation(members, factor=self.factor)
                features = selector.features(tiles, generator=generator)
                features = features.reshape(len(members), self.factor**2, -1).mean(1)
                out[c] = members[herding_order(features, k=len(members))]
        return out

    def _condense_group(self, data: ArrayDataset, config: DistillConfig) -> SyntheticSet:
        path = self._cache_path(data, config)
        if path is not None and path.is_file():
            logger.info("distilled memory: reusing %s", path)
            return SyntheticSet.load(path, num_classes=self.spec.num_classes, image_shape=self.spec.image_shape)
        options = {"progress": self.progress} if accepts_option(self.method, "progress") else {}
        engine = get_condenser(self.method, config, device=self.device, **options)
        start = time.perf_counter()
        with _classes_absent_is_expected():
            synthetic = engine.condense(data).synthetic
        self.condense_seconds += time.perf_counter() - start
        if path is not None:
            synthetic.save(path)
        return synthetic

    def _cache_path(self, data: ArrayDataset, config: DistillConfig) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha1()
        digest.update(data.images.numpy().tobytes())
        digest.update(data.labels.numpy().tobytes())
        digest.update(repr(config).encode())
        digest.update(self.spec.name.encode())
        if self.method != "dm":  # DM's cache files keep their names
            digest.update(self.method.encode())
        return self.cache_dir / f"{self.method}-{digest.hexdigest()[:20]}.npz"
