"""The ``reciprocal-relations`` key: the model is built on PyKEEN's inverse triples (a second row ``r^-1`` per
relation; heads of ``(?, r, t)`` scored as tails of ``(t, r^-1, ?)``) and every place that scores or copies
relation rows follows PyKEEN's id mapping.

On PyKEEN's bundled Nations graph (14 entities, 55 relations) with tiny sizes: each test takes seconds. The
reference for the scores is PyKEEN's own ``predict_t`` / ``predict_h`` / ``predict_hrt`` (which map the graph's
relation ids to the model's rows) and its ``RankBasedEvaluator``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import evaluation_against_pykeen, load_script, shared_negatives_batch
from pykeen.triples import CoreTriplesFactory

from client.kge.candidate_scoring import has_fast_path, score_heads, score_tails, score_triples
from client.kge.collection import CollectionAdapter
from client.kge.config import ConfigError, KGEConfig
from client.kge.evaluation import evaluate_link_prediction
from client.kge.models import (
    build_model,
    entity_embedding,
    model_triples_factory,
    nssa_margin,
    relation_embeddings,
    relation_rows,
    seeded,
)
from client.kge.structure_view import structure_view_from_model
from client.kge.training import LocalTrainer, PrivateStateError

MODELS = ["TransE", "RotatE", "DistMult", "ComplEx"]


def reciprocal(model: str = "TransE", **changes: object) -> KGEConfig:
    return KGEConfig(
        model=model,
        embedding_dim=8,
        batch_size=256,
        num_negs_per_pos=8,
        learning_rate=1e-2,
        training_loop="sharednegatives",
        reciprocal_relations=True,
    ).replace(**changes)


def _model(nations: SimpleNamespace, name: str, seed: int = 7, **changes: object):
    with seeded(seed):
        return build_model(reciprocal(name, **changes), nations.train)


# --- the model and its factory ----------------------------------------------------------------


def test_the_model_is_built_on_pykeens_inverse_triples(nations: SimpleNamespace) -> None:
    model = _model(nations, "ComplEx")
    num_relations = nations.train.num_relations
    assert model.use_inverse_triples and model.num_relations == 2 * num_relations
    assert model.num_real_relations == num_relations
    assert all(table._embeddings.weight.shape[0] == 2 * num_relations for table in relation_embeddings(model))
    assert entity_embedding(model)._embeddings.weight.shape[0] == nations.num_entities
    factory = model_triples_factory(reciprocal(), nations.train)
    assert factory.create_inverse_triples and factory.num_relations == 2 * num_relations
    assert torch.equal(factory.mapped_triples, nations.train.mapped_triples)  # the graph's own ids
    assert not nations.train.create_inverse_triples  # the party's factory is left as it was
    # PyKEEN's default inverter: r's row is 2r, r^-1's row 2r + 1
    relations = torch.tensor([0, 3, 54])
    assert relation_rows(model, relations).tolist() == [0, 6, 108]
    assert relation_rows(model, relations, inverse=True).tolist() == [1, 7, 109]


def test_the_default_builds_the_model_without_inverse_triples(nations: SimpleNamespace) -> None:
    config = reciprocal(reciprocal_relations=False)
    assert KGEConfig().reciprocal_relations is False
    assert model_triples_factory(config, nations.train) is nations.train
    trainer = LocalTrainer(nations, config)
    assert trainer.train_factory is nations.train
    assert not trainer.model.use_inverse_triples
    assert relation_embeddings(trainer.model)[0]._embeddings.weight.shape[0] == nations.train.num_relations
    relations = torch.tensor([0, 3, 54])
    assert relation_rows(trainer.model, relations) is relations
    with pytest.raises(ValueError, match="no inverse relations"):
        relation_rows(trainer.model, relations, inverse=True)


def test_a_non_boolean_value_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="reciprocal-relations"):
        KGEConfig.from_run_config({"reciprocal-relations": "maybe"})
    assert KGEConfig.from_run_config({"reciprocal-relations": True}).reciprocal_relations is True


# --- scoring: the fast paths equal PyKEEN's predictions ---------------------------------------


@pytest.mark.parametrize("name", [*MODELS, "TransH"])
def test_candidate_scores_equal_pykeen_predictions(nations: SimpleNamespace, name: str) -> None:
    model = _model(nations, name)
    assert has_fast_path(model) == (name != "TransH")  # TransH exercises PyKEEN's own scoring
    triples = nations.train.mapped_triples[:9]
    candidates = torch.tensor([0, 3, 3, 13, 5])
    everyone = torch.arange(nations.num_entities)
    with torch.no_grad():
        torch.testing.assert_close(
            score_tails(model, triples[:, :2], candidates),
            model.predict_t(triples[:, :2], tails=candidates),
            rtol=1e-5,
            atol=1e-5,
        )
        heads = score_heads(model, triples[:, 1:], candidates)
        torch.testing.assert_close(heads, model.predict_h(triples[:, 1:], heads=candidates), rtol=1e-5, atol=1e-5)
        # PyKEEN's predict_h is the tail prediction of (t, r^-1): the inverse rows, not the forward ones
        inverse = torch.stack([triples[:, 2], 2 * triples[:, 1] + 1], dim=1)
        torch.testing.assert_close(heads, model.score_t(inverse, tails=candidates), rtol=1e-5, atol=1e-5)
        # the true triples, as each side ranks them
        rows = torch.arange(triples.shape[0])
        torch.testing.assert_close(score_triples(model, triples, "tail"), model.predict_hrt(triples))
        torch.testing.assert_close(
            score_triples(model, triples, "head")[:, 0],
            model.predict_h(triples[:, 1:], heads=everyone)[rows, triples[:, 0]],
            rtol=1e-5,
            atol=1e-5,
        )


def test_the_sides_use_different_rows(nations: SimpleNamespace) -> None:
    """A reciprocal model's head scores are not its forward relation's (the inverse rows are their own)."""
    model = _model(nations, "DistMult")
    triples = nations.train.mapped_triples[:9]
    candidates = torch.arange(nations.num_entities)
    with torch.no_grad():
        forward = torch.stack([triples[:, 1] * 2, triples[:, 2]], dim=1)
        assert not torch.allclose(
            score_heads(model, triples[:, 1:], candidates), model.score_h(forward, heads=candidates)
        )
        assert not torch.allclose(score_triples(model, triples, "head"), score_triples(model, triples, "tail"))


def test_score_triples_names_a_bad_target(nations: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="target must be 'head' or 'tail', got 'relation'"):
        score_triples(_model(nations, "TransE"), nations.train.mapped_triples[:2], "relation")


# --- the evaluator agrees with PyKEEN's own evaluate ------------------------------------------


@pytest.mark.parametrize(("name", "protocol"), [(m, "standard") for m in MODELS] + [("ComplEx", "fede")])
def test_fast_evaluation_equals_pykeen_evaluate(nations: SimpleNamespace, name: str, protocol: str) -> None:
    model = _model(nations, name)
    model.eval()
    got, results, side = evaluation_against_pykeen(model, nations, protocol)
    assert got["mrr"] == pytest.approx(results.get_metric(f"{side}.realistic.inverse_harmonic_mean_rank"), abs=1e-6)
    assert got["hits@10"] == pytest.approx(results.get_metric(f"{side}.realistic.hits_at_10"), abs=1e-6)
    if protocol == "standard":  # both sides count, the head side (the inverse rows) included
        head = results.get_metric("head.realistic.inverse_harmonic_mean_rank")
        tail = results.get_metric("tail.realistic.inverse_harmonic_mean_rank")
        assert got["mrr"] == pytest.approx((head + tail) / 2, abs=1e-6)


def test_the_evaluator_refuses_relation_ids_beyond_the_graphs(nations: SimpleNamespace) -> None:
    """Ids of the model's inverse rows are not relations of the graph."""
    model = _model(nations, "TransE")
    beyond = nations.test.mapped_triples[:3].clone()
    beyond[:, 1] = nations.train.num_relations  # a row of the model (an inverse), not a relation of the graph
    with pytest.raises(ValueError, match=r"relation ids outside \[0, 55\)"):
        evaluate_link_prediction(model, beyond, filter_triples=[nations.train.mapped_triples])


