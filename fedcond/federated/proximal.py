"""FedProx's proximal term (Li et al., MLSys 2020) as a loss hook of :func:`fedcond.training.train_model`.

A FedProx client minimises its data loss plus ``mu/2 ||w - w_global||^2``, which holds the
local update near the global model it started from. :class:`ProximalTerm` snapshots the
model's weights when it is built (the global weights the client just received) and adds that
term to every step's loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ProximalTerm"]


class ProximalTerm:
    """Adds ``mu/2 ||w - w0||^2`` to the loss, ``w0`` being the weights at construction.

    Parameters
    ----------
    model : nn.Module
        The model about to be trained; its parameters are copied as the anchor ``w0``, on the
        device they are on (move the model to the training device first).
    mu : float
        The proximal coefficient (FedProx's ``mu``), finite and non-negative.

    Raises
    ------
    ValueError
        If ``mu`` is negative or not finite.

    Examples
    --------
    >>> hook = ProximalTerm(model, mu=0.01)                                     # doctest: +SKIP
    >>> train_model(model, images, labels, epochs=1, generator=g, loss_hook=hook)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, mu: float) -> None:
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"the proximal coefficient mu must be finite and >= 0, got {mu}")
        self.mu = mu
        self.anchor = [p.detach().clone() for p in model.parameters()]

    def distance(self, model: nn.Module) -> torch.Tensor:
        """``||w - w0||^2`` summed over all parameters (differentiable in ``w``).

        Raises
        ------
        ValueError
            If ``model`` has another number of parameter tensors than the anchor.
        """
        return sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), self.anchor, strict=True))

    def __call__(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """``loss + mu/2 ||w - w0||^2`` (the :class:`~fedcond.training.LossHook` call)."""
        return loss + 0.5 * self.mu * self.distance(model)
