"""The skip-connected encoder ``f(x) = x + g(x)`` and the projection head of SimSkip.

Normalization is LayerNorm (or none), not BatchNorm: LayerNorm acts on each row alone, so
``transform`` of a row does not depend on which other rows share its batch, and it has no running
statistics -- the weights to export, import and federate are exactly the parameters.

The LayerNorm inside ``g`` fixes the size of ``g(x)`` in absolute units whatever the size of
``x``, so ``f`` alone is not scale-aware: :class:`~simskip_core.trainer.SimSkipTrainer` therefore
(by default, ``standardize=True``) runs it on ``x / s`` for a scalar scale ``s`` of the matrix
and maps back with :meth:`SkipEncoder.forward_scaled`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "NORMALIZATIONS", "ProjectionHead", "SkipEncoder", "build_mlp"]

# Registries: name -> module factory (plain dicts keep the package free of extra dependencies).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
NORMALIZATIONS: dict[str, Callable[[int], nn.Module]] = {
    "layer_norm": nn.LayerNorm,
    "none": lambda width: nn.Identity(),
}


def build_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str, normalization: str
) -> nn.Sequential:
    """An MLP of ``num_layers`` Linear layers: ``[Linear, norm, activation] * (num_layers - 1) + [Linear]``.

    :param in_dim: input width.
    :param hidden_dim: width of every hidden layer.
    :param out_dim: output width.
    :param num_layers: number of Linear layers, ``>= 1``.
    :param activation: key of :data:`ACTIVATIONS`.
    :param normalization: key of :data:`NORMALIZATIONS`.
    :return: module mapping ``(B, in_dim)`` to ``(B, out_dim)``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden_dim), NORMALIZATIONS[normalization](hidden_dim), ACTIVATIONS[activation]()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class SkipEncoder(nn.Module):
    """SimSkip's encoder: ``f(x) = x + g(x)`` (or ``g(x)`` for the no-skip ablation).

    With ``skip=True`` the last Linear layer of ``g`` starts at zero (weight and bias), so the
    untrained encoder is exactly the identity and refinement starts from the input embeddings.
    With ``skip=False`` (the paper's ablation) ``g`` keeps PyTorch's default initialization: a
    zero last layer would map every row to 0.

    :param dim: embedding width ``d``; input and output shape ``(B, d)``.
    :param hidden_dim: width of the hidden layers of ``g``.
    :param num_layers: number of Linear layers of ``g``.
    :param activation: key of :data:`ACTIVATIONS`.
    :param normalization: key of :data:`NORMALIZATIONS`.
    :param skip: add the input to ``g``'s output.
    """

    def __init__(
        self, dim: int, hidden_dim: int, num_layers: int, activation: str, normalization: str, skip: bool = True
    ) -> None:
        super().__init__()
        self.skip = skip
        self.g = build_mlp(dim, hidden_dim, dim, num_layers, activation, normalization)
        if skip:
            last = self.g[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: shape ``(B, d)``. :return: shape ``(B, d)``."""
        return x + self.g(x) if self.skip else self.g(x)

    def forward_scaled(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """The encoder applied in units of ``scale``: ``scale * f(x / scale)``.

        Computed as ``x + scale * g(x / scale)`` (``scale * g(x / scale)`` without the skip), so
        with the zero-initialized last layer the output is ``x`` exactly, not ``x`` up to the
        rounding of dividing and multiplying back.

        :param x: shape ``(B, d)``, in the caller's units.
        :param scale: positive finite factor (SimSkipTrainer's :attr:`~SimSkipTrainer.scale`).
        :return: shape ``(B, d)``, in the caller's units.
        """
        residual = self.g(x / scale) * scale
        return x + residual if self.skip else residual


class ProjectionHead(nn.Module):
    """SimCLR's projection head ``h``: an MLP to a smaller space, used by the loss only.

    :param dim: input width ``d``.
    :param hidden_dim: hidden width.
    :param projection_dim: output width ``k``; maps ``(B, d)`` to ``(B, k)``.
    :param num_layers: number of Linear layers.
    :param activation: key of :data:`ACTIVATIONS`.
    """

    def __init__(
        self, dim: int, hidden_dim: int, projection_dim: int, num_layers: int = 2, activation: str = "relu"
    ) -> None:
        super().__init__()
        # No normalization in the head, as in SimCLR's: it only shapes the loss geometry.
        self.mlp = build_mlp(dim, hidden_dim, projection_dim, num_layers, activation, "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: shape ``(B, d)``. :return: shape ``(B, k)``."""
        return self.mlp(x)
