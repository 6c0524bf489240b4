"""Siamese augmentation: identical parameters give identical transforms, randomness is explicit."""

from __future__ import annotations

import math

import pytest
import torch

from fedcond.config import AugmentConfig
from fedcond.distill.augment import TRANSFORMS, AugmentParams, SiameseAugment


@pytest.mark.parametrize("name", TRANSFORMS)
def test_same_slot_gets_the_same_transform(name: str, digits) -> None:
    augment = SiameseAugment(AugmentConfig(strategy=name))
    real = digits.train.images[:6]
    syn = real.clone().requires_grad_(True)
    params = augment.sample(3, generator=torch.Generator().manual_seed(1), image_size=(8, 8))
    slots = torch.tensor([0, 1, 2, 0, 1, 2])
    out_real = augment.apply(real, params, slots)
    out_syn = augment.apply(syn, params, slots)
    assert params.transform == name
    assert torch.allclose(out_real, out_syn)
    # one image in every position: positions that share a slot come out identical
    same = augment.apply(real[:1].repeat(6, 1, 1, 1), params, slots)
    for a, b in ((0, 3), (1, 4), (2, 5)):
        torch.testing.assert_close(same[a], same[b])
    out_syn.sum().backward()  # differentiable w.r.t. the synthetic images
    assert syn.grad is not None and torch.isfinite(syn.grad).all()


@pytest.mark.parametrize("name", [t for t in TRANSFORMS if t != "flip"])
def test_transforms_change_images_and_slots_differ(name: str, digits) -> None:
    augment = SiameseAugment(AugmentConfig(strategy=name))
    x = digits.train.images[:1].repeat(8, 1, 1, 1)
    params = augment.sample(8, generator=torch.Generator().manual_seed(0), image_size=(8, 8))
    out = augment.apply(x, params)
    assert not torch.allclose(out, x)
    # different slots draw different parameters, so identical inputs come out different
    assert len({tuple(out[i].flatten().tolist()) for i in range(8)}) > 1


def test_same_generator_state_reproduces_parameters() -> None:
    augment = SiameseAugment()
    a = augment.sample(5, generator=torch.Generator().manual_seed(7), image_size=(28, 28))
    b = augment.sample(5, generator=torch.Generator().manual_seed(7), image_size=(28, 28))
    assert a.transform == b.transform
    assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_drop_flip_and_unknown_names() -> None:
    assert "flip" not in SiameseAugment(drop_flip=True).transforms
    with pytest.raises(ValueError, match="unknown augmentation"):
        SiameseAugment(AugmentConfig(strategy="color_warp"))
    with pytest.raises(ValueError, match="leaves no transform"):
        SiameseAugment(AugmentConfig(strategy="flip"), drop_flip=True)


def test_crop_is_an_integer_translation() -> None:
    augment = SiameseAugment(AugmentConfig(strategy="crop"))
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    params = augment.sample(1, generator=torch.Generator().manual_seed(3), image_size=(8, 8))
    params.values["dx"][:] = 1.0
    params.values["dy"][:] = 0.0
    out = augment.apply(x, params)
    assert torch.allclose(out.sum(), torch.tensor(1.0), atol=1e-5)
    assert out[0, 0].flatten().argmax().item() in (4 * 8 + 3, 4 * 8 + 5)


def test_crop_shifts_follow_each_sides_own_length_on_non_square_images() -> None:
    # the width shift is bounded by the width, the height shift by the height (8x32: +-4 across, +-1 down)
    augment = SiameseAugment(AugmentConfig(strategy="crop"))
    params = augment.sample(4000, generator=torch.Generator().manual_seed(0), image_size=(8, 32))
    assert params.values["dx"].abs().max() == 4  # 32 x 0.125 along the width
    assert params.values["dy"].abs().max() == 1  # 8 x 0.125 along the height


def test_unknown_augmentation_layout_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'distill.augment.layout' must be one of sample, class; got 'pixel'"):
        SiameseAugment(AugmentConfig(layout="pixel"))


# --------------------------------------------------------------------- per-transform behaviour
def _params(augment: SiameseAugment, name: str, n: int, **values: list[float]) -> AugmentParams:
    """Sampled parameters of transform ``name`` for ``n`` slots, with ``values`` overwritten."""
    params = augment.sample(n, generator=torch.Generator().manual_seed(0), image_size=(8, 8))
    assert params.transform == name
    for key, row in values.items():
        params.values[key][:] = torch.tensor(row, dtype=params.values[key].dtype)
    return params


