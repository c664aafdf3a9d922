"""Downstream protocols, the per-client comparison and the significance test.

``client/kge/protocols.py`` (as-trained, relation-refit, adapter, finetune), ``client/kge/comparison.py``
(candidates chosen on valid, the perturbation control, test only at the end) and
``client/kge/significance.py`` (paired bootstrap against a small numpy reference). One client of
Nations over 2 clients: each valid ranking takes milliseconds, each trained protocol a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.kge.comparison import SkipStrengthError, evaluate_client_rows, rr_key, skip_strength_rows
from client.kge.config import KGEConfig
from client.kge.evaluation import evaluate_client_protocols
from client.kge.protocols import (
    DownstreamBudget,
    ProtocolRun,
    UnknownDownstreamProtocolError,
    as_trained_trainer,
    protocol_labels,
    run_protocol,
)
from client.kge.refinement import RefinementConfig, RefinementConfigError, parse_gate_grid
from client.kge.significance import paired_bootstrap, significant_gain
from client.kge.training import LocalTrainer
from simskip_core import relative_displacement


@pytest.fixture(scope="module")
def client():
    from kg_datasets import load_federated

    return load_federated("Nations", num_clients=2, seed=0).clients[0]


def small(**changes: object) -> KGEConfig:
    return KGEConfig(model="DistMult", embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=5e-2).replace(
        **changes
    )


@pytest.fixture(scope="module")
def trained(client):
    """(config, rows, relation_state) of a trained local model (valid MRR well above random)."""
    config = small()
    trainer = LocalTrainer(client, config, device="cpu")
    trainer.train(20)
    relations = {k: v for k, v in trainer.get_private_state().items() if k.startswith("model/")}
    return config, trainer.get_entity_embeddings(), relations


# --- skip strength and config keys ------------------------------------------------------------------
def test_skip_strength_rows_endpoints_are_bit_identical_and_midpoints_interpolate() -> None:
    rng = np.random.default_rng(0)
    x, f = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(skip_strength_rows(x, f, 0.0), x)
    np.testing.assert_array_equal(skip_strength_rows(x, f, 1.0), f)
    assert skip_strength_rows(x, f, 0.0) is not x
    np.testing.assert_allclose(skip_strength_rows(x, f, 0.25), 0.75 * x + 0.25 * f, rtol=1e-6, atol=1e-6)
    with pytest.raises(SkipStrengthError):
        skip_strength_rows(x, f[:, :3], 0.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,0.25,0.5,1", (0.0, 0.25, 0.5, 1.0)),
        (" 1, 0 ,0.5,0.5", (0.0, 0.5, 1.0)),
        ("none", ()),
        ([0, 0.1], (0.0, 0.1)),
    ],
)
def test_gate_grid_parsing(value, expected) -> None:
    assert parse_gate_grid(value) == expected


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("downstream-protocols", "as-trained,bogus", "unknown protocol 'bogus'"),
        ("downstream-protocols", "", "empty"),
        ("refit-init", "warm", "unknown init 'warm'"),
        ("simskip-search", "lr=1e-3;tempreature=0.1", "unknown config key 'tempreature'"),
        ("simskip-search", "epochs=3", "set by the phase"),
        ("simskip-search", "lr", "not field=value"),
        ("simskip-gate-grid", "none", "skip strength > 0"),
        ("downstream-seeds", 0, ">= 1"),
        ("downstream-typo", 1, "unknown refinement key"),
    ],
)
def test_bad_downstream_keys_fail_when_the_config_is_read(key, value, match) -> None:
    with pytest.raises(RefinementConfigError, match=match):
        RefinementConfig.from_run_config({key: value})


def test_search_and_seeds_become_variants_trained_side_by_side() -> None:
    config = RefinementConfig.from_run_config(
        {
            "simskip-search": "lr=1e-3;temperature=0.1",
            "downstream-seeds": 2,
            "simskip-no-skip-ablation": True,
            "simskip-seed": 5,
        }
    )
    variants = config.variants()
    assert list(variants) == [
        "refined",
        "refined@0.1",
        "refined@1.0",
        "refined@1.1",
        "refined-no-skip",
        "refined-no-skip@0.1",
    ]
    assert [variants[v].seed for v in variants] == [5, 6, 5, 6, 5, 6]
    assert variants["refined@0.1"].lr == 1e-3 and variants["refined@1.0"].temperature == 0.1
    assert not variants["refined-no-skip@0.1"].skip
    assert config.candidates() == [(k, a) for k in (0, 1) for a in (0.25, 1.0)]  # the default grid 0, 0.25, 1
    assert RefinementConfig.from_run_config(config.to_run_config()) == config
    assert protocol_labels(["as-trained", "relation-refit"], ["trained", "fresh"]) == [
        "as-trained",
        "relation-refit:trained",
        "relation-refit:fresh",
    ]
    with pytest.raises(UnknownDownstreamProtocolError):
        protocol_labels(["nope"])


# --- protocols ------------------------------------------------------------------------------------
def test_as_trained_is_the_kge_model_itself(client, trained) -> None:
    config, rows, relations = trained
    run = run_protocol("as-trained", client, config, rows, relation_state=relations, budget=DownstreamBudget())
    reference = as_trained_trainer(client, config, relations, "cpu")
    reference.set_entity_embeddings(rows)
    assert run.valid == pytest.approx(reference.evaluate("valid")["mrr"], abs=1e-9)
    assert run.epochs == 0
    metrics, ranks = run.test()
    assert metrics == {p: reference.evaluate("test", p) for p in ("standard", "fede")}
    for protocol in ("standard", "fede"):  # each triple's reciprocal rank averages to the MRR
        assert ranks[protocol].shape == (client.test.num_triples,)
        assert float(ranks[protocol].mean()) == pytest.approx(
            metrics[protocol]["mrr"], abs=1e-6
        )  # PyKEEN averages in float32
    with pytest.raises(RuntimeError, match="already tested"):
        run.test()
    for label in ("as-trained", "relation-refit:trained"):
        with pytest.raises(UnknownDownstreamProtocolError, match="needs the client's trained relations"):
            run_protocol(label, client, config, rows, relation_state=None, budget=DownstreamBudget())


@pytest.mark.parametrize("label", ["relation-refit:trained", "relation-refit:fresh", "adapter"])
def test_frozen_protocols_keep_rows_bit_identical_and_keep_the_best_valid_state(client, trained, label) -> None:
    config, rows, relations = trained
    # not unit-norm rows and a TransE-like constrainer setting must not rewrite them
    rows = rows * np.linspace(0.5, 2.0, rows.shape[0], dtype=np.float32)[:, None]
    run = run_protocol(
        label, client, config, rows, relation_state=relations, budget=DownstreamBudget(max_epochs=4, patience=2)
    )
    assert run.trainer is not None
    np.testing.assert_array_equal(run.trainer.get_entity_embeddings(), rows)
    assert 1 <= run.epochs <= 4 and len(run.curve) == run.epochs + 1
    assert run.valid == max(run.curve) and run.curve[run.best_epoch] == run.valid
    # the kept state is the best epoch's: ranking valid again gives its score
    again = evaluate_client_protocols(run.trainer.model, client, split="valid", protocols=(config.eval_protocol,))
    assert again[config.eval_protocol]["mrr"] == pytest.approx(run.valid, abs=1e-9)
    assert run.init == label.partition(":")[2] or (label == "adapter" and run.init == "trained")


def test_adapter_starts_as_the_identity_and_learns_a_map(client, trained) -> None:
    config, rows, relations = trained
    at_start = run_protocol("adapter", client, config, rows, relation_state=relations, budget=DownstreamBudget(0, 1))
    as_trained = run_protocol("as-trained", client, config, rows, relation_state=relations, budget=DownstreamBudget())
    assert at_start.valid == pytest.approx(as_trained.valid, abs=1e-6)
    from client.kge.models import entity_embedding

    run = run_protocol(
        "adapter", client, config, rows, relation_state=relations, budget=DownstreamBudget(max_epochs=3, patience=3)
    )
    adapted = entity_embedding(run.trainer.model)._embeddings
    trained_params = [p for group in run.trainer.loop.optimizer.param_groups for p in group["params"]]
    assert any(p is adapted.map for p in trained_params), "the map is trained"
    assert not any(p is adapted.rows for p in trained_params), "the rows are not"
    mapping = adapted.map.detach().numpy()
    assert mapping.shape == (rows.shape[1], rows.shape[1])
    assert np.allclose(mapping, np.eye(rows.shape[1])) == (run.best_epoch == 0)


@pytest.mark.parametrize("label", ["relation-refit:trained", "adapter", "finetune"])
def test_every_protocol_from_the_trained_relations_starts_exactly_where_as_trained_is(client, trained, label) -> None:
    """The comparison reuses the epoch-0 valid score across protocols (``start_valid``): it must be exact."""
    config, rows, relations = trained
    as_trained = run_protocol("as-trained", client, config, rows, relation_state=relations, budget=DownstreamBudget())
    start = run_protocol(label, client, config, rows, relation_state=relations, budget=DownstreamBudget(0, 1))
    assert start.curve[0] == as_trained.valid
    budget = DownstreamBudget(max_epochs=2, patience=2)
    reused = run_protocol(
        label, client, config, rows, relation_state=relations, budget=budget, start_valid=as_trained.valid
    )
    computed = run_protocol(label, client, config, rows, relation_state=relations, budget=budget)
    assert reused.curve == computed.curve and reused.best_epoch == computed.best_epoch


def test_finetune_moves_the_rows(client, trained) -> None:
    config, rows, relations = trained
    run = run_protocol(
        "finetune", client, config, rows, relation_state=relations, budget=DownstreamBudget(max_epochs=2, patience=2)
    )
    if run.best_epoch > 0:
        assert not np.array_equal(run.trainer.get_entity_embeddings(), rows)
    else:  # best state is the start: rows restored exactly
        np.testing.assert_array_equal(run.trainer.get_entity_embeddings(), rows)


# --- the comparison -------------------------------------------------------------------------------
def test_comparison_tests_only_after_every_choice_and_perturbs_by_the_refined_displacement(
    client, trained, monkeypatch
) -> None:
    config, rows, relations = trained
    refinement = RefinementConfig.from_run_config(
        {
            "downstream-protocols": "as-trained,relation-refit",
            "downstream-seeds": 2,
            "refit-epochs": 1,
            "simskip-gate-grid": "0,0.5,1",
            "simskip-search": "lr=1e-3;lr=1e-2",
        }
    )
    rng = np.random.default_rng(0)
    refined = {
        name: (rows + 0.3 * rng.standard_normal(rows.shape)).astype(np.float32) for name in refinement.variants()
    }
    events: list[str] = []
    original_run, original_test = run_protocol, ProtocolRun.test

    def spy_run(*args, **kwargs):
        events.append("run")
        return original_run(*args, **kwargs)

    def spy_test(self, *args, **kwargs):
        events.append("test")
        return original_test(self, *args, **kwargs)

    from client.kge import comparison

    monkeypatch.setattr(comparison, "run_protocol", spy_run)
    monkeypatch.setattr(ProtocolRun, "test", spy_test)
    record, ranks = evaluate_client_rows(client, config, rows, refined, refinement, relation_state=relations)
    assert record["protocol_order"] == ["as-trained", "relation-refit:trained"]
    for label, entry in record["protocols"].items():
        assert set(entry["seeds"]) == {"0", "1"}
        for seed, per_row in entry["seeds"].items():
            assert list(per_row) == ["unrefined", "refined", "perturbed"]
            for row in per_row:
                for protocol in ("standard", "fede"):
                    rr = ranks[rr_key(label, int(seed), row, protocol)]
                    assert float(rr.mean()) == pytest.approx(per_row[row]["test"][protocol]["mrr"], abs=1e-6)
            # the perturbation moved each row exactly as far as the chosen refined rows
            assert per_row["perturbed"]["displacement"] == pytest.approx(per_row["refined"]["displacement"], rel=1e-5)
        selection = entry["selection"]
        chosen = (selection["chosen"]["setting"], selection["chosen"]["alpha"])
        means = {(c["setting"], c["alpha"]): np.mean(c["valid"]) for c in selection["candidates"]}
        assert means[chosen] == max(means.values())  # chosen on valid
    # all protocol runs of a label precede its tests: no test score can reach a choice
    blocks = "".join("r" if e == "run" else "t" for e in events)
    assert blocks.count("tr") == 1, blocks  # runs, tests (label 1), runs, tests (label 2)


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    return value


def test_runs_that_kept_the_as_trained_model_reuse_its_test_ranking_bit_for_bit(client, trained, monkeypatch) -> None:
    """A trained protocol's run whose best state is its start (trained relations, best epoch 0) is the
    as-trained model of the same rows: the comparison reuses that ranking, and the record is the one a
    fresh ranking gives, bit for bit."""
    from client.kge import comparison

    config, rows, relations = trained
    config = config.replace(learning_rate=1.0)  # one downstream epoch at this rate only hurts: best epoch 0
    refinement = RefinementConfig.from_run_config(
        {
            "downstream-protocols": "as-trained,relation-refit,adapter,finetune",
            "downstream-seeds": 2,
            "refit-epochs": 1,
            "simskip-gate-grid": "0,1",
            "simskip-search": "lr=1e-3",
        }
    )
    rng = np.random.default_rng(1)
    refined = {
        name: (rows + 0.3 * rng.standard_normal(rows.shape)).astype(np.float32) for name in refinement.variants()
    }
    calls = {"test": 0}
    original_test = ProtocolRun.test

    def counted(self, *args, **kwargs):
        calls["test"] += 1
        return original_test(self, *args, **kwargs)

    monkeypatch.setattr(ProtocolRun, "test", counted)
    reused, reused_ranks = evaluate_client_rows(client, config, rows, refined, refinement, relation_state=relations)
    with_reuse = calls["test"]
    monkeypatch.setattr(comparison, "_test_or_reuse", lambda result, key, cache: result.test())
    calls["test"] = 0
    ranked, ranked_ranks = evaluate_client_rows(client, config, rows, refined, refinement, relation_state=relations)
    assert _without_seconds(reused) == _without_seconds(ranked)
    assert reused_ranks.keys() == ranked_ranks.keys()
    for key, values in ranked_ranks.items():
        np.testing.assert_array_equal(reused_ranks[key], values, err_msg=key)
    kept_start = sum(
        run["best_epoch"] == 0 and run["init"] == "trained"
        for label, entry in ranked["protocols"].items()
        if label != "as-trained"
        for per_row in entry["seeds"].values()
        for run in per_row.values()
    )
    assert kept_start > 0, "no run kept its start: the test exercises nothing"
    # at least every such unrefined run reuses the as-trained ranking of the same rows
    unrefined_kept = sum(
        entry["seeds"][seed]["unrefined"]["best_epoch"] == 0
        for label, entry in ranked["protocols"].items()
        if label != "as-trained"
        for seed in entry["seeds"]
    )
    assert calls["test"] - with_reuse >= unrefined_kept > 0


@pytest.mark.parametrize("first", ["as-trained", "relation-refit"])
def test_top_candidates_train_only_the_best_starts(client, trained, monkeypatch, first) -> None:
    """downstream-top-candidates = 2 of 4: each trained protocol trains only the two candidates whose rows
    score best on valid at their start (as-trained's score), whether or not as-trained ran first; the
    choice is among those, and the others are recorded with their start scores."""
    from client.kge import comparison

    config, rows, relations = trained
    protocols = "as-trained,relation-refit" if first == "as-trained" else "relation-refit"
    refinement = RefinementConfig.from_run_config(
        {
            "downstream-protocols": protocols,
            "downstream-seeds": 2,
            "refit-epochs": 1,
            "simskip-gate-grid": "0,0.5,1",
            "simskip-search": "lr=1e-3;lr=1e-2",
            "downstream-top-candidates": 2,
        }
    )
    rng = np.random.default_rng(2)
    refined = {
        name: (rows + s * rng.standard_normal(rows.shape)).astype(np.float32)
        for s, name in zip((0.05, 0.3, 0.6, 1.0), refinement.variants())
    }
    trained_rows: list[bytes] = []
    original = comparison.run_protocol

    def spy(label, graph, cfg, these, **kwargs):
        if label == "relation-refit:trained":
            trained_rows.append(these.tobytes())
        return original(label, graph, cfg, these, **kwargs)

    monkeypatch.setattr(comparison, "run_protocol", spy)
    record, _ = evaluate_client_rows(client, config, rows, refined, refinement, relation_state=relations)
    selection = record["protocols"]["relation-refit:trained"]["selection"]
    kept = [(c["setting"], c["alpha"]) for c in selection["candidates"]]
    pruned = {(c["setting"], c["alpha"]): c["start_valid"] for c in selection["pruned"]}
    assert len(kept) == 2 and len(pruned) == 2 and not set(kept) & set(pruned)
    # the start scores, recomputed: as-trained's valid score of each candidate's rows
    main = refinement.main_variant

    def start(setting: int, alpha: float, seed: int) -> float:
        these = skip_strength_rows(rows, refined[refinement.variant_name(main, setting, seed)], alpha)
        return run_protocol(
            "as-trained", client, config, these, relation_state=relations, budget=DownstreamBudget()
        ).valid

    starts = {c: float(np.mean([start(*c, seed) for seed in (0, 1)])) for c in refinement.candidates()}
    assert min(starts[c] for c in kept) >= max(starts[c] for c in pruned)
    for c, values in pruned.items():
        assert values == [start(*c, seed) for seed in (0, 1)]
    chosen = (selection["chosen"]["setting"], selection["chosen"]["alpha"])
    assert chosen in kept
    # only the unrefined rows, the kept candidates and the perturbed rows were trained: 2 seeds x (1 + 2 + 1)
    assert len(trained_rows) == 2 * (1 + 2 + 1)
    if first == "as-trained":  # the as-trained label is not pruned: it trains nothing
        assert "pruned" not in record["protocols"]["as-trained"]["selection"]
        assert len(record["protocols"]["as-trained"]["selection"]["candidates"]) == 4


def test_top_candidates_without_trained_relations_train_every_candidate_and_say_so(client, trained) -> None:
    config, rows, _ = trained
    refinement = RefinementConfig.from_run_config(
        {
            "downstream-protocols": "adapter",
            "downstream-seeds": 1,
            "refit-epochs": 1,
            "simskip-gate-grid": "0,0.5,1",
            "downstream-top-candidates": 1,
        }
    )
    refined = {name: rows.copy() for name in refinement.variants()}
    record, _ = evaluate_client_rows(client, config, rows, refined, refinement, relation_state=None)
    selection = record["protocols"]["adapter"]["selection"]
    assert len(selection["candidates"]) == 2 and "pruned" not in selection
    assert selection["pruning"].startswith("off: the client has no trained relations")


def test_top_candidates_zero_or_at_least_all_changes_nothing(client, trained) -> None:
    config, rows, relations = trained
    base = {
        "downstream-protocols": "relation-refit",
        "downstream-seeds": 1,
        "refit-epochs": 1,
        "simskip-gate-grid": "0,1",
        "simskip-search": "lr=1e-3;lr=1e-2",
    }
    rng = np.random.default_rng(3)
    refinement = RefinementConfig.from_run_config(base)
    refined = {
        name: (rows + 0.2 * rng.standard_normal(rows.shape)).astype(np.float32) for name in refinement.variants()
    }
    records = [
        _without_seconds(
            evaluate_client_rows(
                client,
                config,
                rows,
                refined,
                RefinementConfig.from_run_config({**base, "downstream-top-candidates": k}),
                relation_state=relations,
            )[0]
        )
        for k in (0, 2, 5)
    ]
    assert records[0] == records[1] == records[2]
    assert "pruned" not in records[0]["protocols"]["relation-refit:trained"]["selection"]


def test_reuse_needs_the_trained_start_and_best_epoch_zero(monkeypatch) -> None:
    from client.kge import comparison

    tested: list[str] = []

    def fake_test(self, *args, **kwargs):
        tested.append(self.label)
        self.trainer = None
        return {"standard": {"mrr": len(tested)}}, {"standard": np.array([float(len(tested))])}

    monkeypatch.setattr(ProtocolRun, "test", fake_test)
    cache: dict = {}

    def make(label: str, best: int, init: str) -> ProtocolRun:
        return ProtocolRun(label, 0.5, [0.5], best, 1, 0.0, init, trainer=object())

    first = comparison._test_or_reuse(make("as-trained", 0, "trained"), b"rows", cache)
    again = comparison._test_or_reuse(run := make("adapter", 0, "trained"), b"rows", cache)
    assert again[0] == first[0] and tested == ["as-trained"] and run.trainer is None
    again[1]["standard"][0] = -1.0  # a copy: the cached ranks are untouched
    assert cache[b"rows"][1]["standard"][0] == 1.0
    comparison._test_or_reuse(make("finetune", 1, "trained"), b"rows", cache)  # trained away from the start
    comparison._test_or_reuse(make("adapter", 0, "fresh"), b"rows", cache)  # fresh relations: another model
    comparison._test_or_reuse(make("adapter", 0, "trained"), b"other rows", cache)
    assert tested == ["as-trained", "finetune", "adapter", "adapter"]


def test_the_adapter_computes_the_whole_table_once_per_map(client, trained) -> None:
    """Ranking asks for every entity's adapted row once per batch; the table is computed once until the
    map changes, and ranks exactly as the per-batch product does."""
    from client.kge.models import entity_embedding
    from client.kge.protocols import _AdaptedRows

    config, rows, relations = trained
    run = run_protocol(
        "adapter", client, config, rows, relation_state=relations, budget=DownstreamBudget(max_epochs=1, patience=1)
    )
    trainer = run.trainer
    adapted = entity_embedding(trainer.model)._embeddings
    assert isinstance(adapted, _AdaptedRows)
    with torch.no_grad():
        adapted.map.add_(0.01 * torch.randn_like(adapted.map))  # not the identity: a real map
    evaluate = lambda: evaluate_client_protocols(  # noqa: E731
        trainer.model, client, split="test", protocols=("standard", "fede"), batch_size=16
    )
    cached = evaluate()
    table = adapted._table[1]
    assert evaluate() == cached and adapted._table[1] is table  # reused: the map did not change
    every = torch.arange(rows.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(adapted(every), adapted.rows @ adapted.map, rtol=0, atol=0)
        adapted.map.mul_(1.0)  # an in-place step (same values): the version moves, the table is recomputed
        assert adapted(every) is not table
    original = _AdaptedRows._all_entities
    try:
        _AdaptedRows._all_entities = lambda self, indices: False  # the per-batch product, every batch
        assert evaluate() == cached
    finally:
        _AdaptedRows._all_entities = original


def test_perturbed_rows_match_the_displacement_row_by_row() -> None:
    from simskip_core import perturb_like

    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    p = perturb_like(x, y, seed=3)
    np.testing.assert_allclose(relative_displacement(x, p), relative_displacement(x, y), rtol=1e-5)


# --- significance ---------------------------------------------------------------------------------
def _reference_bootstrap(d: np.ndarray, resamples: int, seed: int, chunk: int) -> np.ndarray:
    """The same draws as paired_bootstrap, resampled the textbook way: mean of d[index]."""
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, chunk):
        index = rng.integers(0, d.size, size=(min(chunk, resamples - start), d.size), dtype=np.int32)
        means.extend(d[index].mean(axis=1))
    return np.quantile(np.asarray(means), [0.025, 0.975])


def test_paired_bootstrap_matches_a_numpy_reference() -> None:
    d = np.random.default_rng(0).normal(0.02, 0.3, size=400)
    got = paired_bootstrap(d, resamples=2000, seed=7, chunk=100)
    lo, hi = _reference_bootstrap(d, 2000, 7, 100)
    assert got["lo"] == pytest.approx(lo, abs=1e-12) and got["hi"] == pytest.approx(hi, abs=1e-12)
    assert got["mean"] == pytest.approx(d.mean())
    # the textbook width of a mean's 95 % interval
    assert got["hi"] - got["lo"] == pytest.approx(2 * 1.96 * d.std() / np.sqrt(d.size), rel=0.15)
    several = paired_bootstrap(np.stack([d, -d, np.zeros_like(d)]), resamples=2000, seed=7, chunk=100)
    assert several[0]["lo"] == pytest.approx(got["lo"], abs=1e-12) and several[1]["lo"] == pytest.approx(-got["hi"])
    assert several[2]["lo"] == several[2]["hi"] == 0
    with pytest.raises(ValueError):
        paired_bootstrap(np.array([np.nan, 1.0]))


def test_significance_needs_both_intervals_above_zero() -> None:
    above = {"mean": 1.0, "lo": 0.5, "hi": 1.5}
    straddles = {"mean": 0.2, "lo": -0.1, "hi": 0.5}
    below = {"mean": -1.0, "lo": -1.5, "hi": -0.5}
    assert significant_gain(above, above) == "gain"
    assert significant_gain(above, straddles) == "none"  # a random displacement does as well
    assert significant_gain(straddles, above) == "none"
    assert significant_gain(below, straddles) == "loss"


def test_simskip_sim_refuses_an_unknown_protocol_before_anything_starts(tmp_path, capsys) -> None:
    from server.simulation import main as sim_main

    run_dir = tmp_path / "run"
    argv = ["--dataset", "Nations", "--clients", "2", "--run-dir", str(run_dir)]
    with pytest.raises(SystemExit) as exit_info:  # a usage error: exit 2, before any work
        sim_main([*argv, "--set", 'downstream-protocols="as-trained,bogus"'])
    assert exit_info.value.code == 2
    assert "unknown protocol 'bogus'" in capsys.readouterr().err
    assert not (run_dir / ".flwr").exists(), "no SuperLink was started"
