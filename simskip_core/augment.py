"""Stochastic views of embedding rows for contrastive learning.

Three augmentations, registered by name in :data:`AUGMENTATIONS` and applied in the order the
configuration lists them (:class:`ComposedAugmentation`):

* ``"feature_mask"`` -- :class:`FeatureMasking`: each coordinate is zeroed independently with
  probability ``p``.
* ``"gaussian_noise"`` -- :class:`GaussianNoise`: adds ``N(0, (sigma * std_j)^2)`` to feature
  ``j``, where ``std_j`` is the per-feature standard deviation of the whole matrix being fitted
  (computed once per ``fit``), so the noise level does not depend on the scale of the embeddings.
* ``"row_view"`` -- :class:`RowView`: replaces each row of the batch by a view the *caller*
  supplies, through a :data:`RowViewProvider` given to ``SimSkipTrainer.fit(X, row_view=...)``:
  a callable ``(index, generator) -> rows`` that gets the batch's row indices into ``X`` (a
  ``LongTensor`` on the training device) and the trainer's augmentation generator, and returns
  one view per row in the units of ``X`` (real ``(B, d)`` columns, or ``(B, d // 2)`` complex for
  a complex ``X``). The view is divided by the trainer's scale ``s`` like ``X`` itself. This is
  how a caller brings knowledge the rows alone do not carry (e.g. a graph's structure) into the
  views while this package stays modality-agnostic. It must come first in the list (it replaces
  the batch, so anything before it would be discarded); noise and masking then act on the view.
  Naming it without a provider fails with :class:`~simskip_core.errors.ConfigError`.

With ``SimSkipConfig.standardize`` (the default) both act on the standardized rows ``x / s``;
masking commutes with the scaling and the relative noise level is the same, so the views are the
former ones divided by ``s``.

All randomness comes from an explicit :class:`torch.Generator`, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .errors import ConfigError, EmbeddingInputError

__all__ = [
    "AUGMENTATIONS",
    "ROW_VIEW",
    "Augmentation",
    "ComposedAugmentation",
    "FeatureMasking",
    "GaussianNoise",
    "RowView",
    "RowViewProvider",
    "build_augmentation",
]

#: Registry name of :class:`RowView`, the caller-supplied view.
ROW_VIEW = "row_view"

#: ``(index, generator) -> view``: ``index`` is a ``LongTensor`` ``(B,)`` of row indices into the
#: ``X`` given to ``fit`` (on the training device), ``generator`` the trainer's augmentation
#: generator (on the same device; draw from it for reproducible views); the view has the units of
#: ``X``: shape ``(B, d)`` real, or ``(B, d // 2)`` complex when ``X`` is complex (its real pairs
#: ``re_0, im_0, re_1, ...`` are used, as for ``X``).
RowViewProvider = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Augmentation:
    """Interface: map a batch to a random view of it.

    :param x: batch, shape ``(B, d)``.
    :param generator: source of randomness, on ``x.device``.
    :return: view, shape ``(B, d)``.

    An augmentation with ``needs_index = True`` is called with the keyword ``index`` as well (the
    batch's row indices, see :class:`RowView`).
    """

    #: whether :class:`ComposedAugmentation` passes the batch's row indices (``index=``)
    needs_index: ClassVar[bool] = False

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
class RowView(Augmentation):
    """Replace each row of the batch by the caller's view of it (registry name ``"row_view"``).

    The view comes from ``provider(index, generator)`` (a :data:`RowViewProvider`) in the units of
    the fitted ``X``; it is converted to real columns (complex views through their real pairs),
    moved to the batch's device and dtype and divided by ``scale`` (the trainer's ``s``; ``None``
    without standardization), so it is in the units of the batch. Shapes are checked; values are
    not (a non-finite view makes the loss non-finite, which the trainer reports).

    :param provider: the caller's view; ``None`` only until :func:`build_augmentation` binds it.
    :param scale: the trainer's scale ``s``, or ``None`` (no standardization).
    """

    provider: RowViewProvider | None = None
    scale: float | None = None
    needs_index: ClassVar[bool] = True

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, *, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.provider is None:
            raise ConfigError(_MISSING_PROVIDER)
        if index is None:
            raise EmbeddingInputError("augmentation 'row_view' needs the batch's row indices (index=...)")
        view = self.provider(index, generator)
        if not isinstance(view, torch.Tensor):
            raise EmbeddingInputError(f"the row-view provider returned a {type(view).__name__}, expected a tensor")
        if view.is_complex():
            view = torch.view_as_real(view.resolve_conj()).reshape(view.shape[0], -1)
        if tuple(view.shape) != tuple(x.shape):
            raise EmbeddingInputError(
                f"the row-view provider returned shape {tuple(view.shape)} for a batch of shape {tuple(x.shape)} "
                "(one row per index, in the units and columns of X)"
            )
        view = view.to(device=x.device, dtype=x.dtype)
        return view if self.scale is None else view / self.scale


_MISSING_PROVIDER = (
    "config key 'augmentations' names 'row_view', but no row-view provider was given: pass one to "
    "SimSkipTrainer.fit(X, row_view=provider) (or refine(X, config, row_view=provider)), "
    "or remove 'row_view' from 'augmentations'"
)


@dataclass
class ComposedAugmentation(Augmentation):
    """Apply several augmentations one after the other (an empty list is the identity).

    ``index`` (the batch's row indices) is passed on to the steps that need it (:class:`RowView`).
    """

    steps: Sequence[Augmentation]

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, *, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator, index=index) if step.needs_index else step(x, generator)
        return x


# Registry: name -> factory(mask_prob, noise_std, feature_std). A plain dict rather than
# class_resolver keeps simskip_core free of dependencies beyond torch/numpy/tqdm. ``row_view``'s
# factory returns an unbound RowView; build_augmentation binds the caller's provider and scale.
AUGMENTATIONS: dict[str, Callable[[float, float, torch.Tensor], Augmentation]] = {
    "feature_mask": lambda mask_prob, noise_std, feature_std: FeatureMasking(mask_prob),
    "gaussian_noise": lambda mask_prob, noise_std, feature_std: GaussianNoise(noise_std, feature_std),
    ROW_VIEW: lambda mask_prob, noise_std, feature_std: RowView(),
}


def build_augmentation(
    names: Sequence[str],
    *,
    mask_prob: float,
    noise_std: float,
    feature_std: torch.Tensor,
    row_view: RowViewProvider | None = None,
    scale: float | None = None,
) -> ComposedAugmentation:
    """Build the composed augmentation named by ``names``, applied in that order.

    :param names: keys of :data:`AUGMENTATIONS`.
    :param mask_prob: masking probability for ``"feature_mask"``.
    :param noise_std: relative noise std for ``"gaussian_noise"``.
    :param feature_std: shape ``(d,)``, per-feature std of the fitted matrix.
    :param row_view: the caller's view for ``"row_view"`` (a :data:`RowViewProvider`); required
        when ``names`` holds ``"row_view"``, refused otherwise.
    :param scale: what ``"row_view"`` divides the provider's rows by (the trainer's ``s``; ``None``:
        nothing).
    :raises KeyError: for an unknown name (configs are validated earlier, see ``SimSkipConfig``).
    :raises ConfigError: for ``"row_view"`` without a provider (naming the fix), a provider that is
        not callable, or a provider given while ``names`` lacks ``"row_view"``.
    """
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise KeyError(f"unknown augmentation(s) {unknown}; known: {sorted(AUGMENTATIONS)}")
    if ROW_VIEW in names and row_view is None:
        raise ConfigError(_MISSING_PROVIDER)
    if row_view is not None:
        if ROW_VIEW not in names:
            raise ConfigError(
                f"a row-view provider was given, but config key 'augmentations' ({list(names)}) does not name "
                f"{ROW_VIEW!r}: add it first in the list (e.g. {ROW_VIEW},gaussian_noise,feature_mask) or pass no provider"
            )
        if not callable(row_view):
            raise ConfigError(f"row_view must be a callable (index, generator) -> rows, got {type(row_view).__name__}")
    steps = [AUGMENTATIONS[name](mask_prob, noise_std, feature_std) for name in names]
    for step in steps:
        if isinstance(step, RowView):
            step.provider, step.scale = row_view, scale
    return ComposedAugmentation(steps)
