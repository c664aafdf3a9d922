"""Checks and conversions of embedding matrices at the boundary of :mod:`simskip_core`.

Any ``n x d`` real matrix (NumPy array, torch tensor, or nested lists) is accepted; a complex
``n x d`` matrix is used through its real view, ``n x 2d`` columns ordered
``re_0, im_0, re_1, im_1, ...`` (``torch.view_as_real``), and converted back on output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import EmbeddingInputError

__all__ = ["PreparedEmbeddings", "check_matrix", "prepare_embeddings", "restore_embeddings"]

_MAX_LISTED_ROWS = 10


@dataclass(frozen=True)
class PreparedEmbeddings:
    """A validated matrix ready for the encoder.

    :param values: float32 CPU tensor, shape ``(n, d)`` (``d = 2 * d_complex`` for complex input).
    :param is_complex: the input was complex.
    :param dtype: NumPy dtype of the input, restored on output (float32 for integer input).
    """

    values: torch.Tensor
    is_complex: bool
    dtype: np.dtype


def _as_numpy(X: Any, name: str) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().resolve_conj().numpy()
    try:
        return np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise EmbeddingInputError(f"{name} cannot be read as a numeric matrix: {exc}") from exc


def check_matrix(X: Any, *, name: str = "X") -> np.ndarray:
    """Validate ``X`` as an ``n x d`` numeric matrix and return it as a NumPy array (not copied when possible).

    :param X: shape ``(n, d)``, real or complex, ``n >= 1``, ``d >= 1``, all values finite.
    :param name: how error messages call the matrix.
    :raises EmbeddingInputError: for wrong rank, empty input, non-numeric dtype, or NaN/Inf rows
        (their indices are listed).
    """
    array = _as_numpy(X, name)
    if array.dtype.kind not in "fiuc":
        raise EmbeddingInputError(f"{name} must hold real or complex numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        hint = (
            " (for a single feature use X.reshape(-1, 1), for a single row X.reshape(1, -1))" if array.ndim == 1 else ""
        )
        raise EmbeddingInputError(f"{name} must be a 2-D matrix n x d, got shape {array.shape}{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise EmbeddingInputError(f"{name} is empty: shape {array.shape}, need at least one row and one column")
    finite_rows = np.isfinite(array).all(axis=1)
    if not finite_rows.all():
        bad = np.flatnonzero(~finite_rows)
        listed = ", ".join(str(i) for i in bad[:_MAX_LISTED_ROWS]) + (", ..." if bad.size > _MAX_LISTED_ROWS else "")
        raise EmbeddingInputError(f"{name} has {bad.size} row(s) with NaN or Inf values (0-based rows: {listed})")
    return array


def prepare_embeddings(X: Any, *, name: str = "X", expected_dim: int | None = None) -> PreparedEmbeddings:
    """Validate ``X`` (see :func:`check_matrix`) and return it as a float32 tensor of real columns.

    :param X: shape ``(n, d)``, real or complex, ``n >= 1``, ``d >= 1``, all values finite.
    :param name: how error messages call the matrix.
    :param expected_dim: required number of real columns (``2d`` for complex input), if any.
    :raises EmbeddingInputError: for wrong rank, empty input, non-numeric dtype, NaN/Inf rows
        (their indices are listed), or a width other than ``expected_dim``.
    """
    array = check_matrix(X, name=name)
    is_complex = array.dtype.kind == "c"
    if is_complex:
        values = torch.view_as_real(torch.from_numpy(np.ascontiguousarray(array, dtype=np.complex64))).reshape(
            array.shape[0], -1
        )
        dtype = array.dtype
    else:
        values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        dtype = array.dtype if array.dtype.kind == "f" else np.dtype(np.float32)
    if expected_dim is not None and values.shape[1] != expected_dim:
        kind = f" (complex width {array.shape[1]} -> {values.shape[1]} real columns)" if is_complex else ""
        raise EmbeddingInputError(
            f"{name} has {values.shape[1]} columns{kind}, but the encoder was built for {expected_dim}"
        )
    return PreparedEmbeddings(values=values, is_complex=is_complex, dtype=dtype)


def restore_embeddings(values: np.ndarray, prepared: PreparedEmbeddings) -> np.ndarray:
    """Give encoder output the input's kind back.

    :param values: float32, shape ``(n, d)`` real columns.
    :param prepared: what :func:`prepare_embeddings` returned for the input.
    :return: shape ``(n, d)`` in the input's float dtype, or ``(n, d // 2)`` complex for complex input.
    """
    if prepared.is_complex:
        pairs = np.ascontiguousarray(values, dtype=np.float32).reshape(values.shape[0], -1, 2)
        return (pairs[..., 0] + 1j * pairs[..., 1]).astype(prepared.dtype)
    return values.astype(prepared.dtype, copy=False)