def test_sampled_parameters_span_the_configured_ranges() -> None:
    # the DSA paper's magnitudes: brightness +-0.5, saturation [0, 2], contrast [0.5, 1.5],
    # scale [1/1.2, 1.2] per axis independently, rotation +-15 degrees
    def sample(name: str) -> dict[str, torch.Tensor]:
        augment = SiameseAugment(AugmentConfig(strategy=name))
        return augment.sample(4000, generator=torch.Generator().manual_seed(0), image_size=(8, 8)).values

    ranges = {
        ("color", "brightness"): (-0.5, 0.5),
        ("color", "saturation"): (0.0, 2.0),
        ("color", "contrast"): (0.5, 1.5),
        ("scale", "sx"): (1 / 1.2, 1.2),
        ("scale", "sy"): (1 / 1.2, 1.2),
        ("rotate", "theta"): (-math.radians(15), math.radians(15)),
        ("cutout", "cx"): (0.0, 1.0),
        ("cutout", "cy"): (0.0, 1.0),
    }
    for (name, key), (low, high) in ranges.items():
        values = sample(name)[key]
        margin = 0.02 * (high - low)
        assert low <= float(values.min()) < low + margin, (name, key)
        assert high - margin < float(values.max()) <= high, (name, key)
    scale = sample("scale")
    assert not torch.equal(scale["sx"], scale["sy"])  # the two axes are drawn independently
    flips = sample("flip")["flip"]
    assert set(flips.unique().tolist()) == {0.0, 1.0}
    assert 0.45 < float(flips.mean()) < 0.55


def test_color_shifts_brightness_then_scales_saturation_and_contrast_about_the_means() -> None:
    augment = SiameseAugment(AugmentConfig(strategy="color"))
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    params = _params(augment, "color", 2, brightness=[0.3, -0.2], saturation=[0.5, 1.7], contrast=[1.4, 0.6])
    out = augment.apply(x, params)
    b = torch.tensor([0.3, -0.2]).view(2, 1, 1, 1)
    s = torch.tensor([0.5, 1.7]).view(2, 1, 1, 1)
    c = torch.tensor([1.4, 0.6]).view(2, 1, 1, 1)
    y = x + b
    grey = y.mean(dim=1, keepdim=True)
    y = (y - grey) * s + grey
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (y - mean) * c + mean)
    # one-channel images: saturation has nothing to act on, the image mean moves by the brightness
    digit = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    shifted = augment.apply(digit, _params(augment, "color", 1, brightness=[0.25], saturation=[2.0], contrast=[1.0]))
    torch.testing.assert_close(shifted, digit + 0.25)


