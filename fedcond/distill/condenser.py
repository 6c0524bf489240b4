"""The condenser protocol and the registry that reaches every condensation method by name.

A condenser turns an :class:`~fedcond.data.registry.ArrayDataset` into a
:class:`~fedcond.distill.synthetic.SyntheticSet`, wrapped in a
:class:`~fedcond.distill.optimisation.CondensationResult`. Every method is constructed the same way,
``cls(config, *, device=..., **options)``, and run the same way, ``condense(data, *, start=...,
on_iteration=...)``; the CLI, the continual buffers and the benchmarks look methods up with
:func:`get_condenser` instead of importing a class, so a method registered with
:func:`register_condenser` is usable everywhere at once.

The shape follows torchvision's model registry: :func:`register_condenser` is a class decorator,
:func:`get_condenser` and :func:`list_condensers` are the rest of the public surface, and an
unknown name raises with the registered ones listed.

Small classes
-------------
One policy, for every method: a class with no images in ``data`` is skipped (listed in
``skipped_classes``); a class holding at least one but fewer images than the method needs
(``ipc`` for a selection, ``ipc x factor^2`` for a start drawn from real images) is refused with a
:class:`ShortClassError` naming the classes, because a set with fewer images than ``ipc`` would be
compared at a budget it does not use. A start drawn from noise needs no real images per class and
accepts any class with at least one. :func:`check_class_sizes` is that rule; condensers call it.
Callers that must cover every class whatever its size give DM a start that does not draw
``ipc`` real images of a short class: the continual ``DistilledBuffer`` condenses short classes
from noise, the federated client starts them from jittered copies of their few images.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch

from fedcond.config import DistillConfig
from fedcond.data.registry import ArrayDataset

if TYPE_CHECKING:
    from fedcond.distill.optimisation import CondensationResult

__all__ = [
    "ENTRY_POINT_GROUP",
    "Condenser",
    "ShortClassError",
    "UnsupportedOptionError",
    "accepts_option",
    "check_class_sizes",
    "condenser_class",
    "get_condenser",
    "list_condensers",
    "refused_config_fields",
    "register_condenser",
]

#: every registered condenser class, by name
_REGISTRY: dict[str, type] = {}
#: entry-point group of modules that register condensers when imported (third-party packages)
ENTRY_POINT_GROUP = "fedcond.condensers"
_plugins_loaded = False

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=type)


@runtime_checkable
class Condenser(Protocol):
    """What every registered method is: constructed from a config, run on a dataset.

    A class may also carry ``config_fields``, a ``frozenset`` of the
    :class:`~fedcond.config.DistillConfig` fields it reads: the CLI then refuses, by name, a
    flag that sets any other field. A class without it is assumed to read them all.
    """

    def condense(
        self,
        data: ArrayDataset,
        *,
        start: torch.Tensor | None = None,
        on_iteration: Callable[[int, float], None] | None = None,
    ) -> CondensationResult:
        """Condense ``data`` into ``config.ipc`` images per class present.

        ``start``: start from these images instead of the method's own start (``ipc`` images of
        each class present, class by class); a method without a start refuses it.
        ``on_iteration``: called as ``on_iteration(iteration, loss)`` after every step of a
        method with an optimisation loop.
        """
        ...


class UnsupportedOptionError(ValueError):
    """A condenser was asked for an option (a keyword or a config field) it cannot honour."""


class ShortClassError(ValueError):
    """Some class holds fewer real images than the method needs (see the module docstring)."""


def register_condenser(name: str) -> Callable[[C], C]:
    """Class decorator: make ``cls`` reachable as ``get_condenser(name, ...)``.

    The class must accept ``cls(config: DistillConfig, *, device: torch.device, **options)`` and
    have a ``condense(data, *, start=None, on_iteration=None)`` method returning a
    ``CondensationResult`` (see :class:`Condenser`).

    Raises
    ------
    ValueError
        If ``name`` is empty or already registered (two methods must not share a name).
    """
    if not name or name != name.strip() or name != name.lower():
        raise ValueError(f"a condenser name must be non-empty lower-case text without surrounding spaces, got {name!r}")

    def decorate(cls: C) -> C:
        if name in _REGISTRY:
            raise ValueError(f"a condenser named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        if not callable(getattr(cls, "condense", None)):
            raise TypeError(f"{cls.__qualname__} has no condense() method and cannot be a condenser")
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_condensers() -> list[str]:
    """Names of the registered condensers, sorted (entry-point plugins included)."""
    _load_plugins()
    return sorted(_REGISTRY)


def _load_plugins() -> None:
    """Import, once, every module named in the ``fedcond.condensers`` entry-point group.

    A plugin that fails to import is logged and left out, so one broken package does not take
    the built-in methods down with it.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported the same way
            logger.warning("condenser plugin %s (%s) failed to load: %s", entry.name, entry.value, exc)


