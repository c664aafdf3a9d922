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
