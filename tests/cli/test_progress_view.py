"""ProgressView in a log (stderr a file or pipe): marked updates and notes are lasting lines."""

from __future__ import annotations

import io

from rich.console import Console

import fedcond.cli.common as common


def test_a_log_gets_the_marked_updates_and_the_notes_only(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=out, force_terminal=False, width=100))
    with common.ProgressView("work", total=4) as view:
        view.update(1, label="step one", line=False)
        view.update(2, label="step two", line=True)
        view.note("a lasting note")
    text = out.getvalue()
    assert "step two" in text and "a lasting note" in text
    assert "step one" not in text  # unmarked updates are for a terminal's bar only
    assert "\x1b[" not in text  # no bar drawn into the log
