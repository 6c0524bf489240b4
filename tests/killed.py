"""A process killed mid-run, for the crash-safety tests."""

from __future__ import annotations


class Killed(BaseException):
    """Stands for the process dying at that point: no ``except Exception`` handler catches it."""
