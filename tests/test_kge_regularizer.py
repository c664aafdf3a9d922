"""The ``regularizer-weight`` / ``regularizer-p`` keys reach PyKEEN's regularizer, and only a named one."""

from __future__ import annotations

import pytest
import torch
from pykeen.regularizers import LpRegularizer, Regularizer

from client.kge.config import KGEConfig
from client.kge.models import build_model


def _regularizers(model: torch.nn.Module) -> dict[str, Regularizer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, Regularizer)}


@pytest.mark.parametrize("model", ["DistMult", "ComplEx", "TransE", "RotatE"])
def test_named_regularizer_takes_weight_and_p(nations, model: str) -> None:
    config = KGEConfig(model=model, regularizer="lp", regularizer_weight=0.05, regularizer_p=3.0)
    found = _regularizers(build_model(config, nations.train))
    assert found, f"{model}: no regularizer built for regularizer=lp"
    for name, regularizer in found.items():
        assert isinstance(regularizer, LpRegularizer), name
        assert float(regularizer.weight) == pytest.approx(0.05), name
        assert regularizer.p == 3.0, name


def test_model_default_keeps_the_models_own_kwargs(nations) -> None:
    # DistMult's own regularizer: PyKEEN's LpRegularizer(weight=0.1, p=2, normalize=True) on relations
    config = KGEConfig(model="DistMult", regularizer="model-default", regularizer_weight=0.05, regularizer_p=3.0)
    (regularizer,) = _regularizers(build_model(config, nations.train)).values()
    assert float(regularizer.weight) == pytest.approx(0.1)
    assert regularizer.p == 2.0


def test_none_builds_no_regularizer(nations) -> None:
    config = KGEConfig(model="ComplEx", regularizer="none", regularizer_weight=0.05)
    assert _regularizers(build_model(config, nations.train)) == {}


def test_weight_scales_the_term(nations) -> None:
    """The collected term is linear in the weight (same rows, same seed)."""
    terms = []
    for weight in (0.5, 2.0):
        torch.manual_seed(0)
        model = build_model(KGEConfig(model="ComplEx", regularizer="lp", regularizer_weight=weight), nations.train)
        model.score_hrt(nations.train.mapped_triples[:8])
        terms.append(float(model.collect_regularization_term().detach()))
    assert terms[0] > 0
    assert terms[1] == pytest.approx(4 * terms[0], rel=1e-5)


def _entity_term(model: torch.nn.Module, triples: torch.Tensor) -> float:
    """The regularization term of scoring ``triples`` with the relation rows' regularizers switched off."""
    from client.kge.models import relation_embeddings

    for relations in relation_embeddings(model):
        relations.regularizer = None
    model.score_hrt(triples)
    term = model.collect_regularization_term()  # 0 (an int) when no regularizer is left
    return float(term.detach()) if torch.is_tensor(term) else float(term)


def test_regularize_entities_adds_the_named_regularizer_to_distmults_entity_rows(nations) -> None:
    from client.kge.models import entity_embedding

    base = {"model": "DistMult", "regularizer": "powersum", "regularizer_weight": 0.01, "regularizer_p": 3.0}
    plain = build_model(KGEConfig(**base), nations.train)
    assert entity_embedding(plain).regularizer is None  # PyKEEN's DistMult: relations only
    both = build_model(KGEConfig(**base, regularize_entities=True), nations.train)
    regularizer = entity_embedding(both).regularizer
    assert type(regularizer).__name__ == "PowerSumRegularizer" and regularizer.p == 3.0
    assert float(regularizer.weight) == pytest.approx(0.01)
    triples = nations.train.mapped_triples[:8]
    table = entity_embedding(both)._embeddings.weight.detach()
    # PowerSum: per lookup (heads, then tails) the mean over its rows of sum |x|^3, times the weight
    expected = 0.01 * sum(float(table[ids].abs().pow(3).sum(dim=-1).mean()) for ids in (triples[:, 0], triples[:, 2]))
    assert _entity_term(both, triples) == pytest.approx(expected, rel=1e-5)
    assert _entity_term(plain, triples) == 0.0


def test_regularize_entities_leaves_a_model_that_already_regularizes_them(nations) -> None:
    from client.kge.models import entity_embedding

    base = {"model": "ComplEx", "regularizer": "lp", "regularizer_weight": 0.05}
    once = entity_embedding(build_model(KGEConfig(**base), nations.train)).regularizer
    again = entity_embedding(build_model(KGEConfig(**base, regularize_entities=True), nations.train)).regularizer
    assert type(once) is type(again) and float(again.weight) == pytest.approx(0.05)


@pytest.mark.parametrize("regularizer", ["none", "model-default"])
def test_regularize_entities_needs_a_named_regularizer(regularizer: str) -> None:
    from client.kge.config import ConfigError

    with pytest.raises(ConfigError, match="regularize-entities needs a named regularizer"):
        KGEConfig(model="DistMult", regularizer=regularizer, regularize_entities=True)