def condenser_class(name: str) -> type:
    """The class registered as ``name``.

    Raises
    ------
    ValueError
        If no condenser has that name; the message lists the registered ones.
    """
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown condensation method {name!r}; registered: {', '.join(list_condensers())}"
        ) from None


def get_condenser(
    name: str, config: DistillConfig, *, device: torch.device | str = "cpu", **options: Any
) -> Condenser:
    """A ready condenser: ``cls(config, device=device, **options)`` for the class named ``name``.

    Parameters
    ----------
    name : str
        A registered method (:func:`list_condensers`).
    config : DistillConfig
        Shared settings (``ipc``, ``seed``, ``time_budget``, and the fields of methods that
        optimise).
    device : torch.device | str
        Where the method runs.
    **options
        Keywords of the method's constructor (e.g. ``real_statistics`` or ``embedder`` for DM).

    Raises
    ------
    ValueError
        For an unknown name (the registered ones are listed).
    UnsupportedOptionError
        For an option the method's constructor does not take, named in the message.
    """
    cls = condenser_class(name)
    accepted = _keyword_parameters(cls)
    if accepted is not None:
        refused = sorted(set(options) - accepted)
        if refused:
            takes = ", ".join(sorted(accepted - {"device"})) or "no options"
            raise UnsupportedOptionError(
                f"condenser {name!r} cannot honour {', '.join(refused)} (it takes: {takes})"
            )
    return cls(config, device=device, **options)


def accepts_option(name: str, option: str) -> bool:
    """Whether the condenser ``name`` takes the constructor keyword ``option``.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    accepted = _keyword_parameters(condenser_class(name))
    return accepted is None or option in accepted


def refused_config_fields(name: str, fields: Iterable[str]) -> list[str]:
    """The members of ``fields`` that the condenser ``name`` does not read (sorted).

    Raises
    ------
    ValueError
        For an unknown name.
    """
    reads = getattr(condenser_class(name), "config_fields", None)
    if reads is None:
        return []
    return sorted(set(fields) - set(reads))


def check_class_sizes(data: ArrayDataset, *, needed: int, method: str) -> list[int]:
    """Apply the small-class policy: the classes of ``data`` to skip (those with no images).

    Raises
    ------
    ShortClassError
        If a class holds at least one but fewer than ``needed`` images.
    """
    counts = data.class_counts().tolist()
    short = {c: n for c, n in enumerate(counts) if 0 < n < needed}
    if short:
        listed = ", ".join(f"{c} ({n})" for c, n in short.items())
        raise ShortClassError(
            f"{method} needs {needed} images per class; classes {listed} hold fewer: lower ipc, "
            "leave those classes out, or use a method that starts from noise"
        )
    return [c for c, n in enumerate(counts) if n == 0]


def _keyword_parameters(cls: type) -> set[str] | None:
    """Keyword names the constructor takes after ``config``, or ``None`` if it takes ``**kwargs``."""
    parameters = list(inspect.signature(cls).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL}
