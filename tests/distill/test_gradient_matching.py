"""Gradient matching with DSA (``gm``) through the condenser registry, on the bundled digits."""

from __future__ import annotations

import pytest
import torch

from fedcond.cli import main
from fedcond.config import DistillConfig, EvalConfig
from fedcond.distill import (
    UnsupportedOptionError,
    evaluate_synthetic,
    get_condenser,
    gradient_distance,
)
from fedcond.distill.gradient_matching import default_loops

QUICK = {"batch_real": 32, "init": "noise", "lr_img": 0.1}


def test_gradient_distance_is_the_layerwise_cosine_distance() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    bias = torch.tensor([5.0, -5.0])
    assert float(gradient_distance([weight, bias], [3 * weight, -bias])) == pytest.approx(0.0, abs=1e-5)
    # row 1 opposite (distance 2), row 2 orthogonal (distance 1); biases are left out
    other = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    assert float(gradient_distance([weight, bias], [other, bias])) == pytest.approx(3.0, abs=1e-5)
    conv = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert float(gradient_distance([conv], [-conv])) == pytest.approx(8.0, abs=1e-4)  # 4 units x 2


def test_default_loops_follow_the_papers() -> None:
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(50) == (50, 10)
    assert default_loops(12) == (10, 50)


def test_gm_improves_over_its_noise_start(digits) -> None:
    evaluation = EvalConfig(runs=1, epochs=30)
    start = get_condenser("gm", DistillConfig(ipc=1, iterations=0, **QUICK)).condense(digits.train)
    result = get_condenser("gm", DistillConfig(ipc=1, iterations=10, **QUICK)).condense(digits.train)
    assert result.synthetic.meta["method"] == "gm" and result.iterations_run == 10
    assert result.synthetic.class_counts().tolist() == [1] * 10
    before = evaluate_synthetic(start.synthetic, digits.test, evaluation, seed=0).mean
    after = evaluate_synthetic(result.synthetic, digits.test, evaluation, seed=0).mean
    assert before < 0.2 and after > 0.6  # measured: 0.09 -> about 0.85 after 20 iterations
    assert result.losses[-1] < result.losses[0]


def test_gm_is_reproducible_and_follows_its_seed(digits) -> None:
    config = DistillConfig(ipc=2, iterations=2, **QUICK)
    a = get_condenser("gm", config, inner_loop=1).condense(digits.train).synthetic
    b = get_condenser("gm", config, inner_loop=1).condense(digits.train).synthetic
    c = get_condenser("gm", DistillConfig(ipc=2, iterations=2, seed=1, **QUICK), inner_loop=1).condense(digits.train)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.synthetic.images)
    assert a.meta["outer_loop"] == 1 and a.meta["inner_loop"] == 1  # ipc 2: the ipc-1 loops, inner given


def test_gm_refuses_what_it_cannot_honour_by_name() -> None:
    with pytest.raises(UnsupportedOptionError, match="'gm' cannot honour real_statistics"):
        get_condenser("gm", DistillConfig(ipc=1), real_statistics=object())
    with pytest.raises(UnsupportedOptionError, match="cannot honour factor, matching"):
        get_condenser("gm", DistillConfig(ipc=1, factor=2, matching="mmd"))


def test_gm_stops_at_its_time_budget(digits) -> None:
    config = DistillConfig(ipc=1, iterations=30, time_budget=1e-9, **QUICK)
    result = get_condenser("gm", config).condense(digits.train)
    assert result.stopped_by_time_budget and result.synthetic.meta["iterations"] == 1


def test_gm_from_the_cli_and_dp_refused(tmp_path, capsys) -> None:
    argv = ["distill", "--method", "gm", "--ipc", "1", "--batch-real", "32", "--lr-img", "0.1", "--eval-runs", "0"]
    assert main([*argv, "--iterations", "2", "--out", str(tmp_path / "gm")]) == 0
    assert main([*argv, "--dp-epsilon", "1", "--out", str(tmp_path / "dp")]) == 2
    assert "--method gm cannot honour --dp-epsilon" in capsys.readouterr().err
