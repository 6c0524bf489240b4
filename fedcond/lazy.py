"""Lazy attributes for package facades: a name loads its heavy module on first access."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

__all__ = ["lazy_attribute", "lazy_dir"]


def lazy_attribute(package: str, table: Mapping[str, str], name: str) -> object:
    """``name`` from the module ``table[name]``, imported now (a package's ``__getattr__``).

    Raises
    ------
    AttributeError
        If ``name`` is not in ``table``, worded as Python's own error for ``package``.
    """
    if name not in table:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(table[name]), name)


def lazy_dir(namespace: Mapping[str, object], table: Mapping[str, str]) -> list[str]:
    """A package's names with its lazy ones (a package's ``__dir__``, for ``dir()`` and completion)."""
    return sorted({*namespace, *table})
