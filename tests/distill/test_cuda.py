"""CUDA paths (run on a lent GPU by simulations/gpu_check.sh; skipped without one)."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import DistillConfig, EvalConfig
from fedcond.devices import resolve_device
from fedcond.distill import DistributionMatching, evaluate_synthetic

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_picks_cuda() -> None:
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_dm_on_cuda_returns_cpu_images_and_its_loss_decreases(digits, mixed_precision: bool) -> None:
    config = DistillConfig(ipc=2, iterations=40, init="noise", mixed_precision=mixed_precision)
    result = DistributionMatching(config, device="cuda").condense(digits.train)
    assert result.synthetic.images.device.type == "cpu"
    assert result.synthetic.images.shape == (20, 1, 8, 8)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])


def test_fp32_dm_on_cuda_follows_the_cpu_run(digits, monkeypatch) -> None:
    """Every random draw comes from CPU generators, so a CUDA run repeats the CPU run up to
    floating-point rounding (TF32 off for the comparison)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    config = DistillConfig(ipc=2, iterations=3, init="noise", mixed_precision=False, seed=5)
    cpu = DistributionMatching(config, device="cpu").condense(digits.train)
    gpu = DistributionMatching(config, device="cuda").condense(digits.train)
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-2)
    scale = float(cpu.synthetic.images.abs().max())
    assert float((gpu.synthetic.images - cpu.synthetic.images).abs().max()) < 1e-2 * scale
    assert torch.equal(gpu.synthetic.labels, cpu.synthetic.labels)


def test_compiled_dm_on_cuda(mnist) -> None:
    data = mnist.train.subset(torch.arange(5000))
    result = DistributionMatching(DistillConfig(ipc=1, iterations=3, compile=True), device="cuda").condense(data)
    assert torch.isfinite(result.synthetic.images).all()


def test_evaluation_on_cuda(digits) -> None:
    result = DistributionMatching(DistillConfig(ipc=2, iterations=20), device="cuda").condense(digits.train)
    accuracy = evaluate_synthetic(result.synthetic, digits.test, EvalConfig(runs=1, epochs=20), device="cuda")
    assert accuracy.mean > 0.5
