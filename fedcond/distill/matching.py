"""What distribution matching matches: the class means (DM), optionally plus a kernel MMD.

DM (Zhao & Bilen, WACV 2023) matches only the first moment of each class's embeddings under
a random network. Adding a Gaussian-kernel maximum mean discrepancy matches the whole
embedding distribution (the idea of M3D, Zhang et al., AAAI 2024). Both are pure functions
of embeddings; the engine (:mod:`fedcond.distill.dm`) decides what to feed them.
"""

from __future__ import annotations

import torch

from fedcond.config import DistillConfig, choices_of

__all__ = ["BANDWIDTH_FACTORS", "MATCHINGS", "check_matching", "class_mmd_loss", "dm_loss", "gaussian_mmd2"]

#: ``mean``: DM's squared distance between class means; ``mmd``: that plus a Gaussian-kernel MMD
MATCHINGS = choices_of(DistillConfig, "matching")

#: the kernel mixes three bandwidths around the median squared real-synthetic distance
BANDWIDTH_FACTORS = (0.25, 1.0, 4.0)


def check_matching(matching: str, *, private: bool = False) -> None:
    """Refuse an unknown ``matching``, or (``private=True``) one that DP-DM cannot protect.

    DP-DM adds noise to class means only; ``mmd`` reads every real embedding, so it is not private.

    Raises
    ------
    ValueError
        Naming the problem; callers re-raise it as their own error type where they have one.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"unknown matching {matching!r}: not one of {', '.join(MATCHINGS)}")
    if private and matching != "mean":
        raise ValueError(
            f"DP-DM releases only noisy class means, so matching={matching!r} (which reads every real "
            "embedding) is not private: use matching='mean'"
        )


def dm_loss(real_means: torch.Tensor, syn_means: torch.Tensor) -> torch.Tensor:
    """DM's objective: squared distance between mean embeddings, summed over the given classes."""
    return ((real_means - syn_means) ** 2).sum()


def gaussian_mmd2(
    real: torch.Tensor,
    syn: torch.Tensor,
    *,
    bandwidth_factors: tuple[float, ...] = BANDWIDTH_FACTORS,
) -> torch.Tensor:
    """Biased squared MMD between two samples under a mixture of Gaussian kernels.

    ``k(x, y) = sum_f exp(-||x - y||^2 / (f * m))`` where ``m`` is the median squared distance
    between the real and synthetic samples (detached, so the bandwidth is not optimised).
    Gradients flow into ``syn`` only; ``real`` is treated as data.

    Parameters
    ----------
    real : Tensor
        ``n x D`` real embeddings (one class).
    syn : Tensor
        ``m x D`` synthetic embeddings of the same class.
    bandwidth_factors : tuple of float
        Multiples of the median heuristic; each must be positive.

    Returns
    -------
    Tensor
        A non-negative scalar (0 when the two samples coincide).
    """
    if real.ndim != 2 or syn.ndim != 2 or real.shape[1] != syn.shape[1]:
        raise ValueError(f"expected two n x D matrices with equal D, got {tuple(real.shape)} and {tuple(syn.shape)}")
    if real.shape[0] == 0 or syn.shape[0] == 0:
        raise ValueError("gaussian_mmd2 needs at least one real and one synthetic sample")
    if not bandwidth_factors or min(bandwidth_factors) <= 0:
        raise ValueError(f"bandwidth factors must be positive, got {bandwidth_factors}")
    real = real.detach().float()
    syn = syn.float()
    d_ss = torch.cdist(syn, syn).pow(2)
    d_sr = torch.cdist(syn, real).pow(2)
    with torch.no_grad():
        d_rr = torch.cdist(real, real).pow(2)
        median = d_sr.median().clamp_min(1e-12)
    total = syn.new_zeros(())
    for factor in bandwidth_factors:
        width = factor * median
        k_rr = torch.exp(-d_rr / width).mean()
        total = total + torch.exp(-d_ss / width).mean() - 2 * torch.exp(-d_sr / width).mean() + k_rr
    return total.clamp_min(0.0)


def class_mmd_loss(
    real_emb: torch.Tensor,
    real_groups: torch.Tensor,
    syn_emb: torch.Tensor,
    syn_groups: torch.Tensor,
    *,
    classes: list[int],
    weight: float,
) -> torch.Tensor:
    """``weight * D * sum_c MMD^2(real_c, syn_c)`` over ``classes`` (D: embedding width).

    Each kernel value lies in [0, 1] whatever the width, while the mean term sums ``D``
    squared coordinates; scaling by ``D`` keeps the meaning of ``weight`` the same for every
    network width. At ``weight=1`` the kernel term dominates DM's loss value (measured about
    50x the mean term on digits); its gradient is what moves the images.
    """
    if weight < 0:
        raise ValueError(f"mmd weight must be >= 0, got {weight}")
    total = syn_emb.new_zeros((), dtype=torch.float32)
    for c in classes:
        real_c = real_emb[real_groups == c]
        syn_c = syn_emb[syn_groups == c]
        if real_c.shape[0] == 0 or syn_c.shape[0] == 0:
            continue
        total = total + gaussian_mmd2(real_c, syn_c)
    return weight * syn_emb.shape[1] * total
