"""Isolation / collection baselines and early stopping, on PyKEEN's bundled Kinships (104 entities).

Kinships is split FedE-style over 3 clients by ``kg_datasets`` (disjoint relations, every client
holding nearly all entities). Sizes are shrunk so the learning check takes seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client.kge.centralized import (
    run_collection,
    run_fede_in_process,
    run_isolation,
    untrained_metrics,
)
from client.kge.collection import CollectionAdapter, pool_clients
from client.kge.config import KGEConfig
from client.kge.early_stopping import EarlyStopping
from client.kge.models import build_model, seeded


@pytest.fixture(scope="module")
def kinships():
    from kg_datasets import load_federated

    return load_federated("Kinships", num_clients=3, seed=0)


def fast(model: str = "DistMult", **changes: object) -> KGEConfig:
    return KGEConfig(
        model=model,
        embedding_dim=16,
        batch_size=512,
        num_negs_per_pos=8,
        learning_rate=0.02,
        local_epochs=3,
        eval_every=2,
    ).replace(**changes)


# --- early stopping (pure) ---------------------------------------------------------------------


def test_early_stopping_counts_checks_without_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(5, 0.1) and stopper.best_round == 5
    assert not stopper.update(10, 0.1)  # equal is not better
    assert not stopper.should_stop
    assert stopper.update(15, 0.2) and stopper.checks_without_improvement == 0
    stopper.update(20, 0.15)
    stopper.update(25, 0.19)
    assert stopper.should_stop and stopper.best_round == 15 and stopper.best_value == 0.2
    again = EarlyStopping.from_state(2, stopper.state())
    assert again.state() == stopper.state() and again.should_stop
    fresh = EarlyStopping(patience=2)
    assert fresh.update(5, 0.1)
    assert not fresh.update(10, math.nan) and fresh.checks_without_improvement == 1  # NaN: no improvement
    assert not fresh.update(15, -math.inf) and fresh.should_stop and fresh.best_value == 0.1


def test_round_engine_validates_on_schedule_keeps_the_best_and_stops_on_patience() -> None:
    from client.kge.round_engine import RoundEngine

    class Steps:
        def __init__(self, values, budget_round=None):
            self.values, self.budget_round, self.calls = values, budget_round, []

        def train(self, r):
            self.calls.append(("train", r))
            return r * 10

        def aggregate(self, r, updates):
            self.calls.append(("aggregate", r, updates))

        def validate(self, r):
            self.calls.append(("validate", r))
            return self.values[r]

        def keep_best(self, r):
            self.calls.append(("best", r))

        def end_round(self, r, validated, stop):
            self.calls.append(("end", r, validated, stop))
            return r == self.budget_round

    steps = Steps({2: 0.1, 4: 0.3, 6: 0.2, 8: math.nan, 9: 0.9})
    engine = RoundEngine(num_rounds=9, eval_every=2, stopper=EarlyStopping(patience=2))
    assert engine.run(steps) == 8 and engine.stopped_early and engine.stopper.best_round == 4
    assert steps.calls[:5] == [
        ("train", 1),
        ("aggregate", 1, 10),
        ("end", 1, False, False),
        ("train", 2),
        ("aggregate", 2, 20),
    ]
    assert [c[1] for c in steps.calls if c[0] == "best"] == [2, 4]
    assert steps.calls[-1] == ("end", 8, True, True)
    assert engine.run(Steps({}), first_round=9) == 8  # a stopped run runs no further round

    last = Steps({3: 0.5})  # the last round is always validated; end_round may stop the loop early
    assert RoundEngine(num_rounds=3, eval_every=5, stopper=EarlyStopping(patience=1)).run(last) == 3
    assert ("validate", 3) in last.calls and ("best", 3) in last.calls
    budget = Steps({}, budget_round=2)
    assert RoundEngine(num_rounds=9, eval_every=5).run(budget) == 2 and ("validate", 2) not in budget.calls


# --- collection: pooling and the per-client adapter ---------------------------------------------


def test_pooling_maps_every_client_triple_to_global_ids(kinships) -> None:
    pooled = pool_clients(kinships)
    assert pooled.num_entities == kinships.num_entities
    assert pooled.train.num_triples == sum(c.train.num_triples for c in kinships.clients)
    assert pooled.train.num_relations == sum(c.num_relations for c in kinships.clients)
    start = 0
    for client, offset in zip(kinships.clients, pooled.relation_offsets):
        rows = pooled.train.mapped_triples[start : start + client.train.num_triples].numpy()
        start += client.train.num_triples
        assert rows[:, 1].min() >= offset and rows[:, 1].max() < offset + client.num_relations
        # reference: the client's labelled triples through the global vocabularies
        expected = sorted(
            (kinships.entity_to_id[h], kinships.relation_to_id[r], kinships.entity_to_id[t])
            for h, r, t in client.train.triples
        )
        relation_ids = np.asarray(client.relation_ids)
        got = sorted((int(h), int(relation_ids[r - offset]), int(t)) for h, r, t in rows)
        assert got == expected


@pytest.mark.parametrize("model", ["TransE", "ComplEx"])
def test_adapter_scores_like_the_central_model(kinships, model: str) -> None:
    config = fast(model)
    pooled = pool_clients(kinships)
    with seeded(7):
        central = build_model(config, pooled.train)
    client, offset = kinships.clients[1], pooled.relation_offsets[1]
    local_model = CollectionAdapter(client, offset, config).load_from(central)
    local = client.test.mapped_triples
    ids = torch.as_tensor(client.entity_ids)
    as_global = torch.stack([ids[local[:, 0]], local[:, 1] + offset, ids[local[:, 2]]], dim=1)
    with torch.no_grad():
        expected = central.score_hrt(as_global)
        got = local_model.score_hrt(local)
    torch.testing.assert_close(got, expected)


# --- the settings run, and learn ------------------------------------------------------------------


def test_isolation_learns_far_above_untrained(kinships) -> None:
    config = fast(local_epochs=2, learning_rate=0.03)
    floor = untrained_metrics(kinships, config)["overall"]["mrr"]
    result = run_isolation(kinships, config, num_rounds=2, progress=lambda line: None)
    assert result["setting"] == "isolation" and result["rounds_trained"] == 2
    assert set(result["test"]["clients"]) == {"0", "1", "2"}
    assert [entry["round"] for entry in result["history"]] == [1, 2]
    assert "valid" in result["history"][1] and result["best_round"] == 2
    mrr = result["test"]["overall"]["mrr"]
    print(f"untrained test MRR {floor:.4f}, isolation test MRR {mrr:.4f}")
    # measured: untrained ~0.05, after 2 rounds of 2 epochs ~0.2
    assert mrr > 2.5 * floor, (mrr, floor)


def test_fede_in_process_shares_rows_and_learns(kinships, tmp_path) -> None:
    config = fast(local_epochs=2, learning_rate=0.03)
    floor = untrained_metrics(kinships, config)["overall"]["mrr"]
    result = run_fede_in_process(kinships, config, num_rounds=2, progress=lambda line: None, out_dir=tmp_path)
    assert result["setting"] == "fede" and set(result["test"]["clients"]) == {"0", "1", "2"}
    assert result["test"]["overall"]["mrr"] > 2.5 * floor
    table = np.load(tmp_path / "entity_embeddings.npy")
    assert table.shape == (kinships.num_entities, 16)
    for client in kinships.clients:
        assert (tmp_path / "clients" / str(client.client_id) / "relation_embeddings.npz").is_file()


def test_collection_runs_per_client_and_writes_embeddings(kinships, tmp_path) -> None:
    config = fast(eval_every=1)
    result = run_collection(kinships, config, num_rounds=1, progress=lambda line: None, out_dir=tmp_path)
    assert result["setting"] == "collection" and result["best_round"] == 1
    clients = result["test"]["clients"]
    assert set(clients) == {"0", "1", "2"}
    for client in kinships.clients:
        assert clients[str(client.client_id)]["num_triples"] == client.test.num_triples
    assert result["test"]["overall"]["num_triples"] == sum(c.test.num_triples for c in kinships.clients)
    table = np.load(tmp_path / "entity_embeddings.npy")
    assert table.shape == (kinships.num_entities, 16) and table.dtype == np.float32
    labels = (tmp_path / "entities.tsv").read_text().splitlines()
    assert labels[5] == f"5\t{next(k for k, v in kinships.entity_to_id.items() if v == 5)}"
    relations = np.load(tmp_path / "clients" / "2" / "relation_embeddings.npz")
    (name,) = relations.files
    assert relations[name].shape == (kinships.clients[2].num_relations, 16)


def test_schedule_stops_early_and_tests_the_best_rounds_weights() -> None:
    """The round schedule with scripted validation MRRs: the test sees the best round's weights."""
    from client.kge.in_process_rounds import run_rounds

    valid_mrr = {2: 0.30, 4: 0.50, 6: 0.45, 8: 0.40, 10: 0.90}
    weights = {"round": 0}

    def train_round(round_number):
        weights["round"] = round_number
        return {"0": [1.0 / weights["round"]]}

    def evaluate(split):
        mrr = valid_mrr[weights["round"]] if split == "valid" else float(weights["round"])
        return [{"mrr": mrr, "num_triples": 10}]

    config = KGEConfig(eval_every=2, patience=2)
    result = run_rounds(
        setting="isolation",
        config=config,
        rounds=20,
        client_ids=[0],
        train_round=train_round,
        evaluate=evaluate,
        snapshot=lambda: dict(weights),
        restore=weights.update,
        progress=lambda line: None,
    )
    # checks at rounds 2, 4, 6, 8: two without improvement after round 4 -> stop at 8
    assert result["rounds_trained"] == 8 and result["best_round"] == 4
    assert result["test"]["overall"]["mrr"] == 4.0  # the restored weights are round 4's
    assert [e["round"] for e in result["history"] if "valid" in e] == [2, 4, 6, 8]


