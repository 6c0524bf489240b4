"""The shared pixel-optimisation loop: steps, losses, resume, time budget, divergence."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset
from fedcond.distill.dm import DistributionMatching, initial_synthetic
from fedcond.distill.optimisation import DivergenceError, MatchingLoss, optimise_pixels


class PullToTarget:
    """A toy loss: squared distance of the images to a target, plus noise from the run's generator."""

    name = "toy"

    def __init__(self, *, steps_per_iteration: int = 1, poison_at: int | None = None, noise: bool = True) -> None:
        self.steps_per_iteration = steps_per_iteration
        self.noise = noise
        self.poison_at = poison_at
        self.calls: list[tuple[int, int]] = []
        self.counter = torch.zeros(())
        self.target = torch.empty(0)

    def prepare(self, data: ArrayDataset, *, synthetic_labels: torch.Tensor) -> None:
        self.target = torch.ones((len(synthetic_labels), *data.spec.image_shape))

    def loss(self, images: torch.Tensor, *, iteration: int, step: int, generator: torch.Generator) -> torch.Tensor:
        self.calls.append((iteration, step))
        self.counter += 1
        noise = torch.rand((), generator=generator) if self.noise else 0.0
        value = ((images - self.target) ** 2).sum() * (1 + noise)
        return value * float("nan") if iteration == self.poison_at else value

    def remedy(self) -> str:
        return "lower the toy rate"

    def fingerprint(self) -> dict[str, object]:
        return {"toy": {"steps": self.steps_per_iteration}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"toy.counter": self.counter.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.counter = state["toy.counter"].clone()


def _toy_run(data: ArrayDataset, loss: PullToTarget, config: DistillConfig, **kwargs):
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.zeros((2, *data.spec.image_shape))
    labels = torch.tensor([0, 1])
    return optimise_pixels(
        loss, data, images=images, labels=labels, config=config, generator=generator, device=torch.device("cpu"),
        **kwargs,
    )


def test_the_toy_loss_is_a_matching_loss() -> None:
    assert isinstance(PullToTarget(), MatchingLoss)


def test_dm_through_the_loop_equals_a_hand_written_sgd_loop(digits) -> None:
    config = DistillConfig(ipc=2, iterations=3, seed=4)
    result = DistributionMatching(config).condense(digits.train)
    # the reference: DM's start and loss, stepped by plain SGD written out here
    reference = DistributionMatching(config).loss
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = initial_synthetic(digits.train, ipc=2, init=config.init, classes=list(range(10)),
                                       generator=generator, model=config.model)
    reference.prepare(digits.train, synthetic_labels=labels)
    syn = images.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=config.lr_img, momentum=config.momentum)
    losses = []
    for iteration in range(3):
        loss = reference.loss(syn, iteration=iteration, step=0, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert torch.equal(result.synthetic.images, syn.detach())
    assert result.losses == losses


def test_every_step_moves_the_images_and_an_iteration_reports_its_steps_mean(digits) -> None:
    config = DistillConfig(ipc=1, iterations=3, lr_img=0.01, momentum=0.0)
    per_step: list[float] = []
    loss = PullToTarget(steps_per_iteration=2, noise=False)
    original = loss.loss

    def recording(images, **kwargs):
        value = original(images, **kwargs)
        per_step.append(float(value.detach()))
        return value

    loss.loss = recording  # type: ignore[method-assign]
    run = _toy_run(digits.train, loss, config)
    assert loss.calls == [(i, s) for i in range(3) for s in range(2)]
    assert run.losses == [(per_step[2 * i] + per_step[2 * i + 1]) / 2 for i in range(3)]
    # plain SGD on ||x - 1||^2 from x = 0: six steps of x <- x - lr * 2 (x - 1)
    expected = torch.zeros_like(run.images)
    for _ in range(6):
        expected = expected - 0.01 * 2 * (expected - 1)
    assert torch.allclose(run.images, expected)


def test_resume_continues_at_the_checkpoint_with_the_loss_state(digits, tmp_path) -> None:
    config = DistillConfig(ipc=1, iterations=4, checkpoint_every=2, seed=1)
    whole_loss = PullToTarget()
    whole = _toy_run(digits.train, whole_loss, config)
    ckpt = tmp_path / "toy.npz"
    _toy_run(digits.train, PullToTarget(), DistillConfig(ipc=1, iterations=2, checkpoint_every=2, seed=1),
             checkpoint_path=ckpt)
    second = PullToTarget()
    resumed = _toy_run(digits.train, second, config, checkpoint_path=ckpt, resume=True)
    assert resumed.resumed_from == 2 and second.calls == [(2, 0), (3, 0)]
    assert float(second.counter) == 4  # the loss's own state came back from the checkpoint
    assert torch.equal(resumed.images, whole.images)
    assert [*resumed.earlier.losses, *resumed.losses] == whole.losses


def test_resume_refuses_a_checkpoint_of_another_loss(digits, tmp_path) -> None:
    ckpt = tmp_path / "toy.npz"
    config = DistillConfig(ipc=1, iterations=2, checkpoint_every=1)
    _toy_run(digits.train, PullToTarget(), config, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match=r"different run \(toy.steps: 1 -> 2\)"):
        _toy_run(digits.train, PullToTarget(steps_per_iteration=2), config, checkpoint_path=ckpt, resume=True)


def test_a_non_finite_loss_stops_before_the_step_and_names_the_remedy(digits, tmp_path) -> None:
    ckpt = tmp_path / "toy.npz"
    config = DistillConfig(ipc=1, iterations=4, checkpoint_every=1)
    with pytest.raises(DivergenceError, match="toy diverged at iteration 3.*lower the toy rate.*last good state"):
        _toy_run(digits.train, PullToTarget(poison_at=2), config, checkpoint_path=ckpt)
    import numpy as np

    with np.load(ckpt) as saved:
        assert int(saved["iteration"]) == 2 and np.isfinite(saved["images"]).all()


def test_a_spent_time_budget_stops_after_a_whole_iteration(digits) -> None:
    seen: list[int] = []
    config = DistillConfig(ipc=1, iterations=50, time_budget=1e-9)
    run = _toy_run(digits.train, PullToTarget(steps_per_iteration=2), config, on_iteration=lambda i, v: seen.append(i))
    assert run.stopped_by_time_budget and seen == [0] and run.iterations_run == 1