# --- training -----------------------------------------------------------------------------------


def test_one_batch_loss_is_the_mean_of_each_sides_reference_nssa(nations: SimpleNamespace) -> None:
    """The shared-negatives loss of a reciprocal model: per side, NSSA of that side's positive score (the
    forward triple for tails, the inverse triple for heads) against that side's filtered negatives, written
    out by hand over PyKEEN's predictions; the sides averaged."""
    config = reciprocal(num_negs_per_pos=12, corruption_scheme="head,tail", adversarial_temperature=0.5)
    trainer = LocalTrainer(nations, config)
    batch, got, heads, tails, known = shared_negatives_batch(trainer, trainer.train_factory)
    model, margin, alpha = trainer.model, nssa_margin(config), config.adversarial_temperature
    everyone = torch.arange(nations.num_entities)
    sides = []
    with torch.no_grad():
        for side, drawn in (("head", heads), ("tail", tails)):
            losses_pos, losses_neg = [], []
            for h, r, t in batch.tolist():
                if side == "head":
                    scores = model.predict_h(torch.tensor([[r, t]]), heads=everyone)[0]
                    pos, kept = scores[h], [c for c in drawn.tolist() if (c, r, t) not in known]
                else:
                    scores = model.predict_t(torch.tensor([[h, r]]), tails=everyone)[0]
                    pos, kept = scores[t], [c for c in drawn.tolist() if (h, r, c) not in known]
                # PyKEEN's rule for a row whose negatives are all filtered: it scores them as 0 (Nations' head
                # side with 6 of 14 entities drawn has such rows)
                neg = scores[torch.tensor(kept, dtype=torch.long)] if kept else torch.zeros(1)
                weights = torch.softmax(alpha * neg, dim=0)
                losses_pos.append(-torch.nn.functional.logsigmoid(margin + pos))
                losses_neg.append((weights * -torch.nn.functional.logsigmoid(-neg - margin)).sum())
            sides.append(0.5 * (torch.stack(losses_pos).mean() + torch.stack(losses_neg).mean()))
    want = torch.stack(sides).mean()
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)


