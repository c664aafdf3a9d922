"""Robust aggregation (``aggregation = median | trimmed-mean``): the rules against a per-row reference,
the rows with one or two holders, the encoder weights, the run-config checks, and a poisoning party
on Kinships through the real FedE strategy and ClientApp handlers.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from client.kge.aggregation import AGGREGATIONS, AggregationError, aggregate_rows
from client.kge.models import initial_entity_table
from client.kge.refinement import load_run_configs
from client.kge.settings import FederationSettings, SettingsError
from client.kge.weights import WeightsAggregationError, fedavg_named
from client.protocol import ENTITY_ROWS_KEY, ROWS_ARRAY
from server.strategy import FedEStrategy
from tests.handler_grid import HandlerGrid


def _reference(table, updates, rule, trim):
    """One row and one coordinate at a time, with numpy's median and scipy's trim_mean rule."""
    out = table.astype(np.float64)
    for row in range(table.shape[0]):
        values = np.array([rows[list(ids).index(row)] for ids, rows in updates if row in ids], dtype=np.float64)
        if len(values) == 0:
            continue
        if rule == "mean" or len(values) < 3:
            out[row] = values.mean(axis=0)
        elif rule == "median":
            out[row] = np.median(values, axis=0)
        else:
            cut = int(trim * len(values))
            out[row] = np.sort(values, axis=0)[cut : len(values) - cut].mean(axis=0)
    return out.astype(table.dtype)


@st.composite
def _updates(draw):
    num_rows, width, clients = draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    updates = []
    for _ in range(clients):
        ids = np.flatnonzero(rng.random(num_rows) < draw(st.floats(0.2, 1.0)))
        rng.shuffle(ids)
        scale = 1000.0 if draw(st.booleans()) else 1.0  # a poisoning party's rows among honest ones
        updates.append((ids, (rng.normal(size=(ids.size, width)) * scale).astype(np.float32)))
    return np.zeros((num_rows, width), dtype=np.float32), updates


# derandomize: the same examples on every run (see FUZZ in test_loader_fuzz.py)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=_updates(), rule=st.sampled_from(AGGREGATIONS), trim=st.sampled_from([0.0, 0.2, 0.25, 0.34, 0.49]))
def test_every_rule_equals_the_per_row_reference(case, rule, trim) -> None:
    table, updates = case
    got = aggregate_rows(table, updates, rule, trim)
    np.testing.assert_allclose(got, _reference(table, updates, rule, trim), rtol=1e-6, atol=1e-6)


def test_rows_with_one_or_two_holders_get_their_mean_under_every_rule() -> None:
    table = np.zeros((3, 2), dtype=np.float32)
    updates = [
        (np.array([0, 1, 2]), np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32)),
        (np.array([1, 2]), np.array([[4, 4], [5, 5]], dtype=np.float32)),
        (np.array([2]), np.array([[100, -100]], dtype=np.float32)),
    ]
    for rule in AGGREGATIONS:
        got = aggregate_rows(table, updates, rule, 0.34)
        np.testing.assert_array_equal(got[0], [1, 1])  # one holder
        np.testing.assert_array_equal(got[1], [3, 3])  # two holders: their mean
    assert aggregate_rows(table, updates, "median")[2].tolist() == [5, 3]  # three: coordinate-wise median
    assert aggregate_rows(table, updates, "mean")[2].tolist() == pytest.approx([36, -30.667], abs=1e-3)


def test_the_median_keeps_a_poisoned_row_inside_the_honest_values() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(4, 50, 8)).astype(np.float32)
    ids = np.arange(50)
    poisoned = [(ids, rows) for rows in honest] + [(ids, np.full((50, 8), 1e6, dtype=np.float32))]
    table = np.zeros((50, 8), dtype=np.float32)
    for rule in ("median", "trimmed-mean"):
        got = aggregate_rows(table, poisoned, rule, 0.2)  # trim 0.2 of 5 holders: one value each side
        assert (got >= honest.min(axis=0) - 1e-6).all() and (got <= honest.max(axis=0) + 1e-6).all()
    assert aggregate_rows(table, poisoned, "mean").min() > 1e5


def test_an_unknown_rule_or_trim_is_refused() -> None:
    table = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(AggregationError, match="aggregation must be one of"):
        aggregate_rows(table, [], "max")
    with pytest.raises(AggregationError, match=r"aggregation-trim must be in \[0, 0.5\)"):
        aggregate_rows(table, [], "trimmed-mean", 0.5)
    with pytest.raises(SettingsError, match="aggregation must be one of"):
        FederationSettings.from_run_config({"aggregation": "krum"})
    with pytest.raises(WeightsAggregationError, match="aggregation-trim"):
        fedavg_named([([("w", np.zeros(2))], 1)], "trimmed-mean", -0.1)


def test_an_unknown_rule_fails_before_any_process_starts() -> None:
    from server.run_options import check_run_config

    with pytest.raises(SettingsError, match="aggregation must be one of"):
        check_run_config({"aggregation": "krum"})


def test_encoder_weights_median_is_unweighted_and_coordinate_wise() -> None:
    updates = [
        ([("w", np.array([0.0, 10.0])), ("b", np.array([1.0]))], 1),
        ([("w", np.array([1.0, 20.0])), ("b", np.array([2.0]))], 1),
        ([("w", np.array([1e9, -1e9])), ("b", np.array([3.0]))], 1000),
    ]
    got = dict(fedavg_named(updates, "median"))
    np.testing.assert_array_equal(got["w"], [1.0, 10.0])
    np.testing.assert_array_equal(got["b"], [2.0])
    two = dict(fedavg_named(updates[:2], "median"))  # fewer than three updates: the weighted mean
    np.testing.assert_array_equal(two["w"], [0.5, 15.0])


# ----------------------------------------------------------------------------- a poisoning party
# learns Kinships in a few rounds (in-process: honest test MRR about 0.23 after 8, random is about 0.05)
KGE = {
    "embedding-dim": 32,
    "local-epochs": 1,
    "num-negs-per-pos": 32,
    "batch-size": 128,
    "eval-batch-size": 128,
    "learning-rate": 0.03,
    "eval-every": 1,
}
ATTACKER = 10


@pytest.fixture(scope="module")
def kinships_root(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("kinships") / "data"
    load_federated("Kinships", num_clients=3, seed=0).write(out)
    return out


def _poison(msg, reply):
    """The attacker replaces its trained rows by large random ones every round (finite in float16)."""
    if msg.metadata.message_type != "train" or msg.metadata.dst_node_id != ATTACKER or reply.has_error():
        return
    record = reply.content.array_records[ENTITY_ROWS_KEY]
    rows = record[ROWS_ARRAY].numpy()
    noise = np.random.default_rng(int(msg.content.config_records["config"]["server-round"])).normal(size=rows.shape)
    record[ROWS_ARRAY] = Array((noise * 50.0).astype(rows.dtype))  # unit-norm rows: ~300x a coordinate
    return


def _federate(root, tmp_path, rule, tamper, rounds=8):
    run_config = {**KGE, "client-data-root": str(root), "client-output-root": str(tmp_path / "clients")}
    contexts = {
        10 + k: Context(
            run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(), run_config=run_config
        )
        for k in range(3)
    }
    _, kge_config, _ = load_run_configs(run_config)
    strategy = FedEStrategy(min_clients=3, eval_every=1, patience=rounds, aggregation=rule, aggregation_trim=0.34)
    grid = HandlerGrid(contexts, tamper)
    vocabulary = strategy.handshake(grid)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(
        grid,
        ArrayRecord({"entity-table": Array(table)}),
        num_rounds=rounds,
        train_config=ConfigRecord({"local-epochs": 1}),
    )
    honest = [name for name in result.test if name != "0"]
    weights = np.array([strategy.clients[10 + int(n)].num_test for n in honest], dtype=float)
    test = float(np.average([result.test[n]["mrr"] for n in honest], weights=weights))
    return strategy, test


@pytest.mark.usefixtures("task_identity")
def test_the_median_protects_the_honest_clients_from_a_poisoning_party(kinships_root, tmp_path) -> None:
    clean_strategy, clean = _federate(kinships_root, tmp_path / "clean", "mean", None)
    mean_strategy, mean = _federate(kinships_root, tmp_path / "mean", "mean", _poison)
    median_strategy, median = _federate(kinships_root, tmp_path / "median", "median", _poison)
    scale = float(np.abs(clean_strategy.state.table).max())
    assert float(np.abs(mean_strategy.state.table).max()) > 10 * scale, "the mean lets one party move every shared row"
    assert float(np.abs(median_strategy.state.table).max()) < 2 * scale
    print(f"honest test MRR: clean {clean:.4f}, poisoned mean {mean:.4f}, poisoned median {median:.4f}")
    assert median > mean + 0.05 and median > 0.7 * clean, (clean, mean, median)
