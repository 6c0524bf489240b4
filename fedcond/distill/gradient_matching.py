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
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedcond.config import DistillConfig
from fedcond.data.registry import DIGIT_DATASETS, ArrayDataset, DatasetSpec
from fedcond.devices import resolve_device
from fedcond.distill.augment import SiameseAugment
from fedcond.distill.condenser import UnsupportedOptionError, check_class_sizes, register_condenser
from fedcond.distill.dm import initial_synthetic
from fedcond.distill.optimisation import CondensationResult, optimise_pixels
from fedcond.distill.synthetic import SyntheticSet, dataset_meta
from fedcond.models import get_model

__all__ = ["GradientMatching", "GradientMatchingLoss", "default_loops", "gradient_distance"]

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
        #: the matching loss the shared pixel-optimisation loop steps
        self.loss = GradientMatchingLoss(
            config, device=self.device, outer_loop=self.outer_loop, inner_loop=self.inner_loop, lr_net=lr_net
        )

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
        run = optimise_pixels(
            self.loss, data, images=images, labels=labels, config=cfg, generator=generator, device=self.device,
            on_iteration=on_iteration,
        )
        meta = {
            **dataset_meta(spec),
            "ipc": cfg.ipc,
            "method": "gm",
            "init": cfg.init,
            "given_start": start is not None,
            "outer_loop": self.outer_loop,
            "inner_loop": self.inner_loop,
            "seed": cfg.seed,
            "iterations": run.iterations_run,
            "skipped_classes": skipped,
        }
        return run.result(SyntheticSet(run.images, labels.cpu(), meta), skipped_classes=skipped)

    def _given_start(
        self, start: torch.Tensor, *, spec: DatasetSpec, classes: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(self.config.ipc)
        expected = (len(labels), *spec.image_shape)
        if tuple(start.shape) != expected or not bool(torch.isfinite(start).all()):
            raise ValueError(f"start images must be finite and of shape {expected}, got {tuple(start.shape)}")
        return start.detach().float().cpu().clone(), labels


class GradientMatchingLoss:
    """Gradient matching's loss (a :class:`~fedcond.distill.optimisation.MatchingLoss`).

    An iteration is ``outer_loop`` steps on one network: step 0 draws a fresh network; every
    later step first trains it ``inner_loop`` epochs on the (detached) synthetic set. Each step's
    loss is the sum over the classes of :func:`gradient_distance` between the network's
    cross-entropy gradients on a real batch and on the class's synthetic images, both under the
    same augmentation.

    Parameters
    ----------
    config : DistillConfig
        ``ipc``, ``batch_real``, ``model``, ``dsa``, ``augment`` and ``lr_img`` are read.
    device : torch.device
        Where the networks and the real images live.
    outer_loop, inner_loop : int
        Matches per network and network-training epochs between them.
    lr_net : float
        SGD learning rate of the network's training between matches.
    """

    name = "gm"

    def __init__(
        self, config: DistillConfig, *, device: torch.device, outer_loop: int, inner_loop: int, lr_net: float
    ) -> None:
        self.config = config
        self.device = device
        self.steps_per_iteration = outer_loop
        self.inner_loop = inner_loop
        self.lr_net = lr_net
        self._spec: DatasetSpec | None = None
        self._classes: list[int] = []
        self._pools: list[torch.Tensor] = []
        self._real_images = torch.empty(0)
        self._augment: SiameseAugment | None = None
        self._net: nn.Module | None = None
        self._net_optimizer: torch.optim.Optimizer | None = None

    def prepare(self, data: ArrayDataset, *, synthetic_labels: torch.Tensor) -> None:
        """Move the real data to the device and fix the classes, their pools and the augmentation."""
        spec = data.spec
        counts = data.class_counts()
        self._spec = spec
        self._classes = [c for c in range(spec.num_classes) if counts[c] > 0]
        self._pools = [torch.nonzero(data.labels == c).flatten() for c in range(spec.num_classes)]
        self._real_images = data.images.to(self.device)
        dsa = self.config.dsa
        self._augment = SiameseAugment(self.config.augment, drop_flip=spec.name in DIGIT_DATASETS) if dsa else None
        self._net, self._net_optimizer = None, None

    def loss(self, images: torch.Tensor, *, iteration: int, step: int, generator: torch.Generator) -> torch.Tensor:
        """The summed per-class gradient distance on this iteration's network."""
        spec = self._spec
        if spec is None:
            raise RuntimeError("GradientMatchingLoss.prepare() must run before loss()")
        if step == 0 or self._net is None:
            net = get_model(self.config.model, spec, generator=generator).to(self.device).train()
            self._net = net
            self._net_optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=self.lr_net)
        else:
            assert self._net_optimizer is not None
            self._train_network(self._net, self._net_optimizer, images.detach(), generator)
        net = self._net
        params = [p for p in net.parameters() if p.requires_grad]
        augment, ipc = self._augment, self.config.ipc
        loss = images.new_zeros(())
        for slot, c in enumerate(self._classes):
            pool = self._pools[c]
            pick = pool[torch.randperm(pool.numel(), generator=generator)[: self.config.batch_real]]
            real = self._real_images[pick.to(self._real_images.device)]
            fake = images[slot * ipc : (slot + 1) * ipc]
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
        return loss

    def remedy(self) -> str:
        """The setting to lower when gradient matching diverges."""
        return f"lower lr_img ({self.config.lr_img})"

    def fingerprint(self) -> dict[str, object]:
        """The loop lengths and the network learning rate, which shape the run beyond the config."""
        return {"gm": {"outer_loop": self.steps_per_iteration, "inner_loop": self.inner_loop, "lr_net": self.lr_net}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Nothing: an iteration's network lives within the iteration."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    def _train_network(
        self, net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, generator: torch.Generator
    ) -> None:
        """``inner_loop`` epochs of SGD on the synthetic set (batches of 256, augmented)."""
        assert self._spec is not None
        augment, image_size = self._augment, self._spec.image_size
        labels = torch.tensor(self._classes, device=images.device).repeat_interleave(self.config.ipc)
        for _ in range(self.inner_loop):
            order = torch.randperm(len(images), generator=generator).to(images.device)
            for batch in order.split(256):
                x = images[batch]
                if augment is not None:
                    x = augment.apply(x, augment.sample(len(x), generator=generator, image_size=image_size))
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), labels[batch]).backward()
                optimizer.step()
