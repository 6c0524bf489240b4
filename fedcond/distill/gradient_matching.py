"""Gradient matching with siamese augmentation (DC/DSA, Zhao, Mopuri & Bilen ICLR 2021; Zhao & Bilen ICML 2021).

The second matching family beside DM, registered as ``gm``. Each iteration draws a fresh
network and alternates, ``outer_loop`` times:

1. for every class, the gradient of the cross-entropy on a real batch and on the class's
   synthetic images (both under the *same* augmentation) with respect to the network's
   weights, and the layer-wise cosine distance between them (:func:`gradient_distance`);
   one SGD step on the synthetic pixels lowers the sum over the classes;
2. ``inner_loop`` epochs of training the network on the (detached) synthetic set, so later
   matches see a partly trained network, as the network will be when it trains on the set.

It reads the shared :class:`~fedcond.config.DistillConfig` fields it has a use for (ipc,
iterations, init, lr_img, momentum, batch_real, model, dsa, augment, seed, time_budget) and
refuses the DM-only ones (multi-formation, MMD matching, checkpoints). There is no
differentially private variant: it takes no ``real_statistics``, so asking for DP is refused by
name (:func:`~fedcond.distill.condenser.get_condenser`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedcond.config import DistillConfig
from fedcond.data.registry import DIGIT_DATASETS, ArrayDataset, DatasetSpec
from fedcond.devices import resolve_device
from fedcond.distill.augment import SiameseAugment
from fedcond.distill.condenser import UnsupportedOptionError, check_class_sizes, register_condenser
from fedcond.distill.dm import CondensationResult, DivergenceError, initial_synthetic
from fedcond.distill.synthetic import SyntheticSet, dataset_meta
from fedcond.models import get_model

__all__ = ["GradientMatching", "default_loops", "gradient_distance"]

#: (outer, inner) loop lengths of the DC/DSA papers by images per class
_PAPER_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    """The papers' ``(outer_loop, inner_loop)`` for ``ipc``; the nearest listed ipc otherwise."""
    nearest = min(_PAPER_LOOPS, key=lambda listed: (abs(listed - ipc), listed))
    return _PAPER_LOOPS[nearest]


def gradient_distance(real: Sequence[torch.Tensor], synthetic: Sequence[torch.Tensor]) -> torch.Tensor:
    """The DC papers' layer-wise distance: ``sum over layers and output units of 1 - cos``.

    Each weight tensor's gradient is viewed as one row per output unit (``out x rest``); the
    cosine distance between the real and synthetic rows is summed. Biases and normalisation
    parameters (1-D) are left out, as in the reference code.
    """
    total = synthetic[0].new_zeros(())
    for gr, gs in zip(real, synthetic, strict=True):
        if gr.dim() == 1:
            continue
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        cosine = (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)
        total = total + (1 - cosine).sum()
    return total


