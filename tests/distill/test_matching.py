"""What DM matches: the kernel MMD sees more than the mean, and the engine uses it."""

from __future__ import annotations

import json

import pytest
import torch

from fedcond.cli import main
from fedcond.config import DistillConfig
from fedcond.distill.dm import DistributionMatching
from fedcond.distill.matching import class_mmd_loss, dm_loss, gaussian_mmd2
from fedcond.distill.synthetic import SyntheticSet
from fedcond.models import get_model
from fedcond.privacy.accounting import PrivacyBudgetError
from fedcond.privacy.private_condensation import PrivateCondensation


def _sample(n: int, *, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return shift + scale * torch.randn((n, 16), generator=torch.Generator().manual_seed(seed))


def test_mmd_is_zero_for_one_sample_and_grows_with_the_shift() -> None:
    x = _sample(64)
    assert float(gaussian_mmd2(x, x.clone())) == pytest.approx(0.0, abs=1e-5)
    small = float(gaussian_mmd2(_sample(64), _sample(64, shift=0.3, seed=1)))
    large = float(gaussian_mmd2(_sample(64), _sample(64, shift=1.5, seed=1)))
    assert 0.0 < small < large


def test_mmd_sees_a_difference_the_means_do_not() -> None:
    real = _sample(400)
    wide = _sample(400, scale=3.0, seed=1)
    wide = wide - wide.mean(0) + real.mean(0)  # identical means, three times the spread
    same = _sample(400, seed=2)
    same = same - same.mean(0) + real.mean(0)
    assert float(dm_loss(real.mean(0), wide.mean(0))) == pytest.approx(0.0, abs=1e-8)
    assert float(gaussian_mmd2(real, wide)) > 10 * float(gaussian_mmd2(real, same))


def test_mmd_gradient_reaches_the_synthetic_side_only() -> None:
    real = _sample(32).requires_grad_(True)
    syn = _sample(8, shift=1.0, seed=1).requires_grad_(True)
    gaussian_mmd2(real, syn).backward()
    assert real.grad is None
    assert syn.grad is not None and float(syn.grad.abs().sum()) > 0


def test_class_mmd_loss_sums_classes_and_scales_with_weight() -> None:
    real = torch.cat([_sample(20), _sample(20, shift=2.0, seed=1)])
    groups = torch.tensor([0] * 20 + [1] * 20)
    syn = torch.cat([_sample(4, shift=0.5, seed=2), _sample(4, shift=1.0, seed=3)])
    syn_groups = torch.tensor([0] * 4 + [1] * 4)
    per_class = [float(gaussian_mmd2(real[groups == c], syn[syn_groups == c])) for c in (0, 1)]
    got = float(class_mmd_loss(real, groups, syn, syn_groups, classes=[0, 1], weight=0.5))
    assert got == pytest.approx(0.5 * 16 * sum(per_class), rel=1e-5)
    assert float(class_mmd_loss(real, groups, syn, syn_groups, classes=[0], weight=1.0)) == pytest.approx(
        16 * per_class[0], rel=1e-5
    )


@pytest.mark.parametrize(
    ("real", "syn", "match"),
    [(torch.zeros(3, 4), torch.zeros(2, 5), "equal D"), (torch.zeros(0, 4), torch.zeros(2, 4), "at least one")],
)
def test_mmd_rejects_bad_shapes(real: torch.Tensor, syn: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_mmd2(real, syn)


def _probe_mmd(synthetic: SyntheticSet, data, *, nets: int = 4) -> float:
    """Class-wise MMD^2 between the real data and ``synthetic`` under fixed, seeded random networks."""
    total = 0.0
    with torch.no_grad():
        for k in range(nets):
            net = get_model("convnet", data.spec, generator=torch.Generator().manual_seed(1000 + k))
            real, syn = net.embed(data.images), net.embed(synthetic.images)
            total += sum(
                float(gaussian_mmd2(real[data.labels == c], syn[synthetic.labels == c])) for c in range(10)
            )
    return total / nets


def test_mmd_matching_brings_the_distributions_closer_than_mean_matching(digits) -> None:
    # measured: initial 3.62, mean matching 2.78, mmd matching 2.27 (ipc 5, 60 iterations)
    start = DistributionMatching(DistillConfig(ipc=5, iterations=0, seed=0)).condense(digits.train).synthetic
    mean = DistributionMatching(DistillConfig(ipc=5, iterations=60, seed=0)).condense(digits.train)
    mmd = DistributionMatching(DistillConfig(ipc=5, iterations=60, seed=0, matching="mmd")).condense(digits.train)
    assert mmd.synthetic.meta["matching"] == "mmd"
    assert mean.synthetic.meta["matching"] == "mean"
    assert mmd.losses[-1] < mmd.losses[0]
    start_gap, mean_gap, mmd_gap = (_probe_mmd(s, digits.train) for s in (start, mean.synthetic, mmd.synthetic))
    assert mmd_gap < mean_gap < start_gap


def test_mmd_matching_is_reproducible(digits) -> None:
    config = DistillConfig(ipc=1, iterations=4, seed=5, matching="mmd")
    a = DistributionMatching(config).condense(digits.train).synthetic
    b = DistributionMatching(config).condense(digits.train).synthetic
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"matching": "median"}, "'distill.matching' must be one of mean, mmd"), ({"mmd_weight": -1.0}, "mmd_weight")],
)
def test_bad_matching_settings_are_refused(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistillConfig(**changes)


def test_dp_refuses_mmd_matching() -> None:
    config = DistillConfig(iterations=5, init="noise", matching="mmd")
    with pytest.raises(PrivacyBudgetError, match="matching='mean'"):
        PrivateCondensation({"epsilon": 1.0}, distill=config, class_counts=torch.tensor([50, 50]))


def test_distill_cli_mmd_and_its_refusal_under_dp(tmp_path, capsys) -> None:
    out = tmp_path / "mmd"
    assert main(["distill", "--ipc", "1", "--iterations", "3", "--matching", "mmd", "--eval-runs", "0",
                 "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["matching"] == "mmd"
    assert SyntheticSet.load(out / "synthetic.npz").meta["matching"] == "mmd"
    assert main(["distill", "--ipc", "1", "--iterations", "3", "--matching", "mmd", "--dp-epsilon", "2",
                 "--eval-runs", "0", "--out", str(tmp_path / "dp")]) == 2
    assert "matching='mean'" in capsys.readouterr().err


class _MeansOnly:
    """Real statistics that release class means only, like the DP ones."""

    augmentation_per_class = True
    means_only = True

    def fingerprint(self):  # noqa: ANN201
        return {"kind": "means-only"}

    def state_dict(self):  # noqa: ANN201
        return {}

    def load_state_dict(self, state):  # noqa: ANN001, ANN201
        pass

    def sample_batch(self, class_pools, *, generator):  # noqa: ANN001, ANN201
        raise AssertionError("never reached")

    def class_means(self, embeddings, groups, *, num_classes, generator):  # noqa: ANN001, ANN201
        raise AssertionError("never reached")


def test_engine_refuses_mmd_with_means_only_statistics() -> None:
    with pytest.raises(ValueError, match="_MeansOnly"):
        DistributionMatching(DistillConfig(matching="mmd"), real_statistics=_MeansOnly())
    DistributionMatching(DistillConfig(matching="mean"), real_statistics=_MeansOnly())  # mean matching is fine