def _valid_mrr(trainer: LocalTrainer) -> float:
    return trainer.evaluate("valid")["mrr"]


def _random_valid_mrr(nations: SimpleNamespace) -> float:
    """The expected filtered MRR of ranking Nations' valid triples at random (both sides): a side with ``n``
    candidates left after filtering has ``E[1 / rank] = H(n) / n``."""
    splits = (nations.train, nations.valid, nations.test)
    known = {tuple(t) for split in splits for t in split.mapped_triples.tolist()}
    entities = range(nations.num_entities)
    values = []
    for h, r, t in nations.valid.mapped_triples.tolist():
        for others in (
            sum((h, r, c) in known for c in entities if c != t),
            sum((c, r, t) in known for c in entities if c != h),
        ):
            n = nations.num_entities - others
            values.append(float(np.sum(1.0 / np.arange(1, n + 1))) / n)
    return float(np.mean(values))


@pytest.mark.parametrize("model", MODELS)
def test_each_model_learns_with_shared_negatives(nations: SimpleNamespace, model: str) -> None:
    """A few epochs: finite, falling loss; every relation row, forward and inverse, trained; valid MRR
    above the untrained model's and above ranking at random (Nations' filtered random MRR is ~0.37)."""
    config = reciprocal(model, embedding_dim=16, batch_size=512, learning_rate=3e-2, num_negs_per_pos=16)
    trainer = LocalTrainer(nations, config)
    tables = [table._embeddings.weight.detach().clone() for table in relation_embeddings(trainer.model)]
    before = _valid_mrr(trainer)
    losses = trainer.train(10)
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    used = torch.unique(nations.train.mapped_triples[:, 1])
    for old, table in zip(tables, relation_embeddings(trainer.model), strict=True):
        changed = (table._embeddings.weight.detach() != old).flatten(1).any(dim=1)
        assert changed[relation_rows(trainer.model, used)].all()
        assert changed[relation_rows(trainer.model, used, inverse=True)].all()
    after, random_mrr = _valid_mrr(trainer), _random_valid_mrr(nations)
    assert after > max(before + 0.05, random_mrr + 0.04), (before, after, random_mrr)


