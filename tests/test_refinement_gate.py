"""The validation-gated skip strength of the ``refined-gated`` row (client/kge/refit.py).

Reference computations: the gate's per-alpha valid MRR equals the FedE model as trained
(``evaluate_as_trained``) ranked on hand-interpolated rows; its choice equals a hand-written
argmax with ties to the smaller alpha. One client of Nations over 2 clients: each ranking of
its valid split takes milliseconds, each re-fit about a second.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from client.kge.config import KGEConfig
from client.kge.refinement import (
    DEFAULT_GATE_GRID,
    REFINEMENT_KEYS,
    RefinementConfig,
    RefinementConfigError,
    parse_gate_grid,
)
from client.kge.refit import (
    GATED_ROW,
    SkipStrengthGateError,
    choose_skip_strength,
    evaluate_as_trained,
    evaluate_downstream,
    pick_skip_strength,
    refit_relations,
    skip_strength_rows,
)
from client.kge.training import LocalTrainer

GRID = (0.0, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def client():
    from kg_datasets import load_federated

    return load_federated("Nations", num_clients=2, seed=0).clients[0]


def small(**changes: object) -> KGEConfig:
    return KGEConfig(model="DistMult", embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=5e-2).replace(**changes)


@pytest.fixture(scope="module")
def trained(client):
    """(config, rows, relation_state) of a trained local model: well above random on valid
    (valid MRR ~0.63 against ~0.4 for rows drowned in noise, measured)."""
    config = small()
    trainer = LocalTrainer(client, config, device="cpu")
    trainer.train(20)
    relations = {k: v for k, v in trainer.get_private_state().items() if k.startswith("model/")}
    return config, trainer.get_entity_embeddings(), relations


def noisy(rows: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    return (rows + scale * np.random.default_rng(seed).standard_normal(rows.shape)).astype(np.float32)


# --- interpolation and choice ---------------------------------------------------------------------


def test_skip_strength_rows_endpoints_are_bit_identical_and_midpoints_interpolate() -> None:
    x = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    f = np.random.default_rng(2).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_array_equal(skip_strength_rows(x, f, 0.0), x)
    np.testing.assert_array_equal(skip_strength_rows(x, f, 1.0), f)
    assert skip_strength_rows(x, f, 0.0) is not x  # a copy: the caller's rows are never aliased
    np.testing.assert_allclose(skip_strength_rows(x, f, 0.25), 0.75 * x + 0.25 * f, rtol=1e-6, atol=1e-6)
    assert skip_strength_rows(x, f, 0.5).dtype == np.float32
    with pytest.raises(SkipStrengthGateError, match=r"\(7, 3\)"):
        skip_strength_rows(x, f[:, :3], 0.5)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({0.0: 0.30, 0.25: 0.35, 0.5: 0.33, 1.0: 0.20}, 0.25),  # argmax
        ({0.0: 0.30, 0.25: 0.30, 0.5: 0.30, 1.0: 0.30}, 0.0),  # all tied -> the unrefined rows
        ({1.0: 0.40, 0.5: 0.40, 0.0: 0.10}, 0.5),  # tie between 0.5 and 1 -> the smaller, whatever the order
        ({0.0: 0.10, 1.0: 0.90}, 1.0),
    ],
)
def test_pick_takes_the_best_and_ties_to_the_smaller_alpha(scores, expected) -> None:
    assert pick_skip_strength(scores) == expected


def test_pick_rejects_no_scores_and_nan() -> None:
    with pytest.raises(SkipStrengthGateError, match="no skip strength"):
        pick_skip_strength({})
    with pytest.raises(SkipStrengthGateError, match="NaN"):
        pick_skip_strength({0.0: 0.1, 1.0: float("nan")})


# --- the gate against a reference -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["standard", "fede"])
def test_gate_scores_equal_the_as_trained_model_on_hand_interpolated_rows(client, trained, protocol) -> None:
    config, rows, relations = trained
    config = config.replace(eval_protocol=protocol)
    refined = noisy(rows, 0.3)
    gate = choose_skip_strength(client, config, rows, refined, GRID, relation_state=relations, device="cpu")
    reference = {}
    for alpha in GRID:
        by_hand = rows if alpha == 0.0 else refined if alpha == 1.0 else rows + np.float32(alpha) * (refined - rows)
        metrics = evaluate_as_trained(client, config, by_hand, relations, split="valid", protocols=(protocol,), device="cpu")
        reference[alpha] = metrics.metrics[protocol]["mrr"]
    assert gate.valid_scores == reference
    best = max(reference.values())
    assert gate.alpha == min(a for a in GRID if reference[a] == best)
    assert (gate.protocol, gate.selection) == (protocol, "as-trained")
    # alpha 0 is the unrefined model itself: the trained model's own valid MRR, bit for bit
    own = evaluate_as_trained(client, config, rows, relations, split="valid", protocols=(protocol,), device="cpu")
    assert gate.valid_scores[0.0] == own.metrics[protocol]["mrr"]
    record = gate.as_dict()
    assert record["valid_mrr"] == {"0": reference[0.0], "0.25": reference[0.25], "0.5": reference[0.5], "1": reference[1.0]}
    assert record["split"] == "valid" and record["alpha"] == gate.alpha


def test_harmful_refinement_falls_back_to_the_unrefined_rows(client, trained) -> None:
    """A huge random f(x) wrecks the refined rows: the gate picks alpha 0 and the gated row on test
    is the unrefined row (and a fresh re-fit of the gated rows gives the same numbers)."""
    config, rows, relations = trained
    refined = {"refined": noisy(rows, 100.0)}
    results = evaluate_downstream(client, config, rows, refined, refit_epochs=2, relation_state=relations,
                                  gate_grid=GRID, device="cpu")
    assert list(results) == ["fede-as-trained", "unrefined", "refined", GATED_ROW]
    gate = results[GATED_ROW]["gate"]
    assert gate["alpha"] == 0.0 and gate["valid_mrr"]["0"] > gate["valid_mrr"]["1"]
    assert results[GATED_ROW]["metrics"] == results["unrefined"]["metrics"]
    assert results["refined"]["metrics"]["standard"]["mrr"] < results["unrefined"]["metrics"]["standard"]["mrr"]
    fresh = refit_relations(client, config, skip_strength_rows(rows, refined["refined"], gate["alpha"]), epochs=2, device="cpu")
    assert fresh.metrics == results["unrefined"]["metrics"]


def test_an_interior_alpha_gets_its_own_refit(client, trained) -> None:
    """When the gate picks 0 < alpha < 1 the gated row is a re-fit of those rows, not a copy of a row.
    (A one-point grid forces the interior choice; the config itself always holds 0.)"""
    config, rows, relations = trained
    refined = {"refined": noisy(rows, 0.3, seed=3)}
    results = evaluate_downstream(client, config, rows, refined, refit_epochs=1, relation_state=relations,
                                  gate_grid=(0.5,), device="cpu")
    assert results[GATED_ROW]["gate"]["alpha"] == 0.5 and "reused_from" not in results[GATED_ROW]
    expected = refit_relations(client, config, skip_strength_rows(rows, refined["refined"], 0.5), epochs=1, device="cpu")
    assert results[GATED_ROW]["metrics"] == expected.metrics
    assert results[GATED_ROW]["metrics"] not in (results["unrefined"]["metrics"], results["refined"]["metrics"])


def test_without_trained_relations_each_alpha_is_scored_by_a_refit_on_valid(client, trained) -> None:
    config, rows, _ = trained
    refined = noisy(rows, 0.3)
    gate = choose_skip_strength(client, config, rows, refined, (0.0, 1.0), relation_state=None, refit_epochs=1, device="cpu")
    assert gate.selection == "refit"
    for alpha, rows_alpha in ((0.0, rows), (1.0, refined)):
        reference = refit_relations(client, config, rows_alpha, epochs=1, split="valid", protocols=("standard",), device="cpu")
        assert gate.valid_scores[alpha] == reference.metrics["standard"]["mrr"]


def test_gate_off_or_impossible(client, trained) -> None:
    config, rows, relations = trained
    results = evaluate_downstream(client, config, rows, {"refined": rows}, refit_epochs=0, relation_state=relations, device="cpu")
    assert GATED_ROW not in results
    no_valid = types.SimpleNamespace(client_id=5, valid=types.SimpleNamespace(num_triples=0))
    with pytest.raises(SkipStrengthGateError, match="client 5: no valid triples"):
        evaluate_downstream(no_valid, config, rows, {"refined": rows}, refit_epochs=0, gate_grid=GRID)
    with pytest.raises(SkipStrengthGateError, match="variant 'other'"):
        evaluate_downstream(client, config, rows, {"refined": rows}, refit_epochs=0, gate_grid=GRID, gated_variant="other")
    with pytest.raises(SkipStrengthGateError, match="empty"):
        choose_skip_strength(client, config, rows, rows, (), relation_state=relations)


# --- config key and message round trip -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,0.25,0.5,1", (0.0, 0.25, 0.5, 1.0)),
        (" 1, 0 ,0.5,0.5", (0.0, 0.5, 1.0)),  # sorted, distinct
        ("", ()),
        ("none", ()),
        (None, ()),
        (0, (0.0,)),
        ([0, 0.1], (0.0, 0.1)),
    ],
)
def test_gate_grid_parsing(value, expected) -> None:
    assert parse_gate_grid(value) == expected
    config = RefinementConfig.from_run_config({"simskip-gate-grid": value})
    assert config.gate_grid == expected and config.gated == bool(expected)
    assert RefinementConfig.from_run_config(config.to_run_config()) == config


@pytest.mark.parametrize(
    ("value", "match"),
    [("0.5,1", "lacks 0"), ("0,1.5", "outside"), ("0,-0.1", "outside"), ("0,x", "'x' is not a number"),
     ("0,nan", "outside"), (True, "comma-separated")],
)
def test_gate_grid_rejects_bad_values(value, match) -> None:
    with pytest.raises(RefinementConfigError, match=match):
        RefinementConfig.from_run_config({"simskip-gate-grid": value})


def test_gate_grid_default_is_listed_with_the_phase_keys() -> None:
    assert REFINEMENT_KEYS["simskip-gate-grid"] == "0,0.25,0.5,1"
    assert RefinementConfig().gate_grid == DEFAULT_GATE_GRID == GRID
    assert RefinementConfig.from_run_config({"simskip-skip": False}).main_variant == "refined-no-skip"


def test_gate_travels_through_the_reply_metrics() -> None:
    from client.refinement_app import gate_metrics
    from server.simskip_strategy import parse_downstream_metrics, parse_gate_metrics

    record = {"alpha": 0.25, "valid_mrr": {"0": 0.31, "0.25": 0.35, "0.5": 0.3, "1": 0.2}, "protocol": "fede",
              "split": "valid", "selection": "as-trained", "variant": "refined", "seconds": 0.5}
    flat = gate_metrics(record)
    assert parse_downstream_metrics(flat) == {}  # not mistaken for table cells
    assert parse_gate_metrics(flat, protocol="fede", variant="refined") == record
    assert parse_gate_metrics({"refined/standard/mrr": 0.1}, protocol="fede", variant="refined") is None
