"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent_loss"]


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent loss of two batches of projections whose rows are positive pairs.

    Rows ``z1[i]`` and ``z2[i]`` are two views of the same item; every other row of either batch
    is a negative. With ``z = normalize(cat(z1, z2))`` (shape ``(2B, k)``) and
    ``s = z @ z.T / temperature``, the loss of anchor ``a`` with positive ``p(a)`` is
    ``-s[a, p(a)] + log(sum_{j != a} exp(s[a, j]))``; the result is the mean over all ``2B``
    anchors (both directions, as in SimCLR).

    :param z1: first views, shape ``(B, k)``, ``B >= 1``.
    :param z2: second views, shape ``(B, k)``.
    :param temperature: ``tau > 0``; smaller values sharpen the softmax.
    :return: scalar tensor.
    :raises ValueError: if the shapes differ, are not 2-D, or the temperature is not positive.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent_loss needs two 2-D batches of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"nt_xent_loss needs temperature > 0, got {temperature}")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / temperature
    # An anchor is never its own negative: remove the diagonal from the softmax.
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(z.device)
    return F.cross_entropy(logits, positives)
