"""Multi-formation: tiles are decoded in order, encode inverts decode, DM and evaluation use it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedcond.config import DistillConfig, EvalConfig
from fedcond.distill.dm import DistributionMatching
from fedcond.distill.evaluate import evaluate_synthetic
from fedcond.distill.formation import check_factor, decode_formation, encode_formation, expand_labels
from fedcond.distill.synthetic import SyntheticSet, SyntheticSetError


def _tile_constant(n: int, *, factor: int, size: int = 8, channels: int = 1) -> torch.Tensor:
    """Stored images whose tile k of image i is the constant ``i * factor^2 + k``."""
    values = torch.arange(n * factor * factor, dtype=torch.float32).reshape(n, 1, factor, factor)
    tiles = values.repeat_interleave(size // factor, dim=2).repeat_interleave(size // factor, dim=3)
    return tiles.expand(n, channels, size, size).contiguous()


def test_decode_reads_tiles_row_by_row_into_consecutive_images() -> None:
    stored = _tile_constant(3, factor=2)
    decoded = decode_formation(stored, factor=2)
    assert decoded.shape == (12, 1, 8, 8)
    # a constant tile upsamples to a constant image, in the order image-major, then row, column
    for j in range(12):
        assert torch.allclose(decoded[j], torch.full((1, 8, 8), float(j)))
    assert expand_labels(torch.tensor([4, 7, 9]), factor=2).tolist() == [4] * 4 + [7] * 4 + [9] * 4


def test_encode_inverts_decode_and_decode_is_the_downsampled_image() -> None:
    stored = _tile_constant(2, factor=2, channels=3)
    assert torch.allclose(encode_formation(decode_formation(stored, factor=2), factor=2), stored)
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    round_trip = decode_formation(encode_formation(images, factor=2), factor=2)
    small = F.interpolate(images, size=(14, 14), mode="bilinear", align_corners=False, antialias=True)
    expected = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.allclose(round_trip, expected, atol=1e-5)
    assert not torch.allclose(round_trip, images, atol=0.1)  # half the resolution is lost, as intended
    with pytest.raises(ValueError, match="cannot be grouped 4"):
        encode_formation(images[:6], factor=2)


def test_factor_one_is_the_identity_and_gradients_reach_the_stored_pixels() -> None:
    images = torch.randn(5, 1, 8, 8)
    assert decode_formation(images, factor=1) is images
    stored = torch.randn(2, 1, 8, 8, requires_grad=True)
    decode_formation(stored, factor=2).sum().backward()
    assert stored.grad is not None and bool((stored.grad != 0).all())


@pytest.mark.parametrize(
    ("factor", "size", "message"),
    [(0, (8, 8), "positive integer"), (True, (8, 8), "positive integer"), (3, (8, 8), "does not divide"),
     (8, (8, 8), "1x1 tiles")],
)
def test_bad_factors_are_refused(factor: object, size: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_factor(factor, image_size=size)  # type: ignore[arg-type]


def test_synthetic_set_decodes_checks_and_keeps_its_factor(tmp_path) -> None:
    stored = SyntheticSet(_tile_constant(2, factor=2), torch.tensor([0, 1]), {"num_classes": 2, "factor": 2})
    decoded = stored.decoded()
    assert len(decoded) == 8 and decoded.labels.tolist() == [0] * 4 + [1] * 4
    assert decoded.factor == 1 and decoded.meta["stored_images"] == 2
    assert decoded.decoded() is decoded
    loaded = SyntheticSet.load(stored.save(tmp_path / "f2.npz"))
    assert loaded.factor == 2 and torch.equal(loaded.decoded().images, decoded.images)
    with pytest.raises(SyntheticSetError, match="factor 3 does not divide"):
        SyntheticSet(stored.images, stored.labels, {"factor": 3})
    with pytest.raises(SyntheticSetError, match="positive integer"):
        SyntheticSet(stored.images, stored.labels, {"factor": "2"})


def test_dm_with_factor_two_stores_ipc_images_and_matches_their_tiles(digits) -> None:
    config = DistillConfig(ipc=2, iterations=30, factor=2, seed=0)
    result = DistributionMatching(config).condense(digits.train)
    synthetic = result.synthetic
    assert synthetic.images.shape == (20, 1, 8, 8) and synthetic.factor == 2
    assert synthetic.class_counts().tolist() == [2] * 10
    assert synthetic.decoded().class_counts().tolist() == [8] * 10
    assert result.losses[-1] < result.losses[0]
    # real init: every tile starts as a downsampled real image of its class
    start = DistributionMatching(DistillConfig(ipc=2, iterations=0, factor=2, seed=0)).condense(digits.train)
    assert not torch.equal(start.synthetic.images, synthetic.images)
    again = DistributionMatching(config).condense(digits.train)
    assert torch.equal(again.synthetic.images, synthetic.images)
    with pytest.raises(ValueError, match="does not divide the image size 8x8"):
        DistributionMatching(DistillConfig(ipc=1, iterations=1, factor=3)).condense(digits.train)
    with pytest.raises(ValueError, match="'distill.factor' must be >= 1"):
        DistillConfig(factor=0)
    with pytest.raises(ValueError, match=r"ipc x factor\^2 = 40 x 4 = 160"):
        DistributionMatching(DistillConfig(ipc=40, iterations=1, factor=2)).condense(digits.train)


def test_evaluation_trains_on_the_decoded_tiles(digits) -> None:
    engine = DistributionMatching(DistillConfig(ipc=1, iterations=5, factor=2, seed=1))
    synthetic = engine.condense(digits.train).synthetic
    config = EvalConfig(runs=1, epochs=3)
    as_set = evaluate_synthetic(synthetic, digits.test, config, seed=0)
    decoded = synthetic.decoded()
    as_pair = evaluate_synthetic((decoded.images, decoded.labels), digits.test, config, seed=0)
    assert as_set.accuracies == as_pair.accuracies
    raw = evaluate_synthetic((synthetic.images, synthetic.labels), digits.test, config, seed=0)
    assert raw.accuracies != as_set.accuracies


@pytest.mark.parametrize(
    ("factor", "size", "message"),
    [(4, (8, 6), "factor 4 does not divide the image size 8x6"), (4, (6, 8), "does not divide the image size 6x8"),
     (4, (16, 4), "would store 4x1 tiles"), (4, (4, 16), "would store 1x4 tiles")],
)
def test_both_sides_of_a_non_square_image_are_checked(factor: int, size: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_factor(factor, image_size=size)


def test_non_square_images_decode_tile_by_tile_and_encode_back() -> None:
    check_factor(2, image_size=(4, 8))
    stored = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).repeat_interleave(2, dim=0).repeat_interleave(4, dim=1)
    stored = stored.view(1, 1, 4, 8)  # four constant 2x4 tiles
    decoded = decode_formation(stored, factor=2)
    assert decoded.shape == (4, 1, 4, 8)
    for j in range(4):
        assert torch.allclose(decoded[j], torch.full((1, 4, 8), float(j)))
    assert torch.allclose(encode_formation(decoded, factor=2), stored)
