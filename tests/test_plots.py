"""What the synthetic-image grid shows."""

from __future__ import annotations

import pytest
import torch

from fedcond.data import load_dataset
from fedcond.plots import display_pixels, save_image_grid


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _stretch(pixels: torch.Tensor) -> torch.Tensor:
    flat = pixels.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(pixels)


def test_images_in_range_are_shown_as_their_pixels(digits) -> None:
    images = digits.train.images[:30]
    shown, stretched = display_pixels(images, digits.spec)
    assert not stretched
    assert torch.allclose(shown, digits.spec.denormalise(images), atol=1e-6)


def test_rescaled_images_are_stretched_not_clipped(digits) -> None:
    # mmd-matched DM images grow to ~5x the pixel scale; clipping shows them as black-and-white blocks
    images = digits.train.images[:30]
    shown, stretched = display_pixels(5 * images, digits.spec)
    assert stretched
    reference, _ = display_pixels(images, digits.spec)
    assert torch.allclose(shown, _stretch(reference), atol=1e-5)  # min-max undoes the rescaling
    clipped = digits.spec.denormalise(5 * images)
    grey = lambda x: float(((x > 0.05) & (x < 0.95)).float().mean())  # noqa: E731
    assert grey(shown) > 2 * grey(clipped)


def test_grid_of_stretched_images_says_so(digits, tmp_path, monkeypatch) -> None:
    import matplotlib.figure
    import matplotlib.image

    titles: list[str] = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda fig, text, **kw: titles.append(text) or original(fig, text, **kw)
    )
    images, labels = digits.train.images[:40], digits.train.labels[:40]
    path = save_image_grid(5 * images, labels, digits.spec, tmp_path / "grid.png", title="dm")
    save_image_grid(images, labels, digits.spec, tmp_path / "plain.png", title="dm")
    assert matplotlib.image.imread(path).shape[0] > 100
    assert titles[0].startswith("dm\n") and "contrast-stretched" in titles[0]
    assert titles[1] == "dm"


def test_grid_rows_are_labelled_with_class_names_or_numbers(tmp_path, digits) -> None:
    from dataclasses import replace

    from fedcond.plots import figure_classes

    images, labels = digits.train.images[:40], digits.train.labels[:40]
    shown = sorted({int(k) for k in labels})
    save_image_grid(images, labels, digits.spec, tmp_path / "digits.png")
    assert figure_classes(tmp_path / "digits.png") == [str(k) for k in shown]
    names = tuple(f"class-{chr(ord('a') + k)}" for k in range(10))
    save_image_grid(images, labels, replace(digits.spec, class_names=names), tmp_path / "named.png")
    assert figure_classes(tmp_path / "named.png") == [names[k] for k in shown]
    unnamed = replace(digits.spec, class_names=())
    save_image_grid(images[labels == 7], labels[labels == 7], unnamed, tmp_path / "seven.png")
    assert figure_classes(tmp_path / "seven.png") == ["7"]


def test_accuracy_matrix_columns_name_their_classes(tmp_path) -> None:
    from fedcond.continual.figures import save_accuracy_matrix
    from fedcond.data import get_spec
    from fedcond.plots import figure_classes

    names = get_spec("fashion-mnist").class_names
    matrix = [[0.9, 0.0], [0.5, 0.8]]
    save_accuracy_matrix(matrix, tmp_path / "named.png", experience_classes=[[0, 9], [3, 1]], class_names=names)
    assert figure_classes(tmp_path / "named.png") == [["T-shirt/top", "Ankle boot"], ["Dress", "Trouser"]]
    save_accuracy_matrix(matrix, tmp_path / "numbers.png", experience_classes=[[0, 9], [3, 1]])
    assert figure_classes(tmp_path / "numbers.png") == []  # label numbers only: nothing to list


@pytest.mark.parametrize(
    "title",
    [
        "dm digits ipc=1 (real init, 1000 it)",
        "gradient-matching fashion-mnist ipc=1 factor 2 (noise init, 100000 it)",
        "dm cifar10 ipc=1 factor 2\n(outside the pixel range: each image contrast-stretched)",
    ],
)
def test_the_title_of_a_one_column_grid_lies_within_the_saved_figure(digits, tmp_path, monkeypatch, title) -> None:
    import matplotlib.pyplot as plt

    saved, close = [], plt.close
    monkeypatch.setattr(plt, "close", saved.append)  # keep the figure to measure it
    images, labels = digits.train.images[:40], digits.train.labels[:40]
    one_each = torch.stack([torch.nonzero(labels == c)[0, 0] for c in torch.unique(labels)])
    save_image_grid(images[one_each], labels[one_each], digits.spec, tmp_path / "ipc1.png", title=title)
    fig = saved[0]
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0 and box.y1 <= fig.bbox.height
    words = " ".join(fig._suptitle.get_text().split())
    assert words == " ".join(title.split())  # wrapped at spaces, nothing dropped
    top_row = fig.axes[0].get_tightbbox(fig.canvas.get_renderer())
    assert box.y0 >= top_row.y1  # above the first row and its class label
    close(fig)
