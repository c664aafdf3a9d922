"""Scale-aware SimSkip: standardized units make refinement equivariant to rescaling the input.

``standardize=True`` (the default): ``g`` sees ``x / s`` with ``s = sqrt(mean(X**2))`` fixed per
trainer, and the output is ``x + s * g(x / s)``, so ``refine(c * X) == c * refine(X)``.
``standardize=False`` is the former behaviour, kept as a regression guard: there how far rows
move depends strongly on their absolute size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core import (
    ConfigError,
    EmbeddingInputError,
    SimSkipConfig,
    SimSkipTrainer,
    mean_relative_displacement,
    refine,
)

CONFIG = SimSkipConfig(epochs=3, batch_size=128, device="cpu")
SCALES = (0.01, 1.0, 100.0)
# Measured: max |refine(cX) - c refine(X)| / max |c refine(X)| is ~1e-7 at c = 0.01 and 100
# (0 at c = 1); the mean relative displacements agree to ~1e-7 relative.
OUTPUT_RTOL = 1e-5
DISPLACEMENT_RTOL = 1e-3


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def refined(X) -> np.ndarray:
    return refine(X, CONFIG)


def rel_max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("c", SCALES)
def test_refine_is_equivariant_to_the_scale_of_the_input(X, refined, c) -> None:
    cX = (c * X).astype(np.float32)
    out = refine(cX, CONFIG)
    assert rel_max_error(out, c * refined) < OUTPUT_RTOL
    # The refinement itself (not only the output, dominated by x) scales with c.
    assert rel_max_error(out - cX, c * (refined - X)) < 1e-3
    expected = mean_relative_displacement(X, refined)
    assert expected > 1e-3  # the rows did move
    assert mean_relative_displacement(cX, out) == pytest.approx(expected, rel=DISPLACEMENT_RTOL)


def test_without_standardize_displacement_depends_on_scale(X) -> None:
    """The former behaviour (regression guard): LayerNorm in g fixes |g(x)| in absolute units,
    so small rows move many times their length and large rows hardly move (measured here:
    1.5 at c = 0.01, 0.016 at c = 1, 0.00016 at c = 100)."""
    config = CONFIG.replace(standardize=False)
    moved = [mean_relative_displacement(c * X, refine((c * X).astype(np.float32), config)) for c in SCALES]
    assert moved[0] > 10 * moved[1] > 100 * moved[2]
    assert moved[0] > 0.5  # small rows move by a good part of their own length


def test_unit_scale_reproduces_the_unstandardized_path_bit_for_bit(X) -> None:
    """x / 1 and x + 1 * g(x / 1) are exact, so scale=1 must equal standardize=False exactly:
    a check that the standardized path adds nothing but the scaling."""
    plain = SimSkipTrainer(16, CONFIG.replace(standardize=False))
    unit = SimSkipTrainer(16, CONFIG, scale=1.0)
    assert plain.scale is None and unit.scale == 1.0
    assert plain.fit(X) == unit.fit(X)
    np.testing.assert_array_equal(plain.transform(X), unit.transform(X))
    with torch.no_grad():  # standardize=False is still f(x) = x + g(x) on the raw values
        np.testing.assert_array_equal(plain.transform(X), plain.encoder.eval()(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize("c", [1e-4, 1e4])
def test_identity_at_init_at_tiny_and_large_scales(X, c) -> None:
    cX = (c * X).astype(np.float32)
    np.testing.assert_array_equal(refine(cX, CONFIG.replace(epochs=0)), cX)
    np.testing.assert_array_equal(SimSkipTrainer(16, CONFIG).transform(cX), cX)


def test_scale_is_the_root_mean_square_and_is_fixed_by_the_first_fit(X) -> None:
    trainer = SimSkipTrainer(16, CONFIG)
    assert trainer.scale is None
    trainer.fit(X, epochs=1)
    assert isinstance(trainer.scale, float)
    assert trainer.scale == pytest.approx(float(np.sqrt(np.mean(X.astype(np.float64) ** 2))), rel=1e-12)
    first = trainer.scale
    trainer.fit(2 * X, epochs=1)
    trainer.transform(3 * X)
    assert trainer.scale == first


def test_k_plus_k_epochs_equals_2k_epochs_with_standardize(X) -> None:
    once, twice = SimSkipTrainer(16, CONFIG), SimSkipTrainer(16, CONFIG)
    losses = once.fit(X, epochs=4)
    assert twice.fit(X, epochs=2) + twice.fit(X, epochs=2) == losses
    assert once.scale == twice.scale
    np.testing.assert_array_equal(once.transform(X), twice.transform(X))


def test_first_transform_fixes_the_scale_for_a_weights_only_trainer(X) -> None:
    """A federated client that only received weights derives the same scale from the same rows."""
    source = SimSkipTrainer(16, CONFIG)
    source.fit(X)
    client = SimSkipTrainer(16, CONFIG.replace(seed=7))
    client.set_weights(source.get_weights())
    assert client.scale is None
    np.testing.assert_array_equal(client.transform(X), source.transform(X))
    assert client.scale == source.scale
    # The scale is not part of the weights: the names are exactly the module parameters.
    names = [name for name, _ in source.get_weights()]
    assert names == [f"encoder.{k}" for k in source.encoder.state_dict()] + [
        f"head.{k}" for k in source.head.state_dict()
    ]


def test_explicit_scale_is_used_and_validated(X) -> None:
    trainer = SimSkipTrainer(16, CONFIG, scale=2.5)
    trainer.fit(X, epochs=1)
    assert trainer.scale == 2.5
    # Same explicit scale for a rescaled input of the same trainer state: x + s g(x / s).
    other = SimSkipTrainer(16, CONFIG)
    other.scale = 2.5
    other.fit(X, epochs=1)
    np.testing.assert_array_equal(other.transform(X), trainer.transform(X))
    trainer.scale = None  # the next call derives it again
    trainer.transform(X)
    assert trainer.scale == pytest.approx(float(np.sqrt(np.mean(X.astype(np.float64) ** 2))))
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ConfigError, match="scale"):
            SimSkipTrainer(16, CONFIG, scale=bad)
    with pytest.raises(ConfigError, match="standardize"):
        SimSkipTrainer(16, CONFIG.replace(standardize=False), scale=1.0)


def test_all_zero_matrix_cannot_be_standardized() -> None:
    zeros = np.zeros((8, 4), np.float32)
    with pytest.raises(EmbeddingInputError, match="root mean square"):
        SimSkipTrainer(4, CONFIG).fit(zeros)
    with pytest.raises(EmbeddingInputError, match="root mean square"):
        SimSkipTrainer(4, CONFIG).transform(zeros)
    # Without standardizing, or with an explicit scale, zeros are fine (and stay zero at init).
    np.testing.assert_array_equal(SimSkipTrainer(4, CONFIG, scale=1.0).transform(zeros), zeros)
    assert SimSkipTrainer(4, CONFIG.replace(standardize=False)).fit(zeros, epochs=1)


def test_complex_input_is_standardized_through_its_real_pairs() -> None:
    rng = np.random.default_rng(3)
    Z = (rng.standard_normal((200, 6)) + 1j * rng.standard_normal((200, 6))).astype(np.complex64)
    base = refine(Z, CONFIG)
    for c in (0.01, 100.0):
        cZ = (c * Z).astype(np.complex64)
        out = refine(cZ, CONFIG)
        assert np.iscomplexobj(out) and out.shape == Z.shape
        assert rel_max_error(out, c * base) < OUTPUT_RTOL
        assert mean_relative_displacement(cZ, out) == pytest.approx(
            mean_relative_displacement(Z, base), rel=DISPLACEMENT_RTOL
        )
    trainer = SimSkipTrainer(12, CONFIG)
    np.testing.assert_array_equal(trainer.transform(Z), Z)  # identity at init
    # The RMS over real pairs: sqrt(mean |z|^2 / 2).
    assert trainer.scale == pytest.approx(float(np.sqrt(np.mean(np.abs(Z.astype(np.complex128)) ** 2) / 2)), rel=1e-10)


def test_standardize_is_a_config_key() -> None:
    assert SimSkipConfig().standardize is True
    assert SimSkipConfig().with_overrides(["standardize=false"]).standardize is False
    assert SimSkipConfig.from_dict({"standardize": False}).to_dict()["standardize"] is False
    with pytest.raises(ConfigError, match="'standardize': expected bool"):
        SimSkipConfig.from_dict({"standardize": 1})
