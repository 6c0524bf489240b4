"""docs/hooks.py: the generated command reference renders help text as text, not HTML."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_angle_brackets_are_escaped_outside_code_spans_only():
    cell = _hooks()._cell("root with train/<class>/ and ``a<b`` | x")
    assert cell == "root with train/&lt;class&gt;/ and `a<b` \\| x"


def test_the_command_reference_holds_no_raw_tag_outside_code_spans():
    reference = _hooks().cli_reference()
    outside = "".join(reference.split("`")[::2])
    assert not re.search(r"<[A-Za-z/]", outside)
