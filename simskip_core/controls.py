"""How far a refinement moved each row, and the matching random-perturbation control.

* :func:`relative_displacement` -- ``||y_i - x_i|| / ||x_i||`` per row, the size of a refinement
  in units of the rows it moved (:func:`mean_relative_displacement` averages it).
* :func:`perturb_like` -- the "perturbed" control: every row moved by exactly as much as the
  refinement moved it, but in a uniformly random direction. A downstream gain of the refined
  embeddings over the perturbed ones is due to *where* SimSkip moved the rows, not to how far.

Complex ``n x d`` matrices are handled through their real pairs (``n x 2d``, as everywhere in
:mod:`simskip_core`): a row's norm is ``sqrt(sum |z_j|^2)``. All arithmetic is float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import EmbeddingInputError
from .validation import check_matrix

__all__ = ["mean_relative_displacement", "perturb_like", "relative_displacement"]


def _pair(X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validated ``X`` (as given), and ``X``, ``Y`` as float64 real columns; complex if either is."""
    x = check_matrix(X, name="X")
    y = check_matrix(Y, name="Y")
    if x.shape != y.shape:
        raise EmbeddingInputError(f"X and Y must have the same shape, got X {x.shape} and Y {y.shape}")
    is_complex = x.dtype.kind == "c" or y.dtype.kind == "c"
    return x, _real_columns(x, is_complex), _real_columns(y, is_complex), is_complex


def _real_columns(array: np.ndarray, is_complex: bool) -> np.ndarray:
    """float64 ``(n, d)``, or ``(n, 2d)`` real pairs ``re_0, im_0, ...`` when ``is_complex``."""
    if is_complex:
        return np.ascontiguousarray(array, dtype=np.complex128).view(np.float64).reshape(array.shape[0], -1)
    return np.asarray(array, dtype=np.float64)


def relative_displacement(X: Any, Y: Any) -> np.ndarray:
    """Per-row relative displacement ``||y_i - x_i|| / ||x_i||``.

    :param X: the input rows, shape ``(n, d)``, real or complex, finite.
    :param Y: the moved rows (e.g. ``refine(X)``), same shape.
    :return: float64, shape ``(n,)``. A row with ``||x_i|| == 0`` gives ``inf`` if ``y_i != x_i``,
        else ``0``.
    :raises EmbeddingInputError: for a malformed matrix, or shapes that differ (both named).
    """
    _, x, y, _ = _pair(X, Y)
    moved = np.linalg.norm(y - x, axis=1)
    length = np.linalg.norm(x, axis=1)
    out = np.zeros_like(moved)
    nonzero = length > 0
    np.divide(moved, length, out=out, where=nonzero)
    out[~nonzero & (moved > 0)] = np.inf
    return out


def mean_relative_displacement(X: Any, Y: Any) -> float:
    """Mean of :func:`relative_displacement` over the rows where it is finite (``nan`` if none is)."""
    values = relative_displacement(X, Y)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def perturb_like(X: Any, Y: Any, seed: int | np.random.SeedSequence) -> np.ndarray:
    """The perturbed control of a refinement ``X -> Y``: each row moved as far, in a random direction.

    Row ``i`` becomes ``x_i + ||y_i - x_i|| * u_i`` with ``u_i`` a standard Gaussian vector
    normalized to length 1 (uniform on the sphere), drawn from ``numpy.random.default_rng(seed)``
    in the real-column space (real pairs for complex input). So
    ``relative_displacement(X, perturb_like(X, Y, s)) == relative_displacement(X, Y)`` up to the
    rounding of the output dtype.

    :param X: the input rows, shape ``(n, d)``, real or complex, finite.
    :param Y: the refined rows, same shape.
    :param seed: seed of the directions; the same seed gives the same output.
    :return: shape and dtype of ``X`` (float32 stays float32, complex stays complex; integer
        input gives float32; a real ``X`` with a complex ``Y`` gives complex rows).
    :raises EmbeddingInputError: for a malformed matrix, or shapes that differ (both named).
    """
    original, x, y, is_complex = _pair(X, Y)
    distance = np.linalg.norm(y - x, axis=1, keepdims=True)
    directions = np.random.default_rng(seed).standard_normal(x.shape)
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    directions = np.divide(directions, norms, out=np.zeros_like(directions), where=norms > 0)
    directions[norms[:, 0] == 0, 0] = 1.0  # a zero draw (probability 0): any unit vector will do
    moved = x + distance * directions
    if is_complex:
        moved = moved.view(np.complex128)  # (n, 2d) float64 pairs -> (n, d) complex128
    if original.dtype.kind in "fc":
        dtype = original.dtype
        if is_complex and dtype.kind == "f":  # real X, complex Y: the moved rows are complex
            dtype = np.result_type(dtype, np.complex64)
    else:
        dtype = np.dtype(np.complex64 if is_complex else np.float32)
    return moved.astype(dtype, copy=False)
