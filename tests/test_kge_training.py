"""LocalTrainer and the model helpers on PyKEEN's bundled Nations graph (14 entities, 1,592 triples).

Sizes are shrunk (dim 8, 4 negatives) so each test takes seconds on 2 cores; the behaviour
checked (continuation, no re-initialization, exact resumption) does not depend on size.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from client.kge.config import ConfigError, KGEConfig
from client.kge.models import (
    UnsupportedModelError,
    entity_dim,
    entity_embedding,
    initial_entity_table,
    nssa_margin,
    seeded,
)
from client.kge.regimes import negative_sampler_kwargs, training_regime_resolver
from client.kge.training import EmbeddingShapeError, LocalTrainer, PrivateStateError

MODELS = ["TransE", "RotatE", "DistMult", "ComplEx"]


def small(model: str = "TransE", **changes: object) -> KGEConfig:
    return KGEConfig(model=model, embedding_dim=8, batch_size=256, num_negs_per_pos=4, learning_rate=1e-2).replace(
        **changes
    )


# --- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "width"), [("TransE", 8), ("RotatE", 16), ("DistMult", 8), ("ComplEx", 16)])
def test_entity_dim_counts_complex_as_real_pairs(model: str, width: int) -> None:
    assert entity_dim(small(model)) == width


def test_initial_table_is_seeded_and_shaped() -> None:
    config = small("RotatE")
    table = initial_entity_table(config, 50, seed=1)
    assert table.shape == (50, 16) and table.dtype == np.float32
    np.testing.assert_array_equal(table, initial_entity_table(config, 50, seed=1))
    assert not np.allclose(table, initial_entity_table(config, 50, seed=2))
    assert np.isfinite(table).all() and table.std() > 0


def test_margin_only_for_distance_models() -> None:
    assert nssa_margin(small("TransE")) == 10.0
    # FedE's gamma is for a sum of complex moduli; PyKEEN's RotatE distance is their L2 norm
    rotate = nssa_margin(KGEConfig(model="RotatE", embedding_dim=128))
    assert rotate == pytest.approx(10.0 * 2 / (np.pi * 128) ** 0.5) and 0.9 < rotate < 1.1
    rows = torch.randn(20000, 128, dtype=torch.cfloat)  # the ratio the scale stands for
    ratio = float(rows.abs().norm(dim=1).mean() / rows.abs().sum(dim=1).mean())
    assert ratio == pytest.approx(2 / (np.pi * 128) ** 0.5, rel=0.02)
    assert nssa_margin(small("DistMult")) == 0.0 and nssa_margin(small("ComplEx")) == 0.0


def test_models_without_one_entity_table_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="SimplE"):
        entity_dim(small("SimplE"))
    with pytest.raises(UnsupportedModelError, match="NoSuchModel"):
        entity_dim(small("NoSuchModel"))


def test_unknown_constrainer_fails_naming_choices() -> None:
    with pytest.raises(ConfigError, match="entity-constrainer 'squash'"):
        entity_dim(small(entity_constrainer="squash"))


def test_transe_normalization_follows_config(nations: SimpleNamespace) -> None:
    plain = LocalTrainer(nations, small())
    assert entity_embedding(plain.model).constrainer is None  # FedE: no entity normalization
    normalized = LocalTrainer(nations, small(entity_constrainer="model-default"))
    normalized.train(1)
    norms = np.linalg.norm(normalized.get_entity_embeddings(), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_corruption_scheme_reaches_the_sampler(nations: SimpleNamespace) -> None:
    from pykeen.sampling import negative_sampler_resolver

    config = small(corruption_scheme="tail", num_negs_per_pos=32)
    sampler = negative_sampler_resolver.make(
        config.negative_sampler,
        pos_kwargs=negative_sampler_kwargs(config),
        mapped_triples=nations.train.mapped_triples,
    )
    positives = nations.train.mapped_triples[:64]
    with seeded(0):
        negatives, keep = sampler.sample(positives)
    assert negatives.shape == (64, 32, 3)
    # heads and relations are never corrupted; tails are, and known train triples are filtered
    assert torch.equal(negatives[..., :2], positives[:, None, :2].expand(-1, 32, -1))
    assert (negatives[..., 2] != positives[:, None, 2]).all()
    known = {tuple(t) for t in nations.train.mapped_triples.tolist()}
    kept = negatives[keep].tolist()
    assert kept and not any(tuple(t) in known for t in kept)
    with pytest.raises(ConfigError, match="takes no corruption-scheme"):
        negative_sampler_kwargs(small(negative_sampler="bernoulli", corruption_scheme="tail"))


def test_training_regimes_are_a_registry() -> None:
    assert "slcwa" in training_regime_resolver.lookup_dict
    with pytest.raises(KeyError):
        training_regime_resolver.lookup("no-such-regime")


# --- entity rows ------------------------------------------------------------------------------


def test_set_get_round_trip_is_exact(nations: SimpleNamespace) -> None:
    trainer = LocalTrainer(nations, small("ComplEx"))
    rows = np.random.default_rng(0).normal(size=(nations.num_entities, 16)).astype(np.float32)
    trainer.set_entity_embeddings(rows)
    np.testing.assert_array_equal(trainer.get_entity_embeddings(), rows)
    # the returned rows are a copy, not a view of the parameter
    trainer.get_entity_embeddings()[:] = 0
    np.testing.assert_array_equal(trainer.get_entity_embeddings(), rows)


def test_bad_rows_are_refused_naming_the_problem(nations: SimpleNamespace) -> None:
    trainer = LocalTrainer(nations, small())
    before = trainer.get_entity_embeddings()
    with pytest.raises(EmbeddingShapeError, match=r"shape \(3, 8\)"):
        trainer.set_entity_embeddings(np.zeros((3, 8), dtype=np.float32))
    bad = before.copy()
    bad[5, 2] = np.nan
    with pytest.raises(EmbeddingShapeError, match="row 5"):
        trainer.set_entity_embeddings(bad)
    np.testing.assert_array_equal(trainer.get_entity_embeddings(), before)


def test_training_continues_from_loaded_rows(nations: SimpleNamespace) -> None:
    config = small()
    trainer = LocalTrainer(nations, config)
    loaded = initial_entity_table(config, nations.num_entities, seed=123)
    trainer.set_entity_embeddings(loaded)
    assert trainer.train(0) == []
    np.testing.assert_array_equal(trainer.get_entity_embeddings(), loaded)

    losses = trainer.train(1)
    assert len(losses) == 1 and np.isfinite(losses[0])
    after = trainer.get_entity_embeddings()
    moved = np.abs(after - loaded).max()
    # one epoch of Adam (lr 1e-2, 7 steps) moves each value by at most ~7e-2; a re-initialization
    # would replace the rows by an unrelated draw of the initializer
    fresh = initial_entity_table(config, nations.num_entities, seed=0)
    assert 0 < moved < 0.1
    assert np.abs(after - loaded).mean() < 0.2 * np.abs(fresh - loaded).mean()


@pytest.mark.parametrize("model", MODELS)
def test_each_model_learns_on_nations(nations: SimpleNamespace, model: str) -> None:
    trainer = LocalTrainer(nations, small(model, embedding_dim=16))
    losses = trainer.train(4)
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]


# --- private state and seeds ------------------------------------------------------------------


def test_private_state_resumes_exactly_in_a_new_trainer(nations: SimpleNamespace) -> None:
    config = small("RotatE")
    first = LocalTrainer(nations, config)
    first.train(1)
    state = first.get_private_state()
    rows = first.get_entity_embeddings()
    assert all(isinstance(value, np.ndarray) for value in state.values())
    assert any(key.startswith("optimizer/") for key in state)
    assert not any(key.startswith("entity/") for key in state)  # rows are the server's business

    resumed = LocalTrainer(nations, config)
    resumed.set_private_state(state)
    resumed.set_entity_embeddings(rows)
    assert resumed.train(2) == first.train(2)
    np.testing.assert_array_equal(resumed.get_entity_embeddings(), first.get_entity_embeddings())
    for key, value in first.get_private_state().items():
        np.testing.assert_array_equal(resumed.get_private_state()[key], value, err_msg=key)


def test_private_state_survives_a_flower_array_record(nations: SimpleNamespace) -> None:
    from flwr.app import Array, ArrayRecord

    trainer = LocalTrainer(nations, small())
    trainer.train(1)
    state = trainer.get_private_state(include_entities=True)
    record = ArrayRecord({key: Array(value) for key, value in state.items()})
    restored = {key: array.numpy() for key, array in record.items()}
    other = LocalTrainer(nations, small(seed=99))
    other.set_private_state(restored)
    np.testing.assert_array_equal(other.get_entity_embeddings(), trainer.get_entity_embeddings())
    assert other.epochs_done == 1


def test_mismatched_private_state_is_refused(nations: SimpleNamespace) -> None:
    trainer = LocalTrainer(nations, small())
    state = trainer.get_private_state()
    key = next(k for k in state if k.startswith("model/"))
    with pytest.raises(PrivateStateError, match="missing"):
        trainer.set_private_state({k: v for k, v in state.items() if k != key})
    with pytest.raises(PrivateStateError, match="shape"):
        trainer.set_private_state({**state, key: np.zeros((1, 1), dtype=np.float32)})
    wider = LocalTrainer(nations, small(embedding_dim=4)).get_private_state()
    with pytest.raises(PrivateStateError):
        trainer.set_private_state(wider)


def test_same_seed_same_result_other_seed_other_result(nations: SimpleNamespace) -> None:
    def run(seed: int) -> np.ndarray:
        trainer = LocalTrainer(nations, small("DistMult", seed=seed))
        trainer.train(1)
        return trainer.get_entity_embeddings()

    torch.manual_seed(12345)  # the trainer must not depend on the caller's global RNG
    first = run(0)
    torch.manual_seed(54321)
    np.testing.assert_array_equal(run(0), first)
    assert not np.allclose(run(1), first)


def test_evaluate_uses_the_lead_evaluator(nations: SimpleNamespace) -> None:
    trainer = LocalTrainer(nations, small())
    metrics = trainer.evaluate("valid")
    assert metrics["num_triples"] == nations.valid.num_triples
    assert 0 < metrics["mrr"] <= 1
    fede = trainer.evaluate("test", protocol="fede")
    assert set(fede) == {"mrr", "hits@1", "hits@5", "hits@10", "num_triples"}


def test_unknown_training_loop_fails_naming_the_choices(nations: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="training-loop 'lcwa-turbo' is not one of.*slcwa"):
        LocalTrainer(nations, small(training_loop="lcwa-turbo"))


def test_diverged_training_is_an_error(nations: SimpleNamespace) -> None:
    from client.kge.training import TrainingDivergedError

    trainer = LocalTrainer(nations, small("DistMult"))
    rows = trainer.get_entity_embeddings()
    rows[:] = 3e38  # products overflow to inf: the loss is not finite
    trainer.set_entity_embeddings(rows)
    with pytest.raises(TrainingDivergedError, match="client 0: non-finite training loss"):
        trainer.train(1)


def test_unregularized_models_start_at_a_comparable_scale() -> None:
    # PyKEEN's ComplEx draws N(0, 1) rows for use with its Lp regularizer; FedE trains without one,
    # and from rows of norm ~16 (TransE's ~1.4) ComplEx stayed at random MRR on Kinships and Fed3.
    norms = {
        model: float(np.linalg.norm(initial_entity_table(KGEConfig(model=model), 500, seed=0), axis=1).mean())
        for model in MODELS
    }
    reference = norms["TransE"]
    assert all(0.5 * reference < norm < 2.0 * reference for norm in norms.values()), norms
    # with its own regularizer the model keeps its own initializer
    regularized = initial_entity_table(KGEConfig(model="ComplEx", regularizer="model-default"), 500, seed=0)
    assert np.linalg.norm(regularized, axis=1).mean() > 4 * reference
