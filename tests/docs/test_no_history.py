"""The shipped text says what the code does and why, never when or how it changed.

History belongs in CHANGELOG.md and the git log. This scans the README, the docs, the package,
the configs and the simulation scripts for narration of development history and fails with
``file:line`` for every hit.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PATTERNS = {
    "a numbered round of work": re.compile(r"\bsessions? \d+|\bround \d+ of (work|development)\b", re.IGNORECASE),
    "what the code used to do": re.compile(
        r"\bused to (be|do|say|write|give|run|read|print|return|have|ignore|accept|take|keep|use|make|"
        r"fail|raise|crash|drop|skip|count|round|report|draw|compute|stop|load|store|call)\b",
        re.IGNORECASE,
    ),
    "until ... now": re.compile(r"\buntil\b.{0,40}\bnow\b", re.IGNORECASE),
    "a former default": re.compile(
        r"\b(the|an?) (old|former|previous) default\b|\bdefault (until|before) \w+", re.IGNORECASE
    ),
    "a fix narrated": re.compile(r"\(fixed in\b|\bbefore the fix\b|\bafter the fix\b", re.IGNORECASE),
}


def shipped_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += sorted((ROOT / "fedcond").rglob("*.py"))
    files += sorted(p for p in (ROOT / "configs").iterdir() if p.is_file())
    files += sorted(p for p in (ROOT / "simulations").iterdir() if p.is_file())
    return [p for p in files if p.name != "CHANGELOG.md"]


def history_lines(path: Path) -> list[str]:
    hits = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        for what, pattern in PATTERNS.items():
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:120]}")
    return hits


def test_the_patterns_catch_history_and_spare_ordinary_text() -> None:
    # the numbered examples are formatted in, so that a plain-text search of the repository for
    # history narration does not report this test's own examples
    history = [
        f"Session {7} re-measured it", f"the default since session {7}", f"sessions {4}-16 ran it",
        "it used to ignore the flag", f"until session {16} only the totals agreed, now all do",
        "the old default", f"(fixed in session {6})",
    ]
    ordinary = [
        "Flower's round 3 of training", "the key used to seed the generator", "until every client has data",
        "a Ray session's temp dir", "the default layout is class", "runs until it converges",
    ]
    for line in history:
        assert any(p.search(line) for p in PATTERNS.values()), line
    for line in ordinary:
        assert not any(p.search(line) for p in PATTERNS.values()), line


def test_shipped_text_holds_no_development_history() -> None:
    hits = [hit for path in shipped_files() for hit in history_lines(path)]
    assert not hits, "history narration (move it to CHANGELOG.md):\n" + "\n".join(hits)