# --- resume from the per-round checkpoint ---------------------------------------------------------


class _Interrupt(Exception):
    """Stands in for a killed process, raised from the progress line of one round."""


@pytest.mark.parametrize(
    ("runner", "model"), [(run_fede_in_process, "ComplEx"), (run_isolation, "DistMult"), (run_collection, "TransE")]
)
def test_an_interrupted_run_resumes_after_its_last_round_and_ends_as_an_uninterrupted_one(
    kinships, tmp_path, runner, model
) -> None:
    """Stopped after round 2 of 3, a second call with the same checkpoint trains only round 3 and
    reports exactly what one uninterrupted run reports (same best round, valid and test MRRs)."""
    from kg_datasets.triples import labels_in_id_order
    from server.checkpoint import CheckpointError, FolderCheckpoint

    config = fast(model, local_epochs=1, eval_every=1)
    vocabulary = labels_in_id_order(kinships.entity_to_id)

    def checkpoint(folder, changed=None):
        return FolderCheckpoint(tmp_path / folder, {**config.to_run_config(), **(changed or {})}, vocabulary)

    whole = runner(kinships, config, 3, progress=lambda line: None, checkpoint=checkpoint("whole"))

    def stop_after_round_2(line: str) -> None:
        if "round 3/3" in line:
            raise _Interrupt(line)

    with pytest.raises(_Interrupt):
        runner(kinships, config, 3, progress=stop_after_round_2, checkpoint=checkpoint("parts"))
    # the current state keeps Adam's moments (to train on), the best round's does not (tested only)
    _, arrays, _ = checkpoint("parts").load()
    assert any("optimizer/" in name for name in arrays if name.startswith("now/"))
    assert any(name.startswith("best/") for name in arrays)
    assert not any("optimizer/" in name for name in arrays if name.startswith("best/"))
    lines: list[str] = []
    resumed = runner(kinships, config, 3, progress=lines.append, checkpoint=checkpoint("parts"))

    assert resumed["resumed_after_round"] == 2 and whole["resumed_after_round"] is None
    assert lines[0].startswith(f"[{whole['setting']}] resumed after round 2")
    assert sum("valid MRR" in line for line in lines) == 1  # only round 3 was trained again
    assert [e["round"] for e in resumed["history"]] == [1, 2, 3]
    assert [e["valid"]["overall"]["mrr"] for e in resumed["history"]] == [
        e["valid"]["overall"]["mrr"] for e in whole["history"]
    ]
    assert resumed["best_round"] == whole["best_round"] and resumed["rounds_trained"] == 3
    assert resumed["test"] == whole["test"]
    # a checkpoint never resumes a run with another model-defining setting, nor another partition
    with pytest.raises(CheckpointError, match="embedding-dim"):
        runner(kinships, config, 3, progress=lambda line: None, checkpoint=checkpoint("parts", {"embedding-dim": 32}))
    if runner is not run_collection:
        from kg_datasets import load_federated

        with pytest.raises(ValueError, match="holds 3 clients' states, this run has 2 clients"):
            runner(load_federated("Kinships", num_clients=2, seed=0), config, 3, checkpoint=checkpoint("parts"))


def test_an_update_hook_is_not_combined_with_a_checkpoint(kinships, tmp_path) -> None:
    from server.checkpoint import FolderCheckpoint

    with pytest.raises(ValueError, match="update_hook"):
        run_fede_in_process(
            kinships, fast(), 1, update_hook=lambda *args: args[3], checkpoint=FolderCheckpoint(tmp_path, {}, [])
        )
