"""scripts/row_geometry.py against a small reference computation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def geometry():
    return load_script("row_geometry")


def test_a_uniform_rescaling_keeps_direction(geometry) -> None:
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    g = geometry.row_geometry(x, 3.0 * x)
    assert g["rows"] == 50
    assert g["norm_ratio"] == pytest.approx(3.0)
    assert g["cosine"] == pytest.approx(1.0)
    assert g["displacement"] == pytest.approx(2.0)
    assert g["norm_correlation"] == pytest.approx(1.0)


def test_against_a_row_by_row_reference(geometry) -> None:
    rng = np.random.default_rng(1)
    x, r = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    g = geometry.row_geometry(x, r)
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(x, r, strict=True)]
    assert g["cosine"] == pytest.approx(np.mean(cos))
    assert g["displacement"] == pytest.approx(
        np.mean([np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(x, r, strict=True)])
    )
    assert g["norm_quantiles"]["refined"]["0.5"] == pytest.approx(np.median(np.linalg.norm(r, axis=1)))


def test_mismatched_shapes_are_named(geometry) -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\) against unrefined rows of shape \(3, 5\)"):
        geometry.row_geometry(np.ones((3, 5)), np.ones((3, 4)))
