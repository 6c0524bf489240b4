"""Content digests of tensors: the identity of data and state in checkpoints and ledgers.

A digest covers each tensor's dtype, shape and bytes, so two tensors with equal bytes but a
different layout (a transposed image batch, other labels' dtype) never share a digest.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["tensor_digest"]


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 (hex) of the tensors in order: dtype, shape and bytes of each; ``None`` is marked absent.

    Examples
    --------
    >>> tensor_digest(torch.zeros(2)) == tensor_digest(torch.zeros(2))
    True
    >>> tensor_digest(torch.zeros(2)) == tensor_digest(torch.zeros(1, 2))
    False
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
