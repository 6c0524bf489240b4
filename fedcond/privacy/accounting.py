"""Privacy accounting for DP distribution matching, on top of Opacus' accountants.

Pure math (noise calibration, epsilon of a schedule) is in module-level functions; the small
stateful :class:`PrivacyAccountant` keeps a compact history of
``(noise_multiplier, sample_rate, steps)`` triples and can be checkpointed with
``state_dict`` / ``load_state_dict``, like Opacus' own accountants which it wraps.

The mechanism accounted for is the Poisson-subsampled Gaussian mechanism, composed over
the DM iterations (see ``fedcond.privacy.dp`` for why one DM iteration is exactly one such
mechanism).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = [
    "ACCOUNTANTS",
    "PrivacyAccountant",
    "PrivacyBudgetError",
    "calibrate_noise_multiplier",
    "check_budget",
    "epsilon_for",
]

#: Registry: config string -> Opacus accountant class.
ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: Renyi orders searched by the RDP accountant: Opacus' defaults (1.1 ... 63) extended to 1024.
#: Large noise over few steps puts the optimal order above 63, where Opacus' default grid stops.
#: Its epsilon then never falls below ``log(1/delta) / 62`` (0.19 at delta 1e-5) however much
#: noise is added, so smaller budgets are refused ("The privacy budget is too low"; epsilon 0.1
#: over 10 steps needs sigma 110 here), and its noise search warns "Optimal order is the largest
#: alpha" on every short DP-DM run. A wider grid only tightens the bound (the RDP-to-DP
#: conversion is valid at every order); the floor becomes ``log(1/delta) / 1023``.
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *range(64, 128, 4),
    *range(128, 256, 16),
    *range(256, 1025, 64),
)


def _epsilon_options(mechanism: str) -> dict[str, Any]:
    """Keyword arguments for ``get_epsilon`` of ``mechanism`` (the RDP order grid)."""
    return {"alphas": list(RDP_ORDERS)} if mechanism == "rdp" else {}


class PrivacyBudgetError(ValueError):
    """An invalid privacy budget, or a run that would spend more than it was calibrated for."""


def check_budget(*, epsilon: float, delta: float) -> None:
    """Raise :class:`PrivacyBudgetError` unless ``epsilon > 0`` and ``0 < delta < 1``."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise PrivacyBudgetError(f"DP epsilon must be a finite number > 0, got {epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise PrivacyBudgetError(f"DP delta must lie strictly between 0 and 1, got {delta!r}")


def _create(mechanism: str) -> IAccountant:
    try:
        return ACCOUNTANTS[mechanism]()
    except KeyError:
        raise PrivacyBudgetError(
            f"unknown accountant {mechanism!r}; choose one of {', '.join(ACCOUNTANTS)}"
        ) from None


def epsilon_for(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon spent by ``steps`` Poisson-subsampled Gaussian steps (0 for no steps)."""
    if steps <= 0:
        return 0.0
    acc = _create(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta, **_epsilon_options(accountant)))


def calibrate_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The noise multiplier sigma whose ``steps``-fold composition spends at most ``epsilon``.

    A thin wrapper around :func:`opacus.accountants.utils.get_noise_multiplier`, whose binary
    search returns the upper end of its bracket, so the spent epsilon never exceeds the target.

    Raises
    ------
    PrivacyBudgetError
        For an invalid budget or sample rate, or a budget no noise level can meet.
    """
    check_budget(epsilon=epsilon, delta=delta)
    if not 0 < sample_rate <= 1:
        raise PrivacyBudgetError(f"sample rate must lie in (0, 1], got {sample_rate!r}")
    if steps <= 0:
        return 0.0
    _create(accountant)  # validates the name
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=float(epsilon),
                target_delta=float(delta),
                sample_rate=float(sample_rate),
                steps=int(steps),
                accountant=accountant,
                epsilon_tolerance=tolerance,
                **_epsilon_options(accountant),
            )
        )
    except ValueError as exc:
        raise PrivacyBudgetError(f"cannot reach epsilon={epsilon} at delta={delta}: {exc}") from exc


class PrivacyAccountant:
    """Stateful bookkeeping of the mechanisms run so far.

    Parameters
    ----------
    mechanism : str
        ``rdp`` (default) or ``prv`` (Opacus' accountants).

    Examples
    --------
    >>> acc = PrivacyAccountant()
    >>> acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    >>> round(acc.epsilon(delta=1e-5), 2) > 0
    True
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        self.mechanism = mechanism
        self._accountant = _create(mechanism)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` runs, consecutive equal ones merged."""
        return list(self._accountant.history)

    @property
    def steps(self) -> int:
        """Noisy steps recorded so far."""
        return sum(int(s) for _, _, s in self._accountant.history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` applications of the subsampled Gaussian mechanism."""
        if steps <= 0:
            return
        history = self._accountant.history
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            sigma, q, n = history.pop()
            history.append((sigma, q, n + steps))
        else:
            history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(delta=delta, **_epsilon_options(self.mechanism)))

    def state_dict(self) -> dict[str, Any]:
        """The mechanism name and the step history, JSON-serialisable (for checkpoints)."""
        return {"mechanism": self.mechanism, "history": [list(h) for h in self._accountant.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history written by :meth:`state_dict`.

        Raises
        ------
        PrivacyBudgetError
            If ``state`` is not an accountant state (no ``mechanism``, or a step that is not a
            noise multiplier > 0, a sample rate in (0, 1] and a step count >= 0), or was written
            by an accountant of another mechanism.
        """
        if not isinstance(state, Mapping) or "mechanism" not in state:
            raise PrivacyBudgetError("not an accountant state: it has no 'mechanism' (write it with state_dict())")
        if state["mechanism"] != self.mechanism:
            raise PrivacyBudgetError(
                f"accountant state is for {state['mechanism']!r}, this accountant is {self.mechanism!r}"
            )
        steps = state.get("history", [])
        if not isinstance(steps, (list, tuple)):
            raise PrivacyBudgetError(f"accountant state's history must be a list of steps, got {type(steps).__name__}")
        history = []
        for step in steps:
            try:
                sigma, rate, count = step
                whole = isinstance(count, int) or (isinstance(count, float) and count.is_integer())
                entry = (float(sigma), float(rate), int(count)) if whole and not isinstance(count, bool) else None
            except (TypeError, ValueError, OverflowError):
                entry = None
            if entry is None or not (
                math.isfinite(entry[0]) and entry[0] > 0 and 0 < entry[1] <= 1 and entry[2] >= 0
            ):
                raise PrivacyBudgetError(
                    f"accountant state holds a step {step!r} that is not [noise multiplier > 0, sample rate in "
                    "(0, 1], a whole number of steps >= 0]"
                )
            history.append(entry)
        self._accountant.history = history