@register_condenser("gm")
class GradientMatching:
    """The gradient-matching condenser (registered as ``gm``).

    Parameters
    ----------
    config : DistillConfig
        ``lr_img`` is the pixel learning rate (the papers use 0.1; DM's default 1.0 is larger).
    device : torch.device | str
        Where the networks and images live.
    outer_loop, inner_loop : int | None
        Matches per network and network-training epochs between them; ``None`` takes the
        papers' values for ``config.ipc`` (:func:`default_loops`).
    lr_net : float
        SGD learning rate of the network's training between matches (0.01, the papers').

    Raises
    ------
    UnsupportedOptionError
        For DM-only settings: ``factor`` other than 1, ``matching`` other than ``mean``,
        ``checkpoint_every``.
    ValueError
        For a non-positive ipc, loop length or learning rate, or negative iterations.
    """

    config_fields: ClassVar[frozenset[str] | None] = frozenset(
        {"ipc", "iterations", "init", "lr_img", "momentum", "batch_real", "model", "dsa", "augment", "seed",
         "time_budget"}
    )

    def __init__(
        self,
        config: DistillConfig,
        *,
        device: torch.device | str = "cpu",
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        lr_net: float = 0.01,
    ) -> None:
        refused = [
            name
            for name, honoured in (
                ("factor", config.factor == 1),
                ("matching", config.matching == "mean"),
                ("checkpoint_every", config.checkpoint_every == 0),
            )
            if not honoured
        ]
        if refused:
            raise UnsupportedOptionError(f"condenser 'gm' cannot honour {', '.join(refused)} (DM-only settings)")
        if config.ipc <= 0 or config.iterations < 0:
            raise ValueError(f"gm needs ipc > 0 and iterations >= 0, got {config.ipc} and {config.iterations}")
        outer, inner = default_loops(config.ipc)
        self.outer_loop = outer if outer_loop is None else outer_loop
        self.inner_loop = inner if inner_loop is None else inner_loop
        if self.outer_loop < 1 or self.inner_loop < 0:
            raise ValueError(f"outer_loop must be >= 1 and inner_loop >= 0, got {self.outer_loop}, {self.inner_loop}")
        for name, value in (("lr_img", config.lr_img), ("lr_net", lr_net)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if config.time_budget is not None and not (math.isfinite(config.time_budget) and config.time_budget > 0):
            raise ValueError(f"time_budget must be finite and > 0 seconds (or None), got {config.time_budget}")
        self.config = config
        self.device = resolve_device(device)
        self.lr_net = lr_net

    def condense(
        self,
        data: ArrayDataset,
        *,
        start: torch.Tensor | None = None,
        on_iteration: Callable[[int, float], None] | None = None,
    ) -> CondensationResult:
        """Condense ``data`` into ``ipc`` images per class present by gradient matching.

        ``start``: ``ipc`` images of each class present, class by class, instead of
        ``config.init``. ``on_iteration(iteration, loss)`` is called after every iteration with
        the mean matching loss of its outer steps.

        Raises
        ------
        ValueError
            For an empty dataset, a bad ``start``, or (non-noise init) a class with fewer than
            ``ipc`` images (:class:`~fedcond.distill.condenser.ShortClassError`).
        DivergenceError
            If the loss becomes NaN or infinite.
        """
        cfg = self.config
        if len(data) == 0:
            raise ValueError("cannot condense an empty dataset")
        spec = data.spec
        needed = 1 if cfg.init == "noise" or start is not None else cfg.ipc
        skipped = check_class_sizes(data, needed=needed, method=f"gm with {cfg.init} init")
        classes = [c for c in range(spec.num_classes) if c not in skipped]
        generator = torch.Generator().manual_seed(cfg.seed)
        if start is None:
            images, labels = initial_synthetic(
                data, ipc=cfg.ipc, init=cfg.init, classes=classes, generator=generator, model=cfg.model
            )
        else:
            images, labels = self._given_start(start, spec=spec, classes=classes)
        syn = images.float().to(self.device).requires_grad_(True)
        optimizer = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
        augment = SiameseAugment(cfg.augment, drop_flip=spec.name in DIGIT_DATASETS) if cfg.dsa else None
        pools = [torch.nonzero(data.labels == c).flatten() for c in range(spec.num_classes)]
        real_images = data.images.to(self.device)
        losses: list[float] = []
        out_of_time = False
        began = time.perf_counter()
        for iteration in range(cfg.iterations):
            net = get_model(cfg.model, spec, generator=generator).to(self.device).train()
            value = self._iteration(net, syn, optimizer, real_images, pools, classes, augment, spec, generator)
            if not math.isfinite(value):
                raise DivergenceError(f"gm diverged at iteration {iteration + 1}: the loss is {value}; lower lr_img")
            losses.append(value)
            if on_iteration is not None:
                on_iteration(iteration, value)
            done = iteration + 1
            if cfg.time_budget is not None and done < cfg.iterations and time.perf_counter() - began >= cfg.time_budget:
                out_of_time = True
                break
        seconds = time.perf_counter() - began
        meta = {
            **dataset_meta(spec),
            "ipc": cfg.ipc,
            "method": "gm",
            "init": cfg.init,
            "given_start": start is not None,
            "outer_loop": self.outer_loop,
            "inner_loop": self.inner_loop,
            "seed": cfg.seed,
            "iterations": len(losses),
            "skipped_classes": skipped,
        }
        synthetic = SyntheticSet(syn.detach().float().cpu().contiguous(), labels.cpu(), meta)
        return CondensationResult(synthetic, losses, seconds, skipped, stopped_by_time_budget=out_of_time)

    def _iteration(
        self,
        net: nn.Module,
        syn: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        real_images: torch.Tensor,
        pools: list[torch.Tensor],
        classes: list[int],
        augment: SiameseAugment | None,
        spec: DatasetSpec,
        generator: torch.Generator,
    ) -> float:
        """One network's outer loop: match, step the pixels, train the network; the mean loss."""
        cfg = self.config
        params = [p for p in net.parameters() if p.requires_grad]
        net_optimizer = torch.optim.SGD(params, lr=self.lr_net)
        ipc = cfg.ipc
        total = 0.0
        for outer in range(self.outer_loop):
            loss = syn.new_zeros(())
            for slot, c in enumerate(classes):
                pool = pools[c]
                pick = pool[torch.randperm(pool.numel(), generator=generator)[: cfg.batch_real]]
                real = real_images[pick.to(real_images.device)]
                fake = syn[slot * ipc : (slot + 1) * ipc]
                if augment is not None:  # one parameter set shared by the class's real and synthetic images
                    drawn = augment.sample(1, generator=generator, image_size=spec.image_size)
                    real = augment.apply(real, drawn, torch.zeros(len(real), dtype=torch.long))
                    fake = augment.apply(fake, drawn, torch.zeros(len(fake), dtype=torch.long))
                target_real = torch.full((len(real),), c, device=real.device)
                target_fake = torch.full((len(fake),), c, device=fake.device)
                real_grads = torch.autograd.grad(F.cross_entropy(net(real), target_real), params)
                real_grads = [g.detach() for g in real_grads]
                syn_grads = torch.autograd.grad(F.cross_entropy(net(fake), target_fake), params, create_graph=True)
                loss = loss + gradient_distance(real_grads, syn_grads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            if outer < self.outer_loop - 1:
                self._train_network(net, net_optimizer, syn.detach(), classes, augment, spec, generator)
        return total / self.outer_loop

    def _train_network(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        classes: list[int],
        augment: SiameseAugment | None,
        spec: DatasetSpec,
        generator: torch.Generator,
    ) -> None:
        """``inner_loop`` epochs of SGD on the synthetic set (batches of 256, augmented)."""
        labels = torch.tensor(classes, device=images.device).repeat_interleave(self.config.ipc)
        for _ in range(self.inner_loop):
            order = torch.randperm(len(images), generator=generator).to(images.device)
            for batch in order.split(256):
                x = images[batch]
                if augment is not None:
                    x = augment.apply(x, augment.sample(len(x), generator=generator, image_size=spec.image_size))
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), labels[batch]).backward()
                optimizer.step()

    def _given_start(
        self, start: torch.Tensor, *, spec: DatasetSpec, classes: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(self.config.ipc)
        expected = (len(labels), *spec.image_shape)
        if tuple(start.shape) != expected or not bool(torch.isfinite(start).all()):
            raise ValueError(f"start images must be finite and of shape {expected}, got {tuple(start.shape)}")
        return start.detach().float().cpu().clone(), labels
