"""Displacement metric and the perturbed control (simskip_core.controls)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simskip_core import (
    EmbeddingInputError,
    SimSkipConfig,
    mean_relative_displacement,
    perturb_like,
    refine,
    relative_displacement,
)

# lr 1e-2: rows move ~10% of their length, far above float32 rounding of the perturbed rows.
CONFIG = SimSkipConfig(epochs=3, batch_size=64, lr=1e-2, device="cpu")


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def Y(X) -> np.ndarray:
    return refine(X, CONFIG)


@pytest.fixture(scope="module")
def Z() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((150, 5)) + 1j * rng.standard_normal((150, 5))).astype(np.complex64)


@pytest.fixture(scope="module")
def Z_refined(Z) -> np.ndarray:
    return refine(Z, CONFIG)


def reference(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Plain numpy: sqrt(sum |y - x|^2) / sqrt(sum |x|^2) per row, in float64/complex128."""
    x, y = X.astype(np.complex128), Y.astype(np.complex128)
    return np.sqrt((np.abs(y - x) ** 2).sum(axis=1)) / np.sqrt((np.abs(x) ** 2).sum(axis=1))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def real_pairs(A: np.ndarray) -> np.ndarray:
    return A.astype(np.complex128).view(np.float64).reshape(A.shape[0], -1)


# ------------------------------------------------------------------ relative_displacement
def test_relative_displacement_matches_numpy(X, Y) -> None:
    got = relative_displacement(X, Y)
    assert got.shape == (200,) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference(X, Y), rtol=1e-12)
    assert 0.01 < got.mean() < 1.0  # the refinement moved the rows, by less than their length
    assert mean_relative_displacement(X, Y) == pytest.approx(float(reference(X, Y).mean()), rel=1e-12)
    # float64 inputs are not rounded to float32 first
    x64 = np.array([[1.0, 0.0]]), np.array([[1.0 + 1e-12, 0.0]])
    assert relative_displacement(*x64)[0] == pytest.approx(1e-12, rel=1e-3)


def test_relative_displacement_of_complex_rows(Z, Z_refined) -> None:
    np.testing.assert_allclose(relative_displacement(Z, Z_refined), reference(Z, Z_refined), rtol=1e-10)
    # |z| counts: a purely imaginary move of 1j on a row of norm 2 is 0.5.
    assert relative_displacement(np.array([[2.0 + 0j]]), np.array([[2.0 + 1j]]))[0] == pytest.approx(0.5)


def test_zero_rows_give_inf_when_moved_and_zero_when_not() -> None:
    X = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    Y = np.array([[0.0, 1.0], [0.0, 0.0], [3.0, 4.5]])
    np.testing.assert_array_equal(relative_displacement(X, Y), [np.inf, 0.0, 0.1])
    assert mean_relative_displacement(X, Y) == pytest.approx(0.05)  # mean over the finite rows
    assert math.isnan(mean_relative_displacement(X[:1], Y[:1]))


def test_shape_mismatch_names_both_shapes(X, Y) -> None:
    with pytest.raises(EmbeddingInputError, match=r"X \(200, 16\) and Y \(200, 15\)"):
        relative_displacement(X, Y[:, :15])
    with pytest.raises(EmbeddingInputError, match=r"X \(200, 16\) and Y \(199, 16\)"):
        perturb_like(X, Y[:199], seed=0)
    with pytest.raises(EmbeddingInputError, match="NaN or Inf"):
        mean_relative_displacement(X, np.full_like(Y, np.nan))


# ------------------------------------------------------------------ perturb_like
def test_perturbed_rows_move_as_far_in_other_directions(X, Y) -> None:
    P = perturb_like(X, Y, seed=0)
    assert P.shape == X.shape and P.dtype == np.float32
    np.testing.assert_allclose(relative_displacement(X, P), relative_displacement(X, Y), rtol=1e-5)
    # Random directions in 16-D: nearly orthogonal to the refinement's, never aligned with it.
    cos = cosines(P.astype(np.float64) - X, Y.astype(np.float64) - X)
    assert np.abs(cos).max() < 0.95 and np.abs(cos).mean() < 0.4
    # ... and not aligned with one another either (each row its own direction).
    unit = (P.astype(np.float64) - X) / np.linalg.norm(P.astype(np.float64) - X, axis=1, keepdims=True)
    assert np.linalg.norm(unit.mean(axis=0)) < 0.3


def test_perturb_like_is_deterministic_per_seed(X, Y) -> None:
    np.testing.assert_array_equal(perturb_like(X, Y, seed=3), perturb_like(X, Y, seed=3))
    assert not np.allclose(perturb_like(X, Y, seed=3), perturb_like(X, Y, seed=4))
    # The directions are normalized standard Gaussian draws of numpy's Generator(seed).
    u = np.random.default_rng(3).standard_normal(X.shape)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    expected = X + np.linalg.norm(Y.astype(np.float64) - X, axis=1, keepdims=True) * u
    np.testing.assert_allclose(perturb_like(X.astype(np.float64), Y.astype(np.float64), seed=3), expected, rtol=1e-12)


def test_perturb_like_complex(Z, Z_refined) -> None:
    P = perturb_like(Z, Z_refined, seed=0)
    assert P.shape == Z.shape and P.dtype == np.complex64
    np.testing.assert_allclose(relative_displacement(Z, P), relative_displacement(Z, Z_refined), rtol=1e-5)
    moved = real_pairs(P) - real_pairs(Z)
    refined = real_pairs(Z_refined) - real_pairs(Z)
    assert np.abs(cosines(moved, refined)).mean() < 0.5
    # The imaginary parts are perturbed too: the direction lives in the real-pair space.
    assert np.abs(P.imag - Z.imag).max() > 1e-3
    np.testing.assert_array_equal(perturb_like(Z, Z_refined, seed=0), P)
    assert not np.allclose(perturb_like(Z, Z_refined, seed=1), P)


def test_rows_the_refinement_left_alone_stay(X) -> None:
    Y = X.copy()
    Y[0] += 1.0
    P = perturb_like(X, Y, seed=0)
    np.testing.assert_array_equal(P[1:], X[1:])
    assert np.linalg.norm(P[0].astype(np.float64) - X[0]) == pytest.approx(4.0, rel=1e-6)
