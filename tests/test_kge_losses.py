"""The ``loss`` run-config key: PyKEEN's losses by name, in both training loops.

On PyKEEN's bundled Nations graph (14 entities) with tiny sizes: each test takes about a second.
The default stays FedE's NSSA with the margin rule and temperature it had; every listed loss trains
in both regimes; one shared-negatives batch's cross-entropy and margin-ranking losses equal a hand
computation over individually scored, Python-filtered negatives; a name outside the list fails,
naming the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import shared_negatives_batch
from pykeen.losses import AdversarialLoss, Loss, NSSALoss, loss_resolver

from client.kge.config import LOSSES, ConfigError, KGEConfig
from client.kge.models import build_loss, build_model, nssa_margin, seeded
from client.kge.run_config import check_choices
from client.kge.training import LocalTrainer


def small(**changes: object) -> KGEConfig:
    return KGEConfig(embedding_dim=8, local_epochs=1, batch_size=256, num_negs_per_pos=8, learning_rate=1e-2).replace(
        **changes
    )


# --- the default and the registry ------------------------------------------------------------


@pytest.mark.parametrize(("model", "temperature"), [("TransE", 1.0), ("RotatE", 0.5), ("DistMult", 2.0)])
def test_the_default_is_fedes_nssa_with_its_margin_rule(nations: SimpleNamespace, model: str, temperature: float):
    config = KGEConfig(model=model, embedding_dim=16, adversarial_temperature=temperature)
    assert config.loss == "nssa"
    with seeded(0):
        loss = build_model(config, nations.train).loss
    assert type(loss) is NSSALoss
    assert (
        loss.margin
        == nssa_margin(config)
        == {"TransE": 10.0, "RotatE": pytest.approx(10 * 2 / np.sqrt(np.pi * 16)), "DistMult": 0.0}[model]
    )
    assert loss.inverse_softmax_temperature == temperature
    assert loss.reduction == "mean"


def test_every_choice_is_a_pykeen_loss_with_an_slcwa_scoring():
    for name in LOSSES:
        loss_cls = loss_resolver.lookup(name)
        assert loss_resolver.normalize_cls(loss_cls) == name  # the resolver's own spelling
        assert loss_cls.process_slcwa_scores is not Loss.process_slcwa_scores
        assert not inspect.isabstract(loss_cls)


@pytest.mark.parametrize("name", LOSSES)
def test_margin_and_temperature_reach_only_the_losses_that_take_them(name: str):
    config = small(model="TransE", loss=name, margin=3.0, adversarial_temperature=0.25)
    loss = build_loss(config)
    assert type(loss) is loss_resolver.lookup(name)
    parameters = inspect.signature(type(loss).__init__).parameters
    if "margin" in parameters:
        assert loss.margin == 3.0  # TransE: FedE's rule keeps the margin as given for NSSA too
    if isinstance(loss, AdversarialLoss):
        assert loss.inverse_softmax_temperature == 0.25
    else:
        assert not hasattr(loss, "inverse_softmax_temperature")
    # a semantic-matching model: NSSA drops gamma (FedE's rule), a pairwise margin is kept as given
    distmult = build_loss(config.replace(model="DistMult"))
    if "margin" in parameters:
        assert distmult.margin == (0.0 if name == "nssa" else 3.0)


@pytest.mark.parametrize("bad", ["bogus", "mse", "NSSALoss", ""])
def test_a_name_outside_the_list_fails_naming_the_key_and_the_choices(bad: str):
    for build in (lambda: KGEConfig(loss=bad), lambda: KGEConfig.from_run_config({"loss": bad})):
        with pytest.raises(ConfigError, match=r"key 'loss': .* is not one of nssa, .*crossentropy") as info:
            build()
        assert all(name in str(info.value) for name in LOSSES)
    with pytest.raises(ConfigError, match=r"key 'loss'"):
        check_choices({"loss": bad})  # before any process starts
    with pytest.raises(ConfigError, match=r"loss must be str"):
        KGEConfig.from_run_config({"loss": 1})


# --- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["sharednegatives", "slcwa"])
@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_trains_in_both_regimes(nations: SimpleNamespace, name: str, regime: str):
    trainer = LocalTrainer(nations, small(model="DistMult", loss=name, training_loop=regime, margin=1.0))
    assert type(trainer.model.loss) is loss_resolver.lookup(name)
    before = trainer.get_entity_embeddings().copy()
    losses = trainer.train(1)
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert not np.array_equal(trainer.get_entity_embeddings(), before)  # it trained


# --- one batch against a hand computation -----------------------------------------------------


def _cross_entropy(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> tuple[torch.Tensor, int]:
    """-log softmax of the positive (index 0) against its negatives: one term per positive."""
    scores = torch.cat([pos[None], neg])
    return -(scores[0] - torch.logsumexp(scores, dim=0)), 1


def _margin_ranking(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> tuple[torch.Tensor, int]:
    """A hinge per (positive, kept negative) pair: the terms' sum and their number."""
    return torch.relu(neg - pos + margin).sum(), len(neg)


@pytest.mark.parametrize(("name", "reference"), [("crossentropy", _cross_entropy), ("marginranking", _margin_ranking)])
def test_one_shared_negatives_batch_equals_a_hand_computation(
    nations: SimpleNamespace, name: str, reference: Callable[..., tuple[torch.Tensor, int]]
):
    """The loop's loss (``process_slcwa_scores`` with the batch filter) = the loss by hand over per-triple
    scores, with the known triples dropped from each positive's negatives (both sides in one row)."""
    config = small(model="TransE", loss=name, num_negs_per_pos=12, margin=1.0, training_loop="sharednegatives")
    trainer = LocalTrainer(nations, config)
    batch, got, heads, tails, known = shared_negatives_batch(trainer, nations.train)
    total, terms, dropped = torch.zeros(()), 0, 0
    with torch.no_grad():
        for h, r, t in batch.tolist():
            negatives = [(c, r, t) for c in heads.tolist()] + [(h, r, c) for c in tails.tolist()]
            kept = [n for n in negatives if n not in known]
            dropped += len(negatives) - len(kept)
            pos = trainer.model.score_hrt(torch.tensor([[h, r, t]]))[0, 0]
            neg = trainer.model.score_hrt(torch.tensor(kept, dtype=torch.long).reshape(-1, 3))[:, 0]
            value, count = reference(pos, neg, config.margin)
            total, terms = total + value, terms + count
    assert dropped > 0  # the filter acted on this batch
    assert float(got.detach()) == pytest.approx(float(total / terms), rel=1e-5)
