"""The ``entity-dropout`` / ``relation-dropout`` keys: dropout on the rows where training looks them up,
and nowhere else (evaluation, the exchanged rows)."""

from __future__ import annotations

import pytest
import torch

from client.kge.candidate_scoring import score_tails
from client.kge.config import ConfigError, KGEConfig
from client.kge.models import build_model, entity_embedding, relation_embeddings, seeded
from client.kge.training import LocalTrainer

MODELS = ["TransE", "RotatE", "DistMult", "ComplEx"]


def _model(nations, model: str, **dropout: float) -> torch.nn.Module:
    with seeded(0):
        return build_model(KGEConfig(model=model, embedding_dim=8, **dropout), nations.train)


@pytest.mark.parametrize("model", MODELS)
def test_training_scores_vary_and_evaluation_scores_equal_the_model_without_dropout(nations, model: str) -> None:
    plain = _model(nations, model)
    dropped = _model(nations, model, entity_dropout=0.5, relation_dropout=0.3)
    triples = nations.train.mapped_triples[:16]
    candidates = torch.arange(nations.train.num_entities)
    dropped.train()
    with seeded(1):
        first = score_tails(dropped, triples[:, :2], candidates)
    with seeded(2):
        second = score_tails(dropped, triples[:, :2], candidates)
    assert not torch.allclose(first, second), f"{model}: training lookups are not dropped out"
    dropped.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(
            score_tails(dropped, triples[:, :2], candidates), score_tails(plain, triples[:, :2], candidates)
        )
        assert torch.allclose(dropped.score_hrt(triples), plain.score_hrt(triples))


@pytest.mark.parametrize(
    ("entity", "relation", "entity_dropped", "relations_dropped"), [(0.4, 0.0, True, False), (0.0, 0.2, False, True)]
)
def test_each_key_sets_dropout_on_its_own_tables_only(
    nations, entity, relation, entity_dropped, relations_dropped
) -> None:
    model = _model(nations, "DistMult", entity_dropout=entity, relation_dropout=relation)
    table = entity_embedding(model)
    assert (table.dropout is not None) == entity_dropped
    if entity_dropped:
        assert table.dropout.p == pytest.approx(entity)
    for relations in relation_embeddings(model):
        assert (relations.dropout is not None) == relations_dropped
        if relations_dropped:
            assert relations.dropout.p == pytest.approx(relation)


def test_no_dropout_by_default(nations) -> None:
    model = _model(nations, "ComplEx")
    assert all(table.dropout is None for table in (entity_embedding(model), *relation_embeddings(model)))


@pytest.mark.parametrize("key", ["entity_dropout", "relation_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_a_dropout_outside_0_to_1_is_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{key.replace('_', '-')} must be in \\[0, 1\\)"):
        KGEConfig(**{key: value})


def test_a_round_with_dropout_trains_and_leaves_the_exchanged_rows_undropped(nations) -> None:
    """One local epoch of ComplEx (complex rows) with dropout: the loss is finite, the rows change, and
    the rows the trainer hands out are the table itself (no dropout mask applied to them)."""
    config = KGEConfig(
        model="ComplEx", embedding_dim=8, local_epochs=1, batch_size=64, entity_dropout=0.3, relation_dropout=0.3
    )
    trainer = LocalTrainer(nations, config, device="cpu")
    before = trainer.get_entity_embeddings().copy()
    (loss,) = trainer.train(1)
    after = trainer.get_entity_embeddings()
    assert abs(loss) < float("inf")
    assert not (after == before).all()
    stored = entity_embedding(trainer.model)._embeddings.weight.detach()
    assert torch.equal(
        torch.as_tensor(after), torch.view_as_real(stored).flatten(-2) if stored.is_complex() else stored
    )
