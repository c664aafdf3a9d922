"""SimSkipTrainer / refine: identity at init, ablation, determinism, weights, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simskip_core import (
    ConfigError,
    EmbeddingInputError,
    SimSkipConfig,
    SimSkipTrainer,
    TrainingDivergedError,
    WeightsMismatchError,
    refine,
)

FAST = {"epochs": 3, "batch_size": 32, "device": "cpu"}


@pytest.fixture()
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((120, 12)) * 5 + 2).astype(np.float32)


def test_identity_before_training_with_skip(X) -> None:
    np.testing.assert_allclose(refine(X, {**FAST, "epochs": 0}), X, rtol=0, atol=1e-6)
    np.testing.assert_allclose(SimSkipTrainer(12, FAST).transform(X), X, rtol=0, atol=1e-6)


def test_not_identity_without_skip(X) -> None:
    out = refine(X, {**FAST, "epochs": 0, "skip": False})
    assert out.shape == X.shape
    assert np.abs(out - X).max() > 0.1


def test_training_moves_embeddings_and_keeps_shape_and_dtype(X) -> None:
    out = refine(X.astype(np.float64), FAST)
    assert out.shape == X.shape and out.dtype == np.float64
    assert np.abs(out - X).max() > 1e-4


def test_complex_input_refined_through_its_real_view() -> None:
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((40, 5)) + 1j * rng.standard_normal((40, 5))
    trainer = SimSkipTrainer(10, FAST)
    np.testing.assert_allclose(trainer.transform(Z), Z, atol=1e-6)  # identity at init
    trainer.fit(Z)
    out = trainer.transform(Z)
    assert out.shape == Z.shape and np.iscomplexobj(out)
    assert not np.allclose(out, Z, atol=1e-5)


def test_same_seed_same_weights_different_seed_different(X) -> None:
    def trained(seed: int) -> list[tuple[str, np.ndarray]]:
        trainer = SimSkipTrainer(12, {**FAST, "seed": seed})
        trainer.fit(X)
        return trainer.get_weights()

    a, b, c = trained(5), trained(5), trained(6)
    assert all(np.array_equal(wa, wb) for (_, wa), (_, wb) in zip(a, b))
    assert not all(np.array_equal(wa, wc) for (_, wa), (_, wc) in zip(a, c))


def test_k_plus_k_epochs_equals_2k_epochs(X) -> None:
    once = SimSkipTrainer(12, FAST)
    losses_once = once.fit(X, epochs=4)
    twice = SimSkipTrainer(12, FAST)
    losses_twice = twice.fit(X, epochs=2) + twice.fit(X, epochs=2)
    assert losses_once == losses_twice
    assert twice.history == losses_once
    for (name_a, wa), (name_b, wb) in zip(once.get_weights(), twice.get_weights()):
        assert name_a == name_b
        np.testing.assert_array_equal(wa, wb)


def test_fit_does_not_touch_the_global_rng(X) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SimSkipTrainer(12, FAST).fit(X, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_transform_is_row_independent(X) -> None:
    """LayerNorm: a row's refinement does not depend on the batch it is transformed in."""
    trainer = SimSkipTrainer(12, {**FAST, "transform_batch_size": 7})
    trainer.fit(X)
    batched = trainer.transform(X)
    singles = np.concatenate([trainer.transform(X[i : i + 1]) for i in range(0, 120, 13)])
    np.testing.assert_allclose(batched[::13], singles, rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_structured_data() -> None:
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((5, 16)) * 3
    X = centers[rng.integers(0, 5, 300)] + rng.standard_normal((300, 16))
    losses = SimSkipTrainer(16, {**FAST, "epochs": 15, "batch_size": 64}).fit(X)
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------ weights
def test_weights_export_import_round_trip(X) -> None:
    source = SimSkipTrainer(12, FAST)
    source.fit(X)
    weights = source.get_weights()
    names = [name for name, _ in weights]
    assert names[0].startswith("encoder.") and names[-1].startswith("head.")
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for _, a in weights)
    target = SimSkipTrainer(12, {**FAST, "seed": 99})
    assert not np.allclose(target.transform(X), source.transform(X))
    target.set_weights(weights)
    np.testing.assert_array_equal(target.transform(X), source.transform(X))
    # Exported arrays are copies: mutating them leaves the trainer alone.
    weights[0][1][...] = 0
    np.testing.assert_array_equal(target.transform(X), source.transform(X))


