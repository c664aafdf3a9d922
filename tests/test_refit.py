"""Downstream relation re-fit on frozen entity rows (client/kge/refit.py).

One client of Nations split over 2 clients (FedE relation partition): a few dozen entities, a
few hundred triples, so every re-fit takes a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.kge.config import KGEConfig
from client.kge.models import entity_embedding, relation_embeddings
from client.kge.refit import PROTOCOL_NAMES, evaluate_as_trained, refit_relations
from client.kge.training import EmbeddingShapeError, LocalTrainer


@pytest.fixture(scope="module")
def client():
    from kg_datasets import load_federated

    return load_federated("Nations", num_clients=2, seed=0).clients[0]


def small(model: str = "TransE", **changes: object) -> KGEConfig:
    return KGEConfig(model=model, embedding_dim=8, batch_size=128, num_negs_per_pos=4, learning_rate=1e-2).replace(**changes)


def trained_rows(client, config: KGEConfig, epochs: int = 3) -> tuple[np.ndarray, LocalTrainer]:
    trainer = LocalTrainer(client, config, device="cpu")
    trainer.train(epochs)
    return trainer.get_entity_embeddings(), trainer


def _relation_weights(trainer: LocalTrainer) -> list[np.ndarray]:
    return [r._embeddings.weight.detach().cpu().numpy().copy() for r in relation_embeddings(trainer.model)]


@pytest.mark.parametrize(("model", "constrainer"), [("TransE", "model-default"), ("RotatE", "none")])
def test_refit_keeps_entity_rows_bit_identical_and_moves_relations(client, model: str, constrainer: str) -> None:
    config = small(model, entity_constrainer=constrainer)
    rows, _ = trained_rows(client, config)
    # rows that are NOT unit-norm: TransE's default constrainer would re-normalize them
    rows = rows * np.linspace(0.5, 2.0, rows.shape[0], dtype=np.float32)[:, None]
    fresh = _relation_weights(LocalTrainer(client, config, device="cpu"))
    result = refit_relations(client, config, rows, epochs=3, device="cpu")
    assert result.trainer is not None
    np.testing.assert_array_equal(result.trainer.get_entity_embeddings(), rows)
    assert not entity_embedding(result.trainer.model)._embeddings.weight.requires_grad
    after = _relation_weights(result.trainer)
    assert any(not np.allclose(a, b) for a, b in zip(after, fresh, strict=True)), "relations did not train"
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert set(result.metrics) == set(PROTOCOL_NAMES)
    assert set(result.metrics["standard"]) == {"mrr", "hits@1", "hits@3", "hits@10", "num_triples"}
    assert set(result.metrics["fede"]) == {"mrr", "hits@1", "hits@5", "hits@10", "num_triples"}


def test_equal_rows_give_equal_metrics_and_different_rows_differ(client) -> None:
    """Refinement is the only difference: same rows in -> same numbers out (same relation init, seeds)."""
    config = small()
    rows, _ = trained_rows(client, config)
    first = refit_relations(client, config, rows, epochs=2, device="cpu")
    second = refit_relations(client, config, rows.copy(), epochs=2, device="cpu")
    assert first.metrics == second.metrics
    assert first.losses == second.losses
    other = refit_relations(client, config, rows + 0.3 * np.random.default_rng(0).standard_normal(rows.shape).astype(np.float32),
                            epochs=2, device="cpu")
    assert other.metrics != first.metrics


def test_refit_improves_over_no_refit(client) -> None:
    """The re-fit learns: after some epochs the MRR beats fresh, untrained relations on the same rows."""
    config = small()
    rows, _ = trained_rows(client, config, epochs=10)
    untrained = refit_relations(client, config, rows, epochs=0, device="cpu")
    refit = refit_relations(client, config, rows, epochs=15, device="cpu")
    assert refit.metrics["standard"]["mrr"] > untrained.metrics["standard"]["mrr"]


def test_as_trained_matches_the_trainer_own_evaluation(client) -> None:
    config = small("DistMult")
    rows, trainer = trained_rows(client, config)
    expected = {p: trainer.evaluate("test", p) for p in PROTOCOL_NAMES}
    relation_state = {k.removeprefix("model/"): v for k, v in trainer.get_private_state().items() if k.startswith("model/")}
    result = evaluate_as_trained(client, config, rows, relation_state, device="cpu")
    assert result.metrics == expected
    # the full private state (optimizer moments included) works too
    assert evaluate_as_trained(client, config, rows, trainer.get_private_state(), device="cpu").metrics == expected


def test_wrong_shape_rows_fail_naming_the_client(client) -> None:
    with pytest.raises(EmbeddingShapeError, match="client 0"):
        refit_relations(client, small(), np.zeros((3, 8), dtype=np.float32), epochs=1, device="cpu")
    rows = np.zeros((client.num_entities, 8), dtype=np.float32)
    rows[1, 2] = np.nan
    with pytest.raises(EmbeddingShapeError, match="row 1"):
        refit_relations(client, small(), rows, epochs=1, device="cpu")
