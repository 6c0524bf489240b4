"""The results tables in README.md and docs/results.md are what render_results.py makes of the JSON."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "simulations" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert renderer.main(["--check"]) == 1
    assert renderer.main([]) == 0
    assert page.read_text() == text
