"""A process killed mid-run, for the crash-safety tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Killed(BaseException):
    """Stands for the process dying at that point: no ``except Exception`` handler catches it."""


def killed_at_call(function: Callable[..., Any], call: int) -> Callable[..., Any]:
    """``function``, except that its ``call``-th call (1-based) raises :class:`Killed`: the process dies there."""
    count = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == call:
            raise Killed
        return function(*args, **kwargs)

    return wrapped
