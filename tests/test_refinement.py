"""SimSkip phase: config keys, FedAvg of named weights, client rounds and the in-process driver."""

from __future__ import annotations

import numpy as np
import pytest

from client.kge.refinement import (
    NO_SKIP_VARIANT,
    REFINED_VARIANT,
    REFINEMENT_KEYS,
    RefinementConfig,
    RefinementConfigError,
    RefinementInputError,
    fit_round,
    initial_weights,
    pack_variants,
    run_refinement,
    transform_rows,
    unpack_variants,
)
from client.kge.weights import WeightsAggregationError, fedavg_named

TINY = {"simskip-batch-size": 16, "simskip-hidden-dim": 8, "simskip-projection-dim": 4, "simskip-device": "cpu"}


def rows(n: int, dim: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# --- FedAvg ---------------------------------------------------------------------------------------


def test_fedavg_weights_by_number_of_embeddings() -> None:
    a = [("w", np.array([[1.0, 2.0]], dtype=np.float32)), ("b", np.array([0.0], dtype=np.float32))]
    b = [("w", np.array([[4.0, 8.0]], dtype=np.float32)), ("b", np.array([3.0], dtype=np.float32))]
    averaged = fedavg_named([(a, 1), (b, 2)])  # (1*x_a + 2*x_b) / 3
    assert [name for name, _ in averaged] == ["w", "b"]
    np.testing.assert_allclose(averaged[0][1], [[3.0, 6.0]])
    np.testing.assert_allclose(averaged[1][1], [2.0])
    assert averaged[0][1].dtype == np.float32
    # equal counts -> plain mean; a single update -> itself
    np.testing.assert_allclose(fedavg_named([(a, 5), (b, 5)])[0][1], [[2.5, 5.0]])
    np.testing.assert_array_equal(fedavg_named([(b, 7)])[1][1], b[1][1])


@pytest.mark.parametrize(
    ("other", "count", "match"),
    [
        ([("w", np.zeros((1, 2), np.float32))], 1, "1 weight arrays"),
        ([("x", np.zeros((1, 2), np.float32)), ("b", np.zeros(1, np.float32))], 1, "'x'"),
        ([("w", np.zeros((2, 2), np.float32)), ("b", np.zeros(1, np.float32))], 1, "shape"),
        ([("w", np.full((1, 2), np.nan, np.float32)), ("b", np.zeros(1, np.float32))], 1, "NaN"),
        ([("w", np.zeros((1, 2), np.float32)), ("b", np.zeros(1, np.float32))], 0, "> 0"),
    ],
)
def test_fedavg_rejects_mismatched_updates(other, count, match) -> None:
    a = [("w", np.ones((1, 2), np.float32)), ("b", np.ones(1, np.float32))]
    with pytest.raises(WeightsAggregationError, match=match):
        fedavg_named([(a, 1), (other, count)])
    with pytest.raises(WeightsAggregationError, match="no updates"):
        fedavg_named([])


# --- config ---------------------------------------------------------------------------------------


def test_config_reads_phase_keys_and_simskip_passthrough() -> None:
    config = RefinementConfig.from_run_config(
        {
            "model": "TransE",  # other owners' keys are ignored here
            "simskip-rounds": 3,
            "simskip-local-epochs": 2,
            "simskip-federate": False,
            "simskip-no-skip-ablation": True,
            "refit-epochs": 7,
            "simskip-lr": 0.01,
            "simskip-batch-size": 64,
            "simskip-hidden-dim": "none",
            "simskip-augmentations": "feature_mask",
            "simskip-temperature": 1,
        }
    )
    assert (config.rounds, config.local_epochs, config.federate, config.no_skip_ablation, config.refit_epochs) == (
        3,
        2,
        False,
        True,
        7,
    )
    assert config.simskip.lr == 0.01 and config.simskip.batch_size == 64 and config.simskip.hidden_dim is None
    assert config.simskip.augmentations == ("feature_mask",) and config.simskip.temperature == 1.0
    assert list(config.variants()) == [REFINED_VARIANT, NO_SKIP_VARIANT]
    assert config.variants()[NO_SKIP_VARIANT].skip is False
    # round trip through the kebab-case form
    assert RefinementConfig.from_run_config(config.to_run_config()) == config
    # simskip-skip = false makes the main variant the no-skip one
    assert list(RefinementConfig.from_run_config({"simskip-skip": False}).variants()) == [NO_SKIP_VARIANT]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"simskip-learning-rate": 0.1}, "simskip-learning-rate"),
        ({"refit-epoch": 3}, "refit-epoch"),
        ({"simskip-epochs": 3}, "simskip-epochs"),  # epochs = rounds x local epochs
        ({"simskip-lr": "fast"}, "lr"),
        ({"simskip-rounds": -1}, "simskip-rounds"),
        ({"simskip-federate": "yes"}, "simskip-federate"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(values, match) -> None:
    with pytest.raises(RefinementConfigError, match=match):
        RefinementConfig.from_run_config(values)


def test_default_keys_are_all_known() -> None:
    assert RefinementConfig.from_run_config(REFINEMENT_KEYS) == RefinementConfig()
    assert {"simskip-rounds", "simskip-local-epochs", "simskip-federate", "simskip-skip", "refit-epochs"} <= set(
        REFINEMENT_KEYS
    )


# --- client round and driver ----------------------------------------------------------------------


def test_pack_unpack_round_trip_and_errors() -> None:
    weights = {REFINED_VARIANT: [("a.w", np.ones(2))], NO_SKIP_VARIANT: [("a.w", np.zeros(2))]}
    flat = pack_variants(weights)
    assert [name for name, _ in flat] == ["refined/a.w", "refined-no-skip/a.w"]
    assert unpack_variants(flat, [REFINED_VARIANT, NO_SKIP_VARIANT]).keys() == weights.keys()
    with pytest.raises(RefinementInputError, match="variant"):
        unpack_variants(flat, [REFINED_VARIANT])
    with pytest.raises(RefinementInputError, match="refined-no-skip"):
        unpack_variants(flat[:1], [REFINED_VARIANT, NO_SKIP_VARIANT])


def test_fit_round_is_deterministic_and_trains() -> None:
    config = RefinementConfig.from_run_config({**TINY, "simskip-local-epochs": 2})
    start = initial_weights(6, config)
    x = rows(40)
    first = fit_round(x, start, config, client_id="0", server_round=1)
    again = fit_round(x, start, config, client_id="0", server_round=1)
    other_round = fit_round(x, start, config, client_id="0", server_round=2)
    assert first.num_rows == 40 and len(first.losses[REFINED_VARIANT]) == 2
    for (_, a), (_, b) in zip(first.weights[REFINED_VARIANT], again.weights[REFINED_VARIANT], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, s)
        for (_, a), (_, s) in zip(first.weights[REFINED_VARIANT], start[REFINED_VARIANT], strict=True)
    )
    assert first.losses != other_round.losses  # another round draws other views


