"""Stochastic views of embedding rows for contrastive learning.

Two augmentations, registered by name in :data:`AUGMENTATIONS` and applied in the order the
configuration lists them (:class:`ComposedAugmentation`):

* ``"feature_mask"`` -- :class:`FeatureMasking`: each coordinate is zeroed independently with
  probability ``p``.
* ``"gaussian_noise"`` -- :class:`GaussianNoise`: adds ``N(0, (sigma * std_j)^2)`` to feature
  ``j``, where ``std_j`` is the per-feature standard deviation of the whole matrix being fitted
  (computed once per ``fit``), so the noise level does not depend on the scale of the embeddings.

With ``SimSkipConfig.standardize`` (the default) both act on the standardized rows ``x / s``;
masking commutes with the scaling and the relative noise level is the same, so the views are the
former ones divided by ``s``.

All randomness comes from an explicit :class:`torch.Generator`, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "ComposedAugmentation",
    "FeatureMasking",
    "GaussianNoise",
    "build_augmentation",
]


class Augmentation:
    """Interface: map a batch to a random view of it.

    :param x: batch, shape ``(B, d)``.
    :param generator: source of randomness, on ``x.device``.
    :return: view, shape ``(B, d)``.
    """

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class FeatureMasking(Augmentation):
    """Zero each coordinate independently with probability ``p`` (``0 <= p < 1``).

    Kept coordinates are not rescaled: the encoder sees the same scale as at inference.
    """

    p: float

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep


@dataclass
class GaussianNoise(Augmentation):
    """Add Gaussian noise of std ``sigma * feature_std`` (per feature).

    :param sigma: relative noise level, ``>= 0``.
    :param feature_std: shape ``(d,)``, the per-feature std of the matrix being fitted.
    """

    sigma: float
    feature_std: torch.Tensor

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.sigma == 0:
            return x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + noise * (self.sigma * self.feature_std)


@dataclass
class ComposedAugmentation(Augmentation):
    """Apply several augmentations one after the other (an empty list is the identity)."""

    steps: Sequence[Augmentation]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x


# Registry: name -> factory(mask_prob, noise_std, feature_std). A plain dict rather than
# class_resolver keeps simskip_core free of dependencies beyond torch/numpy/tqdm.
AUGMENTATIONS: dict[str, Callable[[float, float, torch.Tensor], Augmentation]] = {
    "feature_mask": lambda mask_prob, noise_std, feature_std: FeatureMasking(mask_prob),
    "gaussian_noise": lambda mask_prob, noise_std, feature_std: GaussianNoise(noise_std, feature_std),
}


def build_augmentation(
    names: Sequence[str], *, mask_prob: float, noise_std: float, feature_std: torch.Tensor
) -> ComposedAugmentation:
    """Build the composed augmentation named by ``names``, applied in that order.

    :param names: keys of :data:`AUGMENTATIONS`.
    :param mask_prob: masking probability for ``"feature_mask"``.
    :param noise_std: relative noise std for ``"gaussian_noise"``.
    :param feature_std: shape ``(d,)``, per-feature std of the fitted matrix.
    :raises KeyError: for an unknown name (configs are validated earlier, see ``SimSkipConfig``).
    """
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise KeyError(f"unknown augmentation(s) {unknown}; known: {sorted(AUGMENTATIONS)}")
    return ComposedAugmentation([AUGMENTATIONS[name](mask_prob, noise_std, feature_std) for name in names])
