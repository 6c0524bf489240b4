"""Siamese augmentation: identical parameters give identical transforms, randomness is explicit."""

from __future__ import annotations

import pytest
import torch

from fedcond.config import AugmentConfig
from fedcond.distill.augment import TRANSFORMS, SiameseAugment


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
    # the width shift used to be bounded by the height and vice versa (8x32: +-1 across, +-4 down)
    augment = SiameseAugment(AugmentConfig(strategy="crop"))
    params = augment.sample(4000, generator=torch.Generator().manual_seed(0), image_size=(8, 32))
    assert params.values["dx"].abs().max() == 4  # 32 x 0.125 along the width
    assert params.values["dy"].abs().max() == 1  # 8 x 0.125 along the height


def test_unknown_augmentation_layout_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="layout 'pixel' is not one of sample, class"):
        SiameseAugment(AugmentConfig(layout="pixel"))