def test_continue_from_given_weights_like_a_federated_round(X) -> None:
    """Two rounds: weights out, weights in, k more epochs each time."""
    server = SimSkipTrainer(12, FAST)
    client = SimSkipTrainer(12, {**FAST, "seed": 1})
    client.set_weights(server.get_weights())
    client.reset_optimizer()
    losses = client.fit(X, epochs=2)
    assert len(losses) == 2 and client.history == losses
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(client.get_weights(), server.get_weights()))


def _mutate(weights, index, *, name=None, array=None):
    weights = list(weights)
    old_name, old_array = weights[index]
    weights[index] = (name or old_name, old_array if array is None else array)
    return weights


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda w: _mutate(w, 1, name="encoder.g.0.bogus"), "named 'encoder.g.0.bogus', expected 'encoder.g.0.bias'"),
        (lambda w: _mutate(w, 0, array=np.zeros((3, 3), np.float32)), "shape"),
        (lambda w: _mutate(w, 0, array=w[0][1].astype(np.float64)), "dtype float64"),
        (lambda w: _mutate(w, 0, array=np.full_like(w[0][1], np.nan)), "NaN"),
        (lambda w: _mutate(w, 0, array=w[0][1].tolist()), "numpy array"),
        (lambda w: w[:-1], "missing \\['head.mlp.3.bias'\\]"),
        (lambda w: [w[1], w[0], *w[2:]], "entry 0"),
        (dict, "ordered list"),
        (lambda w: [np.zeros(3)] + w[1:], "not a \\(name, array\\) pair"),
    ],
)
def test_set_weights_rejects_mismatches_and_changes_nothing(X, make_bad, message) -> None:
    trainer = SimSkipTrainer(12, FAST)
    before = trainer.get_weights()
    with pytest.raises(WeightsMismatchError, match=message):
        trainer.set_weights(make_bad(SimSkipTrainer(12, {**FAST, "seed": 3}).get_weights()))
    for (_, a), (_, b) in zip(before, trainer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_of_another_width_are_rejected() -> None:
    with pytest.raises(WeightsMismatchError, match="shape"):
        SimSkipTrainer(12, FAST).set_weights(SimSkipTrainer(10, FAST).get_weights())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            np.array([[1.0, 2.0], [np.nan, 0.0], [1.0, np.inf]]),
            r"2 row\(s\) with NaN or Inf values \(0-based rows: 1, 2\)",
        ),
        (np.arange(5.0), "2-D matrix n x d, got shape \\(5,\\)"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((4, 0)), "empty"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.array([["a", "b"], ["c", "d"]]), "numbers"),
    ],
)
def test_refine_rejects_bad_matrices(bad, message) -> None:
    with pytest.raises(EmbeddingInputError, match=message):
        refine(bad, FAST)


def test_fit_rejects_wrong_width_and_single_row(X) -> None:
    trainer = SimSkipTrainer(12, FAST)
    with pytest.raises(EmbeddingInputError, match="11 columns.*built for 12"):
        trainer.fit(X[:, :11])
    with pytest.raises(EmbeddingInputError, match="at least 2 rows"):
        trainer.fit(X[:1])
    with pytest.raises(EmbeddingInputError, match="11 columns"):
        trainer.transform(X[:, :11])


def test_diverging_loss_raises_with_losses_so_far(X) -> None:
    trainer = SimSkipTrainer(12, FAST)
    trainer.fit(X, epochs=1)
    with torch.no_grad():
        trainer.head.mlp[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="epoch 2") as info:
        trainer.fit(X, epochs=2)
    assert info.value.losses == []
    assert len(trainer.history) == 1


def test_bad_config_and_epochs() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        SimSkipTrainer(4, {"epoch": 3})
    with pytest.raises(ConfigError, match="epochs"):
        SimSkipTrainer(4, FAST).fit(np.ones((4, 4)), epochs=-1)
    with pytest.raises(EmbeddingInputError, match="dim"):
        SimSkipTrainer(0, FAST)
    assert isinstance(SimSkipTrainer(4, SimSkipConfig(device="cpu")).config, SimSkipConfig)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_matches_the_cpu_api(X) -> None:
    trainer = SimSkipTrainer(12, {**FAST, "device": "auto"})
    assert trainer.device.type == "cuda"
    np.testing.assert_allclose(trainer.transform(X), X, atol=1e-6)
    again = SimSkipTrainer(12, {**FAST, "device": "cuda"})
    assert trainer.fit(X) == again.fit(X)  # seeded generators on the device: reproducible
    weights = trainer.get_weights()
    assert all(isinstance(a, np.ndarray) for _, a in weights)
    cpu = SimSkipTrainer(12, FAST)
    cpu.set_weights(weights)
    np.testing.assert_allclose(cpu.transform(X), trainer.transform(X), rtol=1e-4, atol=1e-4)