def test_pykeens_slcwa_loop_trains_on_the_inverse_triples(nations: SimpleNamespace) -> None:
    """``slcwa`` is given the inverse-triples factory: PyKEEN's instances hold (h, 2r, t) and (t, 2r+1, h)
    for every train triple, so every inverse row is trained, and the model learns."""
    config = reciprocal(
        "DistMult",
        embedding_dim=16,
        batch_size=512,
        learning_rate=3e-2,
        training_loop="slcwa",
        corruption_scheme="tail",
    )
    trainer = LocalTrainer(nations, config)
    assert trainer.train_factory.create_inverse_triples
    instances = trainer.train_factory._add_inverse_triples_if_necessary(trainer.train_factory.mapped_triples)
    assert instances.shape[0] == 2 * nations.train.num_triples and int(instances[:, 1].max()) == 109
    old = relation_embeddings(trainer.model)[0]._embeddings.weight.detach().clone()
    before = _valid_mrr(trainer)
    losses = trainer.train(5)
    assert all(np.isfinite(losses))
    changed = (relation_embeddings(trainer.model)[0]._embeddings.weight.detach() != old).any(dim=1)
    used = torch.unique(nations.train.mapped_triples[:, 1])
    assert changed[relation_rows(trainer.model, used, inverse=True)].all()
    assert _valid_mrr(trainer) > before + 0.05


# --- private state ------------------------------------------------------------------------------


def test_private_state_round_trips_the_doubled_relation_table(nations: SimpleNamespace) -> None:
    config = reciprocal("RotatE")
    uninterrupted = LocalTrainer(nations, config)
    uninterrupted.train(1)
    state, rows = uninterrupted.get_private_state(), uninterrupted.get_entity_embeddings()
    relation_keys = [key for key in state if key.startswith("model/") and "relation" in key]
    assert relation_keys and all(state[key].shape[0] == 2 * nations.train.num_relations for key in relation_keys)
    resumed = LocalTrainer(nations, config)
    resumed.set_private_state(state)
    resumed.set_entity_embeddings(rows)
    for key in relation_keys:
        np.testing.assert_array_equal(resumed.get_private_state()[key], state[key])
    assert resumed.train(2) == uninterrupted.train(2)
    np.testing.assert_array_equal(resumed.get_entity_embeddings(), uninterrupted.get_entity_embeddings())
    # a plain model's state does not fit a reciprocal model (nor the other way round)
    plain = LocalTrainer(nations, config.replace(reciprocal_relations=False))
    with pytest.raises(PrivateStateError, match="has shape"):
        resumed.set_private_state(plain.get_private_state())
    with pytest.raises(PrivateStateError, match="has shape"):
        plain.set_private_state(state)


# --- the other readers of relation rows ---------------------------------------------------------


