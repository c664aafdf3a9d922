"""Trained downstream protocols on given rows (client/kge/protocols.py): the basics of a fair re-fit.

One client of Nations split over 2 clients (FedE relation partition): a few dozen entities, a
few hundred triples, so every run takes a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest

from client.kge.config import KGEConfig
from client.kge.models import entity_embedding
from client.kge.protocols import DownstreamBudget, as_trained_trainer, relations_fit, run_protocol
from client.kge.training import EmbeddingShapeError, LocalTrainer


@pytest.fixture(scope="module")
def client():
    from kg_datasets import load_federated

    return load_federated("Nations", num_clients=2, seed=0).clients[0]


def small(model: str = "TransE", **changes: object) -> KGEConfig:
    return KGEConfig(model=model, embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=1e-2).replace(
        **changes
    )


def trained_rows(client, config: KGEConfig, epochs: int = 3) -> tuple[np.ndarray, LocalTrainer]:
    trainer = LocalTrainer(client, config, device="cpu")
    trainer.train(epochs)
    return trainer.get_entity_embeddings(), trainer


@pytest.mark.parametrize(("model", "constrainer"), [("TransE", "model-default"), ("RotatE", "none")])
def test_fresh_refit_keeps_rows_bit_identical_even_with_a_normalizing_constrainer(client, model, constrainer) -> None:
    config = small(model, entity_constrainer=constrainer)
    rows, _ = trained_rows(client, config)
    # rows that are NOT unit-norm: TransE's default constrainer would re-normalize them
    rows = rows * np.linspace(0.5, 2.0, rows.shape[0], dtype=np.float32)[:, None]
    run = run_protocol(
        "relation-refit:fresh",
        client,
        config,
        rows,
        relation_state=None,
        budget=DownstreamBudget(max_epochs=3, patience=3),
    )
    np.testing.assert_array_equal(run.trainer.get_entity_embeddings(), rows)
    assert not entity_embedding(run.trainer.model)._embeddings.weight.requires_grad
    assert run.init == "fresh" and run.epochs == 3


def test_equal_rows_give_equal_metrics_and_different_rows_differ(client) -> None:
    """The rows are the only difference: same rows in -> same numbers out (same relation init, seeds)."""
    config = small()
    rows, _ = trained_rows(client, config)
    budget = DownstreamBudget(max_epochs=2, patience=2)

    def tested(these):
        return run_protocol("relation-refit:fresh", client, config, these, relation_state=None, budget=budget).test()[0]

    first = tested(rows)
    assert tested(rows.copy()) == first
    noisy = rows + 0.3 * np.random.default_rng(0).standard_normal(rows.shape).astype(np.float32)
    assert tested(noisy) != first


def test_refit_learns_over_fresh_untrained_relations(client) -> None:
    config = small()
    rows, _ = trained_rows(client, config, epochs=10)
    untrained = run_protocol(
        "relation-refit:fresh", client, config, rows, relation_state=None, budget=DownstreamBudget(0, 1)
    )
    refit = run_protocol(
        "relation-refit:fresh",
        client,
        config,
        rows,
        relation_state=None,
        budget=DownstreamBudget(max_epochs=15, patience=15),
    )
    assert refit.valid > untrained.valid
    assert refit.test()[0]["standard"]["mrr"] > untrained.test()[0]["standard"]["mrr"]


def test_as_trained_accepts_relations_or_a_full_private_state(client) -> None:
    config = small("DistMult")
    rows, trainer = trained_rows(client, config)
    expected = {p: trainer.evaluate("test", p) for p in ("standard", "fede")}
    relation_state = {
        k.removeprefix("model/"): v for k, v in trainer.get_private_state().items() if k.startswith("model/")
    }
    for state in (relation_state, trainer.get_private_state()):  # the full state (optimizer moments) works too
        run = run_protocol("as-trained", client, config, rows, relation_state=state, budget=DownstreamBudget())
        assert run.test()[0] == expected
    assert relations_fit(client, config, relation_state)
    assert not relations_fit(client, config, {"relation_representations.0._embeddings.weight": np.zeros((2, 3))})
    assert not relations_fit(client, config, None)
    assert as_trained_trainer(client, config, relation_state).epochs_done == 0


def test_wrong_shape_rows_fail_naming_the_client(client) -> None:
    with pytest.raises(EmbeddingShapeError, match="client 0"):
        run_protocol(
            "relation-refit:fresh",
            client,
            small(),
            np.zeros((3, 8), dtype=np.float32),
            relation_state=None,
            budget=DownstreamBudget(1, 1),
        )
    rows = np.zeros((client.num_entities, 8), dtype=np.float32)
    rows[1, 2] = np.nan
    with pytest.raises(EmbeddingShapeError, match="row 1"):
        run_protocol("relation-refit:fresh", client, small(), rows, relation_state=None, budget=DownstreamBudget(1, 1))
