"""Coreset baselines at the same budget as a synthetic set: random and herding selection.

Both return a :class:`SyntheticSet` of *real* images (``method`` = ``random`` or ``herding``)
so that they go through exactly the same evaluation, federated and audit code as DM output.
Selectors are small objects with one method, so the continual buffers can swap them.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from fedcond.data.registry import ArrayDataset, DatasetSpec
from fedcond.distill.synthetic import SyntheticSet, dataset_meta
from fedcond.models import get_model

__all__ = [
    "CoresetSelector",
    "HerdingSelector",
    "RandomSelector",
    "get_selector",
    "select_coreset",
]


class CoresetSelector(Protocol):
    """Chooses ``k`` rows among the images of one class."""

    name: str

    def select(self, images: torch.Tensor, *, k: int, generator: torch.Generator) -> torch.Tensor:
        """Indices (into ``images``) of the ``k`` chosen samples, in selection order."""
        ...


class RandomSelector:
    """Uniformly random samples without replacement."""

    name = "random"

    def select(self, images: torch.Tensor, *, k: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``k`` images drawn uniformly without replacement (all of them if fewer)."""
        return torch.randperm(images.shape[0], generator=generator)[:k]


class HerdingSelector:
    """Greedy herding (Welling 2009): pick samples whose running mean tracks the class mean.

    Parameters
    ----------
    embedder : nn.Module | None
        Feature extractor with an ``embed`` method; ``None`` uses a seeded, randomly
        initialised ConvNet (drawn from the selection generator) for each call.
    model : str
        Network family for the random embedder.
    spec : DatasetSpec | None
        The images' dataset (the random embedder's input shape); :func:`select_coreset` uses
        the spec of the data it is given.
    """

    name = "herding"

    def __init__(
        self, embedder: nn.Module | None = None, *, model: str = "convnet", spec: DatasetSpec | None = None
    ) -> None:
        self.embedder = embedder
        self.model = model
        self.spec = spec

    @torch.inference_mode()
    def features(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Float32 embeddings of ``images`` (eval mode; a supplied embedder keeps its own mode).

        Raises
        ------
        ValueError
            Without an embedder and without ``spec`` (the random embedder's input shape).
        """
        net = self.embedder
        if net is None:
            if self.spec is None:
                raise ValueError("HerdingSelector needs a dataset spec or an embedder")
            net = get_model(self.model, self.spec, generator=generator)
        was_training = net.training
        net.eval()
        embed = getattr(net, "embed", net)
        try:
            return torch.cat([embed(images[i : i + 512]).float() for i in range(0, len(images), 512)])
        finally:
            net.train(was_training)

    def select(self, images: torch.Tensor, *, k: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``k`` images in herding order (see :func:`herding_order`)."""
        feats = self.features(images, generator=generator)
        return herding_order(feats, k=k)


def herding_order(features: torch.Tensor, *, k: int) -> torch.Tensor:
    """Greedy herding on ``features``: indices of ``k`` distinct rows."""
    n = features.shape[0]
    k = min(k, n)
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for step in range(1, k + 1):
        candidate_means = (running.unsqueeze(0) + features) / step
        dist = ((candidate_means - mu) ** 2).sum(1)
        dist[~available] = float("inf")
        best = int(dist.argmin())
        chosen.append(best)
        available[best] = False
        running = running + features[best]
    return torch.tensor(chosen, dtype=torch.long)


def get_selector(name: str) -> CoresetSelector:
    """``random`` or ``herding``."""
    if name == "random":
        return RandomSelector()
    if name == "herding":
        return HerdingSelector()
    raise ValueError(f"unknown coreset method {name!r}; choose random or herding")


def select_coreset(
    data: ArrayDataset,
    *,
    ipc: int,
    method: str | CoresetSelector = "random",
    seed: int = 0,
) -> SyntheticSet:
    """Pick ``ipc`` real images per class present in ``data``.

    Classes with fewer than ``ipc`` images contribute all they have; absent classes are
    skipped (listed in ``meta["skipped_classes"]``).

    Raises
    ------
    ValueError
        If ``ipc`` is not positive or the method is unknown.
    """
    if ipc <= 0:
        raise ValueError(f"ipc must be positive, got {ipc}")
    selector = get_selector(method) if isinstance(method, str) else method
    if isinstance(selector, HerdingSelector) and selector.embedder is None and selector.spec != data.spec:
        # the random embedder must fit this data; the caller's selector object is left as is
        selector = HerdingSelector(model=selector.model, spec=data.spec)
    generator = torch.Generator().manual_seed(seed)
    images, labels, skipped = [], [], []
    for c in range(data.spec.num_classes):
        idx = torch.nonzero(data.labels == c).flatten()
        if idx.numel() == 0:
            skipped.append(c)
            continue
        pick = idx[selector.select(data.images[idx], k=ipc, generator=generator)]
        images.append(data.images[pick])
        labels.append(data.labels[pick])
    spec = data.spec
    meta = {
        **dataset_meta(spec),
        "ipc": ipc,
        "method": selector.name,
        "init": "real",
        "seed": seed,
        "iterations": 0,
        "skipped_classes": skipped,
    }
    return SyntheticSet(torch.cat(images).contiguous(), torch.cat(labels), meta)
