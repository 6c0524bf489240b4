"""Every ``fedcond`` command shown in the README and the docs parses with the CLI's own parser.

A renamed or removed flag then breaks this test, not a reader. Commands are taken from fenced
code blocks (``\\`` continuations joined, ``#`` comments dropped) and parsed with
:func:`fedcond.cli.main.build_parser`; nothing runs.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from fedcond.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every ``fedcond ...`` line in a fenced block."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for block in FENCE.finditer(text):
            line_no = text.count("\n", 0, block.start("body")) + 1
            body = re.sub(r"\\\n\s*", " ", block.group("body"))
            for offset, line in enumerate(body.splitlines()):
                if line.lstrip().startswith("#"):
                    continue
                for piece in re.split(r"&&|;|\|", line):
                    piece = piece.strip()
                    if piece.startswith("fedcond "):
                        found.append((f"{path.relative_to(ROOT)}:{line_no + offset}", piece))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind() -> None:
    shown = {shlex.split(command, comments=True)[1] for _, command in COMMANDS}
    assert {"distill", "coreset", "simulate", "continual", "audit"} <= shown


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where: str, command: str) -> None:
    argv = shlex.split(command, comments=True)[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code}): {stderr.getvalue().strip()}")
