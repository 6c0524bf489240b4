"""train_model: recorded weights for a fixed seed, the loss hook's contract, accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedcond.data import DatasetSplits
from fedcond.distill import SiameseAugment
from fedcond.models import get_model
from fedcond.training import accuracy, train_model
from tests.killed import Killed


def _weight_sums(model: nn.Module) -> tuple[float, float]:
    """Sum and sum of squares of every parameter, in float64."""
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    squares = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    return total, squares


@pytest.mark.parametrize(
    ("model_name", "options", "expected"),
    [
        ("mlp", {"epochs": 3, "lr": 0.05}, (0.39862511169485515, 89.76431233249127)),
        (
            "mlp",
            {"epochs": 4, "lr": 0.05, "weighted": True, "dsa": True},
            (0.9564156949909375, 89.86053705410939),
        ),
        ("convnet", {"epochs": 2, "lr": 0.01, "dsa": True}, (247.44568790696655, 349.23771588007247)),
    ],
    ids=["plain", "weighted-dsa-decay", "convnet-dsa"],
)
def test_training_without_a_hook_gives_the_recorded_weights(
    digits: DatasetSplits, model_name: str, options: dict, expected: tuple[float, float]
) -> None:
    """Same seed, same data: the weights after training match the values recorded for this recipe."""
    images, labels = digits.train.images[:96], digits.train.labels[:96]
    model = get_model(model_name, digits.spec, generator=torch.Generator().manual_seed(3))

    train_model(
        model,
        images,
        labels,
        epochs=options["epochs"],
        lr=options["lr"],
        batch_size=32,
        augment=SiameseAugment(drop_flip=True) if options.get("dsa") else None,
        sample_weights=torch.linspace(0.5, 2.0, 96) if options.get("weighted") else None,
        generator=torch.Generator().manual_seed(5),
    )

    total, squares = _weight_sums(model)
    assert total == pytest.approx(expected[0], abs=1e-6)
    assert squares == pytest.approx(expected[1], abs=1e-6)


def test_the_hook_hears_every_step_and_its_loss_is_the_one_backpropagated(digits: DatasetSplits) -> None:
    images, labels = digits.train.images[:70], digits.train.labels[:70]
    model = get_model("mlp", digits.spec, generator=torch.Generator().manual_seed(0))
    start = [p.detach().clone() for p in model.parameters()]
    heard: list[tuple[nn.Module, torch.Tensor]] = []

    def no_loss(seen: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        heard.append((seen, loss))
        return loss * 0.0  # nothing to learn: without weight decay the weights stay put

    train_model(
        model, images, labels, epochs=2, batch_size=32, weight_decay=0.0, loss_hook=no_loss,
        generator=torch.Generator().manual_seed(0),
    )

    assert len(heard) == 2 * math.ceil(70 / 32)
    assert all(seen is model and loss.ndim == 0 and loss.requires_grad for seen, loss in heard)
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))


def test_on_epoch_counts_the_epochs_and_negative_epochs_are_refused(digits: DatasetSplits) -> None:
    model = get_model("mlp", digits.spec, generator=torch.Generator().manual_seed(0))
    done: list[int] = []
    train_model(
        model, digits.train.images[:20], digits.train.labels[:20], epochs=3, on_epoch=done.append,
        generator=torch.Generator().manual_seed(0),
    )
    assert done == [1, 2, 3]
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        train_model(model, digits.train.images[:20], digits.train.labels[:20], epochs=-1,
                    generator=torch.Generator().manual_seed(0))


class _AlwaysClass(nn.Module):
    """Predicts class ``label`` for every input."""

    def __init__(self, label: int, num_classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_accuracy_is_the_share_of_correct_predictions(digits: DatasetSplits) -> None:
    share_of_threes = float((digits.test.labels == 3).float().mean())
    assert accuracy(_AlwaysClass(3, digits.spec.num_classes), digits.test) == pytest.approx(share_of_threes)



def _killed_at(epoch: int):
    def on_epoch(done: int) -> None:
        if done == epoch:
            raise Killed

    return on_epoch


@pytest.mark.parametrize("decay", [True, False], ids=["lr-decay", "constant-lr"])
def test_training_killed_between_epochs_resumes_to_the_uninterrupted_weights(
    digits: DatasetSplits, tmp_path, decay: bool
) -> None:
    images, labels = digits.train.images[:96], digits.train.labels[:96]
    weights = torch.linspace(0.5, 2.0, 96)
    recipe = {"epochs": 6, "lr": 0.05, "batch_size": 32, "sample_weights": weights, "lr_decay": decay,
              "augment": SiameseAugment(drop_flip=True)}

    def fresh() -> nn.Module:
        return get_model("convnet", digits.spec, generator=torch.Generator().manual_seed(3))

    whole = train_model(fresh(), images, labels, generator=torch.Generator().manual_seed(5), **recipe)
    path = tmp_path / "train.pt"
    with pytest.raises(Killed):  # dies after epoch 5: the checkpoint of epoch 4 survives
        train_model(fresh(), images, labels, generator=torch.Generator().manual_seed(5), checkpoint=path,
                    checkpoint_every=2, on_epoch=_killed_at(5), **recipe)
    epochs_run = []
    resumed = train_model(fresh(), images, labels, generator=torch.Generator().manual_seed(5), checkpoint=path,
                          checkpoint_every=2, on_epoch=epochs_run.append, **recipe)
    assert epochs_run == [5, 6]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_training_checkpoint_of_other_data_or_settings_is_refused(digits: DatasetSplits, tmp_path) -> None:
    images, labels = digits.train.images[:64], digits.train.labels[:64]
    path = tmp_path / "train.pt"
    model = get_model("mlp", digits.spec, generator=torch.Generator().manual_seed(3))
    train_model(model, images, labels, epochs=2, lr=0.05, generator=torch.Generator().manual_seed(5), checkpoint=path)
    with pytest.raises(ValueError, match="'lr' is 0.05 there, 0.1 here"):
        train_model(model, images, labels, epochs=2, lr=0.1, generator=torch.Generator(), checkpoint=path)
    with pytest.raises(ValueError, match="'data' is"):
        train_model(model, images + 1, labels, epochs=2, lr=0.05, generator=torch.Generator(), checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is unreadable"):
        train_model(model, images, labels, epochs=2, lr=0.05, generator=torch.Generator(), checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        train_model(model, images, labels, epochs=2, generator=torch.Generator(), checkpoint=path, checkpoint_every=0)
