"""The pixel-optimisation loop that every matching method runs.

A matching method (distribution matching, gradient matching, a user's own) supplies a
:class:`MatchingLoss`: a differentiable measure of how far the synthetic images are from the
real data. :func:`optimise_pixels` owns everything else: the synthetic pixel tensor and its SGD
optimiser, the iterations and the time budget, the progress bar and the ``on_iteration``
callback, the divergence checks, and the checkpoints (written every ``checkpoint_every``
iterations, resumed only by a run with the same identity).

An iteration takes ``steps_per_iteration`` optimiser steps (gradient matching's outer loop;
one for DM); its reported loss is the mean of theirs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset
from fedcond.distill.checkpoint import History, identity_differences, load_checkpoint, save_checkpoint
from fedcond.distill.synthetic import SyntheticSet

__all__ = ["CondensationResult", "DivergenceError", "MatchingLoss", "PixelRun", "optimise_pixels", "run_identity"]

logger = logging.getLogger(__name__)

#: config fields a resumed run may change: its length, and switches that change speed, not results
_RESUMABLE_FIELDS = ("iterations", "checkpoint_every", "compile", "real_chunk", "time_budget")


@runtime_checkable
class MatchingLoss(Protocol):
    """What a matching method plugs into :func:`optimise_pixels`.

    Attributes
    ----------
    name : str
        The method's name in progress bars, logs and errors (``"DM"``, ``"gm"``).
    steps_per_iteration : int
        Optimiser steps per iteration; :meth:`loss` is called once before each.
    """

    name: str
    steps_per_iteration: int

    def prepare(self, data: ArrayDataset, *, synthetic_labels: torch.Tensor) -> None:
        """Fix what every iteration of a run on ``data`` reads; called once, before the first step."""
        ...

    def loss(self, images: torch.Tensor, *, iteration: int, step: int, generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of ``images`` (the synthetic pixels, with gradient) at this step.

        Every random draw comes from ``generator``, the run's, which checkpoints carry.
        """
        ...

    def remedy(self) -> str:
        """What to change when the loss diverges, for the error message."""
        ...

    def fingerprint(self) -> dict[str, object]:
        """JSON-able settings beyond the config that a resumed run must share (e.g. a DP plan)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State a checkpoint must carry (e.g. a private generator); empty when there is none."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@dataclass(frozen=True)
class CondensationResult:
    """What a condenser's ``condense`` returns.

    Attributes
    ----------
    synthetic : SyntheticSet
        The condensed set (on CPU).
    losses : list[float]
        Matching loss of every iteration run in this call (resumed iterations excluded).
    seconds : float
        Wall-clock time of the optimisation loop.
    skipped_classes : list[int]
        Classes with no real samples: no synthetic images were made for them.
    resumed_from : int
        The checkpoint's iteration this call resumed from (0 for a fresh run).
    earlier_losses : list[float]
        Losses of the iterations before ``resumed_from``, as the checkpoint recorded them
        (empty for a fresh run or a checkpoint that does not record them).
    earlier_seconds : float
        Optimisation seconds of those iterations, from the checkpoint.
    stopped_by_time_budget : bool
        The loop stopped at ``config.time_budget`` before ``config.iterations``.
    """

    synthetic: SyntheticSet
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped_classes: list[int] = field(default_factory=list)
    resumed_from: int = 0
    earlier_losses: list[float] = field(default_factory=list)
    earlier_seconds: float = 0.0
    stopped_by_time_budget: bool = False

    @property
    def all_losses(self) -> list[float]:
        """Losses of the whole run, earlier (resumed-from) segments first."""
        return [*self.earlier_losses, *self.losses]

    @property
    def iterations_run(self) -> int:
        """Iterations of the whole run, resumed-from ones included."""
        return self.resumed_from + len(self.losses)

    @property
    def iterations_per_second(self) -> float:
        """Throughput of the run (``nan`` when no iteration ran)."""
        return len(self.losses) / self.seconds if self.seconds > 0 else float("nan")


class DivergenceError(ValueError):
    """The loss or the images became NaN or infinite; nothing of that state was checkpointed."""


@dataclass(frozen=True)
class PixelRun:
    """What :func:`optimise_pixels` returns: the optimised images and the run's record.

    Attributes
    ----------
    images : torch.Tensor
        The optimised synthetic images (float32, CPU, contiguous).
    losses : list[float]
        The loss of every iteration run in this call.
    seconds : float
        Wall-clock time of this call's iterations.
    resumed_from : int
        The checkpoint's iteration this call resumed from (0 for a fresh run).
    earlier : History
        Losses and seconds of the iterations before ``resumed_from``.
    stopped_by_time_budget : bool
        The loop stopped at the time budget before the last iteration.
    """

    images: torch.Tensor
    losses: list[float]
    seconds: float
    resumed_from: int
    earlier: History
    stopped_by_time_budget: bool

    @property
    def iterations_run(self) -> int:
        """Iterations of the whole run, resumed-from ones included."""
        return self.resumed_from + len(self.losses)

    def result(self, synthetic: SyntheticSet, *, skipped_classes: list[int]) -> CondensationResult:
        """The :class:`CondensationResult` of this run, for ``synthetic`` built from :attr:`images`."""
        return CondensationResult(
            synthetic,
            self.losses,
            self.seconds,
            skipped_classes,
            self.resumed_from,
            list(self.earlier.losses),
            self.earlier.seconds,
            self.stopped_by_time_budget,
        )


def run_identity(config: DistillConfig, data: ArrayDataset, loss: MatchingLoss) -> str:
    """What a checkpoint must match to be resumed: everything that shapes the run but its length.

    The config without its iteration count (so a finished run can be extended), its time budget,
    its checkpoint interval and its speed switches (``compile``, ``real_chunk``); the dataset's
    name and class counts; and the loss's :meth:`~MatchingLoss.fingerprint`, so that, for
    example, a DP run never resumes a non-private checkpoint or another budget's.

    Raises
    ------
    ValueError
        If the loss's fingerprint uses one of the names ``config``, ``dataset``, ``class_counts``.
    """
    settings = dataclasses.asdict(config)
    for key in _RESUMABLE_FIELDS:
        settings.pop(key, None)
    identity: dict[str, object] = {
        "config": settings,
        "dataset": data.spec.name,
        "class_counts": data.class_counts().tolist(),
    }
    extra = loss.fingerprint()
    clashing = sorted(identity.keys() & extra.keys())
    if clashing:
        raise ValueError(f"the matching loss's fingerprint redefines {clashing}")
    return json.dumps({**identity, **extra}, sort_keys=True, default=str)


def optimise_pixels(
    loss: MatchingLoss,
    data: ArrayDataset,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
    generator: torch.Generator,
    device: torch.device,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_iteration: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> PixelRun:
    """Optimise ``images`` with SGD on ``loss`` for ``config.iterations`` iterations.

    Parameters
    ----------
    loss : MatchingLoss
        The method's loss; :meth:`~MatchingLoss.prepare` is called first.
    data : ArrayDataset
        The real data the loss matches (its name and class counts enter the run identity).
    images, labels : torch.Tensor
        The initial synthetic images and their labels.
    config : DistillConfig
        Reads ``iterations``, ``lr_img``, ``momentum``, ``time_budget``, ``checkpoint_every`` and
        ``ipc``; the rest enters the run identity.
    generator : torch.Generator
        The run's generator, passed to every :meth:`~MatchingLoss.loss` call and checkpointed.
    device : torch.device
        Where the pixels live.
    checkpoint_path : str | Path | None
        Where to write a checkpoint every ``config.checkpoint_every`` iterations (and at the
        end); with ``resume=True`` an existing checkpoint there is continued.
    on_iteration : callable | None
        Called as ``on_iteration(iteration, loss)`` after every iteration.
    progress : bool
        Show a tqdm bar with the loss and it/s.

    Returns
    -------
    PixelRun

    Raises
    ------
    ValueError
        For a checkpoint that cannot be resumed: unreadable or corrupted, written by another
        run, or already past ``config.iterations``.
    DivergenceError
        If a loss or the images become NaN or infinite (before the state is checkpointed).
    """
    loss.prepare(data, synthetic_labels=labels)
    syn = images.float().to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=config.lr_img, momentum=config.momentum)
    start_iteration = 0
    earlier = History()
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    identity = run_identity(config, data, loss) if ckpt is not None else ""
    if ckpt is not None and resume and ckpt.exists():
        start_iteration, earlier = _resume(ckpt, syn, optimizer, generator, loss, identity, config.iterations)
        logger.info("resumed %s from %s at iteration %d", loss.name, ckpt, start_iteration)

    def checkpoint(iteration: int, history: History) -> None:
        assert ckpt is not None
        _check_finite_images(syn, name=loss.name, iteration=iteration, remedy=loss.remedy())
        momentum = optimizer.state.get(syn, {}).get("momentum_buffer")
        save_checkpoint(
            ckpt, images=syn, momentum=momentum, generator=generator, iteration=iteration,
            run_identity=identity, history=history, loss_state=loss.state_dict(),
        )

    losses: list[float] = []
    iterator = range(start_iteration, config.iterations)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc=f"{loss.name} {data.spec.name} ipc={config.ipc}", unit="it", leave=False)
        iterator = bar
    steps = loss.steps_per_iteration
    started = time.perf_counter()
    out_of_time = False
    for iteration in iterator:
        total = 0.0
        for step in range(steps):
            value = _step(loss, syn, optimizer, generator, iteration=iteration, step=step, checkpoint_path=ckpt)
            total += value
        value = total / steps
        losses.append(value)
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4f}")
        if on_iteration is not None:
            on_iteration(iteration, value)
        done = iteration + 1
        if ckpt is not None and config.checkpoint_every > 0 and done % config.checkpoint_every == 0:
            checkpoint(done, History([*earlier.losses, *losses], earlier.seconds + time.perf_counter() - started))
        # the budget is checked after a whole iteration: the set returned is always a stepped one
        if config.time_budget is not None and done < config.iterations:
            if time.perf_counter() - started >= config.time_budget:
                out_of_time = True
                break
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    iterations_run = start_iteration + len(losses)
    if out_of_time:
        logger.info(
            "%s stopped by its %gs time budget after %d iterations", loss.name, config.time_budget, iterations_run
        )
    _check_finite_images(syn, name=loss.name, iteration=iterations_run, remedy=loss.remedy())
    if ckpt is not None and config.checkpoint_every > 0:
        checkpoint(iterations_run, History([*earlier.losses, *losses], earlier.seconds + seconds))
    return PixelRun(
        images=syn.detach().float().cpu().contiguous(),
        losses=losses,
        seconds=seconds,
        resumed_from=start_iteration,
        earlier=earlier,
        stopped_by_time_budget=out_of_time,
    )


def _step(
    loss: MatchingLoss,
    syn: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    iteration: int,
    step: int,
    checkpoint_path: Path | None,
) -> float:
    """One optimiser step on ``loss``; its value. A non-finite loss stops before the step."""
    value_tensor = loss.loss(syn, iteration=iteration, step=step, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    value_tensor.backward()
    value = float(value_tensor.detach())
    if not math.isfinite(value):
        # stop before the step spreads it into the images, and before a checkpoint overwrites
        # the last good state with it
        raise DivergenceError(
            f"{loss.name} diverged at iteration {iteration + 1}: the loss is {value}; {loss.remedy()}"
            + (f"; the checkpoint {checkpoint_path} keeps the last good state" if checkpoint_path is not None else "")
        )
    optimizer.step()
    return value


def _check_finite_images(syn: torch.Tensor, *, name: str, iteration: int, remedy: str) -> None:
    if not bool(torch.isfinite(syn).all()):
        raise DivergenceError(
            f"{name} diverged by iteration {iteration}: synthetic images hold NaN or infinite values; {remedy}"
        )


def _resume(
    path: Path,
    syn: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    loss: MatchingLoss,
    identity: str,
    iterations: int,
) -> tuple[int, History]:
    """Restore the checkpoint at ``path`` into ``syn``, the optimiser, ``generator`` and ``loss``.

    Returns the iteration to continue from and the history before it (empty for a checkpoint
    that does not record it, or records a history of another length). The images and the
    optimiser state are restored only after every check has passed; every failure is a
    ``ValueError``.
    """
    saved = load_checkpoint(path)
    if saved.run_identity != identity:
        differing = identity_differences(saved.run_identity, identity)
        raise ValueError(
            f"checkpoint {path} was written by a different run ({differing}); resuming it would mix "
            "two runs (and void a DP guarantee). Delete it or choose another --out to start afresh"
        )
    if saved.images.shape != syn.shape:
        raise ValueError(
            f"checkpoint {path} holds images of shape {tuple(saved.images.shape)}, this run makes {tuple(syn.shape)}"
        )
    momentum = saved.momentum
    if momentum.size and momentum.shape != tuple(syn.shape):
        raise ValueError(
            f"checkpoint {path} is corrupted: momentum of shape {momentum.shape} for images of shape "
            f"{tuple(syn.shape)}"
        )
    iteration = saved.iteration
    if not 0 <= iteration <= iterations:
        raise ValueError(
            f"checkpoint {path} is at iteration {iteration}, past this run's {iterations} "
            f"iterations: ask for at least {iteration} to extend it, or delete it to start afresh"
            if iteration > iterations
            else f"checkpoint {path} is corrupted: iteration {iteration}"
        )
    try:
        generator.set_state(saved.generator_state)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} is corrupted: bad generator state ({exc})") from exc
    loss.load_state_dict(saved.loss_state)
    with torch.no_grad():
        syn.copy_(saved.images.to(syn.device))
    if momentum.size:
        optimizer.state[syn]["momentum_buffer"] = torch.from_numpy(momentum).to(syn.device)
    earlier = saved.history if len(saved.history.losses) == iteration else History()
    return iteration, earlier