@pytest.mark.parametrize("name", ["TransE", "ComplEx"])
def test_collection_copies_forward_and_inverse_rows_to_the_client_model(nations: SimpleNamespace, name: str) -> None:
    """A client's model filled from the pooled model scores its triples as the pooled model scores them in
    the pooled ids (its entities renumbered, its relations after an offset), on both sides."""
    offset, num_relations = 3, nations.train.num_relations
    entity_ids = np.random.default_rng(0).permutation(20)[: nations.num_entities]
    client = SimpleNamespace(
        client_id=0, train=nations.train, num_relations=num_relations, entity_ids=entity_ids, test=nations.test
    )
    config = reciprocal(name)
    pooled = CoreTriplesFactory.create(
        mapped_triples=torch.tensor([[0, 0, 1]]), num_entities=20, num_relations=num_relations + offset + 2
    )
    with seeded(1):
        central = build_model(config, pooled)
    local = CollectionAdapter(client, offset, config).load_from(central)
    triples = nations.test.mapped_triples[:12]
    ids = torch.as_tensor(entity_ids)
    globals_ = torch.stack([ids[triples[:, 0]], triples[:, 1] + offset, ids[triples[:, 2]]], dim=1)
    everyone = torch.arange(nations.num_entities)
    with torch.no_grad():
        torch.testing.assert_close(
            score_tails(local, triples[:, :2], everyone), score_tails(central, globals_[:, :2], ids[everyone])
        )
        torch.testing.assert_close(
            score_heads(local, triples[:, 1:], everyone), score_heads(central, globals_[:, 1:], ids[everyone])
        )


def test_the_structure_view_reads_the_forward_rows(nations: SimpleNamespace) -> None:
    model = _model(nations, "RotatE")
    view = structure_view_from_model(model, nations.train.mapped_triples, mix=0.5)
    forward = relation_rows(model, torch.arange(nations.train.num_relations))
    model.eval()
    with torch.no_grad():
        want = relation_embeddings(model)[0](indices=forward)
    assert view.relations.shape[0] == nations.train.num_relations
    torch.testing.assert_close(view.relations, torch.view_as_real(want).flatten(-2))  # kept as real pairs


def test_the_collusion_attack_scores_the_forward_relations_only(nations: SimpleNamespace) -> None:
    attack = load_script("attack_reconstruction")
    model = _model(nations, "TransE").eval()
    rows = entity_embedding(model)._embeddings.weight.detach().numpy()
    scorer, _ = attack.relation_scorer(model, rows)
    heads, tails = torch.tensor([0, 5, 11]), torch.tensor([2, 3, 13])
    got = scorer(heads, tails)
    relations = torch.arange(nations.train.num_relations)
    with torch.no_grad():
        for i, h in enumerate(heads.tolist()):
            for j, t in enumerate(tails.tolist()):
                triples = torch.stack([torch.full_like(relations, h), relations, torch.full_like(relations, t)], 1)
                assert float(got[i, j]) == pytest.approx(float(score_triples(model, triples, "tail").max()), rel=1e-5)


def test_collection_outputs_give_each_client_its_forward_and_inverse_rows(tmp_path) -> None:
    """The collection setting end to end with a reciprocal model: each client's written relation tables (twice
    its relations) and the pooled entity rows, loaded into the client's own model, score its test triples
    exactly as the run reported (the pooled model's rows, copied by the collection adapter)."""
    from client.kge.centralized import run_collection
    from client.kge.protocols import as_trained_trainer
    from kg_datasets import load_federated

    kg = load_federated("Nations", num_clients=2, seed=0)
    config = reciprocal("ComplEx", batch_size=128, num_negs_per_pos=4)
    result = run_collection(kg, config, 2, device="cpu", out_dir=tmp_path, progress=lambda line: None)
    table = np.load(tmp_path / "entity_embeddings.npy")
    for client in kg.clients:
        state = dict(np.load(tmp_path / "clients" / str(client.client_id) / "relation_embeddings.npz"))
        assert all(value.shape[0] == 2 * client.num_relations for value in state.values())
        trainer = as_trained_trainer(client, config, state, "cpu")
        trainer.set_entity_embeddings(table[client.entity_ids])
        reported = result["test"]["clients"][str(client.client_id)]["mrr"]
        assert trainer.evaluate("test")["mrr"] == pytest.approx(reported, abs=1e-6)
