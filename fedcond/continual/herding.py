"""Herding replay built from Avalanche's :class:`~avalanche.training.storage_policy.ParametricBuffer`.

Avalanche's own :class:`~avalanche.training.storage_policy.HerdingSelectionStrategy` does not
fit here, for two reasons: it orders *every* sample of a group (``n`` greedy steps over an
``n x d`` matrix, i.e. minutes per 6000-image MNIST class on a CPU) although only the first
``max_size`` are ever kept, and its ``FeatureExtractorBackbone`` returns unflattened
convolution maps, on which its ``sum(dim=1)`` distance is not a per-sample distance.
:class:`EmbeddingHerdingSelection` keeps Avalanche's selection-strategy interface and
iCaRL's choice of features (the learner's current network, ``model.embed``) but runs
:func:`fedcond.distill.coreset.herding_order` only for the first ``max_selected`` steps.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.training.storage_policy import ExemplarsSelectionStrategy, ParametricBuffer
from torch.utils.data import DataLoader

from fedcond.continual.buffers import ArrivalOrder
from fedcond.continual.memory import RealImageMemory
from fedcond.distill.coreset import herding_order

__all__ = ["EmbeddingHerdingSelection", "HerdingBuffer"]


class EmbeddingHerdingSelection(ExemplarsSelectionStrategy):
    """Herding order on the learner's embeddings, truncated after ``max_selected`` picks.

    Parameters
    ----------
    max_selected : int
        Greedy herding steps; the remaining indices follow in their original order (a buffer
        whose groups never exceed ``max_selected`` never keeps them).
    batch_size : int
        Images per forward pass when embedding.
    """

    def __init__(self, *, max_selected: int, batch_size: int = 512) -> None:
        if max_selected <= 0:
            raise ValueError(f"max_selected must be positive, got {max_selected}")
        self.max_selected = max_selected
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, model: torch.nn.Module, data: AvalancheDataset, device: torch.device | str) -> torch.Tensor:
        """Flattened embeddings (``model.embed`` when present, else the logits) of ``data``."""
        was_training = model.training
        model.eval()
        embed = getattr(model, "embed", model)
        feats = [
            embed(batch[0].to(device)).flatten(1).float().cpu()
            for batch in DataLoader(data, batch_size=self.batch_size, shuffle=False)
        ]
        model.train(was_training)
        return torch.cat(feats)

    def make_sorted_indices(self, strategy: Any, data: AvalancheDataset) -> list[int]:
        """Avalanche's hook: the herding order of ``data`` in ``strategy.model``'s feature space."""
        features = self.features(strategy.model, data, strategy.device)
        first = herding_order(features, k=min(self.max_selected, len(data))).tolist()
        chosen = set(first)
        return first + [i for i in range(len(data)) if i not in chosen]


class HerdingBuffer(RealImageMemory, ParametricBuffer):
    """Class-grouped herding buffer with the same budget rules as ``ClassBalancedBuffer``.

    Parameters
    ----------
    max_size : int
        Budget in images.
    adaptive_size : bool
        ``True``: ``max_size`` shared by the classes seen so far; ``False``: every class gets
        ``max_size // total_num_classes`` (needs ``total_num_classes``).
    total_num_classes : int | None
        Number of classes of the stream, for the fixed per-class mode.
    """

    def __init__(self, max_size: int, *, adaptive_size: bool = True, total_num_classes: int | None = None) -> None:
        if max_size <= 0:
            raise ValueError(f"the memory budget must be positive, got {max_size} images")
        if not adaptive_size:
            if total_num_classes is None or total_num_classes <= 0:
                raise ValueError("adaptive_size=False needs a positive total_num_classes")
            if max_size < total_num_classes:
                raise ValueError(
                    f"a budget of {max_size} images is smaller than the {total_num_classes} classes: "
                    "every class needs at least one image"
                )
        super().__init__(
            max_size, groupby="class", selection_strategy=EmbeddingHerdingSelection(max_selected=max_size)
        )
        # BalancedExemplarsBuffer.get_group_lengths reads these two (ParametricBuffer is adaptive only)
        self.adaptive_size = adaptive_size
        self.total_num_groups = None if adaptive_size else total_num_classes
        self.seen_groups = ArrivalOrder()  # an adaptive budget's extra images go to the oldest classes
