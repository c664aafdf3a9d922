"""NT-Xent against a small NumPy reference computation written from SimCLR's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core import nt_xent_loss


def reference_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR's loss, loop by loop: mean over the 2B anchors of -log softmax of the positive."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    batch = n // 2
    total = 0.0
    for a in range(n):
        positive = (a + batch) % n
        sims = [z[a] @ z[j] / tau for j in range(n) if j != a]
        total += -(z[a] @ z[positive] / tau) + np.log(np.sum(np.exp(sims)))
    return total / n


@pytest.mark.parametrize("batch", [1, 2, 7, 32])
@pytest.mark.parametrize("dim", [1, 3, 16])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_matches_numpy_reference(batch: int, dim: int, tau: float) -> None:
    rng = np.random.default_rng(batch * 100 + dim)
    z1, z2 = rng.standard_normal((batch, dim)), rng.standard_normal((batch, dim))
    got = nt_xent_loss(torch.from_numpy(z1), torch.from_numpy(z2), tau).item()
    assert got == pytest.approx(reference_nt_xent(z1, z2, tau), rel=1e-9, abs=1e-9)


def test_aligned_views_score_lower_than_random_pairs() -> None:
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.standard_normal((16, 8)))
    aligned = nt_xent_loss(z, z + 0.01 * torch.randn_like(z), 0.5)
    shuffled = nt_xent_loss(z, z[torch.randperm(16)], 0.5)
    assert aligned < shuffled


def test_gradient_flows_to_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    nt_xent_loss(z1, z2, 0.5).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("shape1", "shape2", "tau"),
    [((4, 3), (4, 2), 0.5), ((4,), (4,), 0.5), ((4, 3), (4, 3), 0.0), ((4, 3), (4, 3), -1.0)],
)
def test_rejects_bad_shapes_and_temperature(shape1, shape2, tau) -> None:
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(shape1), torch.randn(shape2), tau)