def test_flip_mirrors_the_width_of_flagged_slots_only(digits) -> None:
    augment = SiameseAugment(AugmentConfig(strategy="flip"))
    x = digits.train.images[:4]
    out = augment.apply(x, _params(augment, "flip", 4, flip=[1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[2], x[2].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(out[3], x[3])


def test_cutout_zeroes_one_box_of_the_configured_size_at_the_sampled_centre() -> None:
    augment = SiameseAugment(AugmentConfig(strategy="cutout"))  # cutout 0.5: a 4x4 box on 8x8
    ones = torch.ones(2, 1, 8, 8)
    # centre (0.5, 0.5): rows and columns 2..5; centre cx=0.2 (columns), cy=0.8 (rows): the box
    # starts at column floor(0.2 * 9) - 2 = -1 and row floor(0.8 * 9) - 2 = 5, clipped by the border
    out = augment.apply(ones, _params(augment, "cutout", 2, cx=[0.5, 0.2], cy=[0.5, 0.8]))
    expected = torch.ones(2, 1, 8, 8)
    expected[0, 0, 2:6, 2:6] = 0.0
    expected[1, 0, 5:8, 0:3] = 0.0
    torch.testing.assert_close(out, expected)


def test_scale_stretches_each_axis_by_its_own_factor() -> None:
    augment = SiameseAugment(AugmentConfig(strategy="scale"))
    ramp = torch.linspace(-1.0, 1.0, 8)  # the sampling grid's own coordinates (align_corners)
    across = ramp.view(1, 1, 1, 8).expand(1, 1, 8, 8)  # varies along the width only
    down = ramp.view(1, 1, 8, 1).expand(1, 1, 8, 8)  # varies along the height only
    params = _params(augment, "scale", 1, sx=[0.5], sy=[1.0])
    # output(x, y) reads input(sx * x, sy * y): a linear ramp across is halved, one down is kept
    torch.testing.assert_close(augment.apply(across, params), 0.5 * across)
    torch.testing.assert_close(augment.apply(down, params), down)
    params = _params(augment, "scale", 1, sx=[1.0], sy=[0.5])
    torch.testing.assert_close(augment.apply(across, params), across)
    torch.testing.assert_close(augment.apply(down, params), 0.5 * down)


def test_rotate_turns_the_image_about_its_centre() -> None:
    augment = SiameseAugment(AugmentConfig(strategy="rotate"))
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 8] = 1.0  # on the right edge, level with the centre
    out = augment.apply(x, _params(augment, "rotate", 1, theta=[math.pi / 2]))
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0].flatten().argmax().item() in (0 * 9 + 4, 8 * 9 + 4)  # a quarter turn: top or bottom
    assert torch.allclose(augment.apply(x, _params(augment, "rotate", 1, theta=[0.0])), x)


def test_one_transform_family_per_call_drawn_among_all_of_the_strategy() -> None:
    generator = torch.Generator().manual_seed(0)
    drawn = {SiameseAugment().sample(2, generator=generator, image_size=(8, 8)).transform for _ in range(200)}
    assert drawn == set(TRANSFORMS)
    digits_augment = SiameseAugment(drop_flip=True)
    drawn = {digits_augment.sample(2, generator=generator, image_size=(8, 8)).transform for _ in range(200)}
    assert drawn == set(TRANSFORMS) - {"flip"}


def test_digit_datasets_are_never_flipped_others_are() -> None:
    from fedcond.data import get_spec
    from fedcond.distill.evaluate import augment_for

    for name in ("digits", "mnist", "svhn"):
        assert "flip" not in augment_for(get_spec(name)).transforms, name
    for name in ("cifar10", "fashion-mnist"):
        assert "flip" in augment_for(get_spec(name)).transforms, name


@pytest.mark.parametrize("layout", ["class", "sample"])
def test_dm_gives_real_and_synthetic_images_of_a_class_the_same_parameters(layout: str, digits, monkeypatch) -> None:
    from fedcond.config import DistillConfig
    from fedcond.distill.dm import DistributionMatching

    calls: list[tuple[AugmentParams, torch.Tensor, torch.Tensor]] = []
    original = SiameseAugment.apply

    def spy(
        self: SiameseAugment, images: torch.Tensor, params: AugmentParams, slots: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert slots is not None  # DM always says which parameter set each image uses
        calls.append((params, images.detach().clone(), slots.clone()))
        return original(self, images, params, slots)

    monkeypatch.setattr(SiameseAugment, "apply", spy)
    config = DistillConfig(ipc=2, iterations=12, batch_real=8, seed=0, augment=AugmentConfig(layout=layout))
    synthetic = DistributionMatching(config).condense(digits.train).synthetic
    assert len(calls) == 2 * 12  # per iteration: the real batch, then the synthetic images
    label_of = {row.numpy().tobytes(): int(y) for row, y in zip(digits.train.images, digits.train.labels, strict=True)}
    for (params, real, real_slots), (syn_params, syn, syn_slots) in zip(calls[::2], calls[1::2], strict=True):
        assert syn_params is params  # one draw per iteration, shared by both sides
        assert syn.shape == (20, 1, 8, 8)
        assert params.transform != "flip"  # digits are never mirrored
        per_class = params.num_slots // 10
        assert per_class == (1 if layout == "class" else 8)  # sample: one set per real image of a batch
        real_labels = torch.tensor([label_of[row.numpy().tobytes()] for row in real])
        assert torch.equal(real_slots // per_class, real_labels)
        assert torch.equal(syn_slots // per_class, synthetic.labels)
        if layout == "sample":  # distinct samples of a class get distinct parameter sets
            for c in range(10):
                assert real_slots[real_labels == c].unique().numel() == int((real_labels == c).sum())
    assert len({params.transform for params, _, _ in calls}) > 2
