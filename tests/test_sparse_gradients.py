"""Sparse entity lookups and the fused Adam step train the same model as PyKEEN's dense gradients
and torch's default Adam loop (up to float rounding): only how the work is done changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import client.kge.regimes as regimes
import client.kge.training as training
from client.kge.config import KGEConfig
from client.kge.models import entity_embedding
from client.kge.training import LocalTrainer


def _trained(graph, config: KGEConfig, epochs: int) -> tuple[list[float], np.ndarray, LocalTrainer]:
    trainer = LocalTrainer(graph, config)
    losses = trainer.train(epochs)
    return losses, trainer.get_entity_embeddings(), trainer


@pytest.mark.parametrize(
    "sets",
    [
        {"model": "ComplEx", "loss": "crossentropy"},
        {"model": "TransE"},
        {"model": "DistMult", "training_loop": "slcwa", "num_negs_per_pos": 8},
    ],
)
def test_same_training_as_dense_gradients_and_the_default_adam(nations, monkeypatch, sets) -> None:
    config = KGEConfig(embedding_dim=32, batch_size=256, learning_rate=1e-2, **sets)
    losses, rows, trainer = _trained(nations, config, epochs=3)
    weight = entity_embedding(trainer.model)._embeddings
    assert weight.sparse and trainer.loop.optimizer.defaults.get("fused") is True

    monkeypatch.setattr(training, "sum_entity_gradients_sparsely", lambda model: None)
    monkeypatch.setattr(regimes, "FUSED_OPTIMIZERS", frozenset())
    dense_losses, dense_rows, dense = _trained(nations, config, epochs=3)
    assert not entity_embedding(dense.model)._embeddings.sparse and not dense.loop.optimizer.defaults.get("fused")

    np.testing.assert_allclose(losses, dense_losses, rtol=1e-4)
    np.testing.assert_allclose(rows, dense_rows, atol=1e-4)
    assert not np.array_equal(rows, LocalTrainer(nations, config).get_entity_embeddings())  # it did train


def test_one_batch_gradient_equals_the_dense_one(nations) -> None:
    config = KGEConfig(model="ComplEx", embedding_dim=16, loss="crossentropy")
    grads = []
    for sparse in (True, False):
        trainer = LocalTrainer(nations, config)
        embeddings = entity_embedding(trainer.model)._embeddings
        embeddings.sparse = sparse  # the dense run: PyKEEN's own lookups (its hook only acts on sparse grads)
        batch = nations.train.mapped_triples[:64]
        torch.manual_seed(0)
        loss = trainer.loop._process_batch(batch, 0, 64)
        loss.backward()
        assert not embeddings.weight.grad.is_sparse  # densified once, after the backward pass
        grads.append(embeddings.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