def test_bad_rows_fail_naming_the_client() -> None:
    config = RefinementConfig.from_run_config(TINY)
    start = initial_weights(6, config)
    bad = rows(10)
    bad[3, 1] = np.inf
    with pytest.raises(RefinementInputError, match=r"client 7: entity row\(s\) \[3\]"):
        fit_round(bad, start, config, client_id=7, server_round=1)
    with pytest.raises(RefinementInputError, match="shape"):
        fit_round(rows(1), start, config, client_id=7, server_round=1)
    with pytest.raises(RefinementInputError, match="width"):
        run_refinement({"a": rows(10, 6), "b": rows(10, 4)}, config)


def test_federated_driver_equals_a_manual_fedavg_reference() -> None:
    """Two rounds of run_refinement == fit_round per client + hand-made weighted mean, twice."""
    config = RefinementConfig.from_run_config({**TINY, "simskip-rounds": 2, "simskip-local-epochs": 1})
    data = {"0": rows(30, seed=1), "1": rows(10, seed=2)}
    result = run_refinement(data, config)
    current = initial_weights(6, config)[REFINED_VARIANT]
    for server_round in (1, 2):
        updates = {
            name: fit_round(x, {REFINED_VARIANT: current}, config, client_id=name, server_round=server_round)
            for name, x in data.items()
        }
        current = [
            (name, (30 * a + 10 * b) / 40)
            for (name, a), (_, b) in zip(
                updates["0"].weights[REFINED_VARIANT], updates["1"].weights[REFINED_VARIANT], strict=True
            )
        ]
    for (_, got), (_, want) in zip(result.weights["0"][REFINED_VARIANT], current, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # every client ends with the same (global) encoder; refined rows keep the shape
    for (_, a), (_, b) in zip(result.weights["0"][REFINED_VARIANT], result.weights["1"][REFINED_VARIANT], strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.refined["1"][REFINED_VARIANT].shape == (10, 6)
    assert [h["round"] for h in result.history] == [1, 2]
    assert set(result.history[0]["simskip_loss"]) == {"0", "1"}


def test_local_only_keeps_clients_apart_and_no_skip_variant_runs() -> None:
    config = RefinementConfig.from_run_config(
        {
            **TINY,
            "simskip-rounds": 2,
            "simskip-local-epochs": 1,
            "simskip-federate": False,
            "simskip-no-skip-ablation": True,
        }
    )
    result = run_refinement({"0": rows(20, seed=1), "1": rows(20, seed=2)}, config)
    w0, w1 = result.weights["0"][REFINED_VARIANT], result.weights["1"][REFINED_VARIANT]
    assert any(not np.allclose(a, b) for (_, a), (_, b) in zip(w0, w1, strict=True))
    assert set(result.refined["0"]) == {REFINED_VARIANT, NO_SKIP_VARIANT}
    assert set(result.history[-1]["simskip_loss_overall"]) == {REFINED_VARIANT, NO_SKIP_VARIANT}


def test_transform_applies_the_given_weights() -> None:
    """The skip encoder starts as the identity (zero last layer), so untrained weights return the rows;
    trained weights move them."""
    config = RefinementConfig.from_run_config(TINY)
    start = initial_weights(6, config)
    x = rows(12)
    np.testing.assert_allclose(transform_rows(x, start, config)[REFINED_VARIANT], x, atol=1e-6)
    trained = fit_round(x, start, config, client_id=0, server_round=1).weights
    assert not np.allclose(transform_rows(x, trained, config)[REFINED_VARIANT], x, atol=1e-4)
