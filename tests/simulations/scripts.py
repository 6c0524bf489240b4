"""The scripts under simulations/ as modules, and the command lines the docs give for them."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)


def load_script(name: str) -> ModuleType:
    """``simulations/NAME.py`` imported as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "simulations" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def documented_commands(script: str) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``python <script> ...`` line in a fenced block of the docs."""
    found = []
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for block in _FENCE.finditer(path.read_text()):
            for line in re.sub(r"\\\n\s*", " ", block.group("body")).splitlines():
                if line.strip().startswith(f"python {script} "):
                    found.append((str(path.relative_to(ROOT)), shlex.split(line, comments=True)[2:]))
    return found


def unparsable_commands(script: str, parse: Callable[[list[str]], object]) -> list[str]:
    """The documented command lines of ``script`` that ``parse`` (its argument parser) refuses."""
    failures = []
    for where, argv in documented_commands(script):
        try:
            parse(argv)
        except SystemExit:
            failures.append(f"{where}: {shlex.join(argv)}")
    return failures
