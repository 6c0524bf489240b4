"""The results tables and figures of the docs and README are what render_results.py makes of the JSON."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.simulations.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _renderer():
    return load_script("render_results")


def test_every_results_block_matches_the_json(capsys) -> None:
    status = _renderer().main(["--check"])
    assert status == 0, capsys.readouterr().err


def test_every_table_is_used_and_every_block_is_known() -> None:
    renderer = _renderer()
    used = set()
    for target in renderer.TARGETS:
        used |= {m.group("name") for m in renderer.BLOCK.finditer(target.read_text())}
    assert used == set(renderer.TABLES)


def test_a_hand_edited_table_is_caught(tmp_path, monkeypatch) -> None:
    renderer = _renderer()
    page = tmp_path / "results.md"
    text = (ROOT / "docs" / "results.md").read_text()
    edited = re.sub(r"\*\*92\.78 ± 0\.14\*\*", "**93.00 ± 0.14**", text)
    assert edited != text
    page.write_text(edited)
    monkeypatch.setattr(renderer, "TARGETS", (page,))
    monkeypatch.setattr(renderer, "FIGURES", {})
    assert renderer.main(["--check"]) == 1
    assert renderer.main([]) == 0
    assert page.read_text() == text


def test_every_figure_sidecar_matches_the_json() -> None:
    stale = _renderer().render_figures(check=True)
    assert stale == [], f"run python simulations/render_results.py: {[p.name for p in stale]}"


def test_a_stale_or_missing_figure_is_caught(tmp_path, monkeypatch) -> None:
    renderer = _renderer()
    for name in renderer.FIGURES:
        for suffix in (".png", ".json"):
            shutil.copy(renderer.FIGURES_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    monkeypatch.setattr(renderer, "FIGURES_DIR", tmp_path)
    monkeypatch.setattr(renderer, "TARGETS", ())
    assert renderer.main(["--check"]) == 0

    side = tmp_path / "federated_accuracy_mnist10k_dir0.1.json"
    original = side.read_text()
    spec = json.loads(original)
    spec["panels"][0]["series"][0]["y"][-1] += 0.5  # one plotted value no longer the JSON's
    side.write_text(json.dumps(spec))
    assert renderer.main(["--check"]) == 1
    assert renderer.main([]) == 0  # redraws the figure and rewrites its sidecar
    assert side.read_text() == original
    assert renderer.main(["--check"]) == 0

    side.unlink()
    assert renderer.render_figures(check=True) == [tmp_path / "federated_accuracy_mnist10k_dir0.1.png"]
    (tmp_path / "continual_split_mnist_full.png").unlink()
    assert len(renderer.render_figures(check=True)) == 2
    assert renderer.main([]) == 0
    assert renderer.main(["--check"]) == 0
    assert side.read_text() == original


def test_every_image_in_docs_figures_is_drawn_or_an_example() -> None:
    renderer = _renderer()
    drawn = set(renderer.FIGURES)
    pngs = {p.name for p in renderer.FIGURES_DIR.glob("*.png")}
    assert pngs == {f"{name}.png" for name in drawn} | set(renderer.EXAMPLE_IMAGES)
    assert {p.stem for p in renderer.FIGURES_DIR.glob("*.json")} == drawn


def test_every_embedded_figure_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    embedded = {
        (page.parent / m.group(1)).resolve()
        for page in pages
        for m in re.finditer(r"!\[[^\]]*\]\(([^)\s]*figures/[^)\s]+\.png)\)", page.read_text())
    }
    assert embedded, "no page embeds a figure"
    missing = sorted(str(p.relative_to(ROOT)) for p in embedded if not p.is_file())
    assert missing == []
