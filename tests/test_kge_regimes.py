"""The shared-negatives regime and the fast candidate scoring behind it and the evaluator.

On PyKEEN's bundled Nations graph (14 entities) with tiny sizes: each test takes seconds. The
checks do not depend on speed: scores equal PyKEEN's, one batch's loss equals a hand-written
NSSA over individually scored, Python-filtered negatives, and training resumes exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import evaluation_against_pykeen, load_script
from pykeen.models import model_resolver

from client.kge.candidate_scoring import has_fast_path, score_heads, score_tails
from client.kge.config import ConfigError, KGEConfig
from client.kge.models import nssa_margin, seeded
from client.kge.regimes import training_regime_resolver
from client.kge.training import LocalTrainer

MODELS = ["TransE", "RotatE", "DistMult", "ComplEx"]


def shared(model: str = "TransE", **changes: object) -> KGEConfig:
    return KGEConfig(
        model=model,
        embedding_dim=8,
        batch_size=256,
        num_negs_per_pos=8,
        learning_rate=1e-2,
        training_loop="sharednegatives",
    ).replace(**changes)


def _model(name: str, nations: SimpleNamespace, **kwargs: object):
    with seeded(7):
        return model_resolver.make(name, triples_factory=nations.train, embedding_dim=6, **kwargs)


# --- candidate scoring ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("TransE", {}),
        ("TransE", {"scoring_fct_norm": 2}),
        ("RotatE", {}),
        ("DistMult", {}),
        ("ComplEx", {}),
        ("TransH", {}),
    ],
)
def test_candidate_scores_equal_pykeen(nations: SimpleNamespace, name: str, kwargs: dict) -> None:
    model = _model(name, nations, **kwargs)
    assert has_fast_path(model) == (name != "TransH")  # TransH exercises the fallback
    triples = nations.train.mapped_triples[:9]
    candidates = torch.tensor([0, 3, 3, 13, 5])
    with torch.no_grad():
        torch.testing.assert_close(
            score_tails(model, triples[:, :2], candidates),
            model.score_t(triples[:, :2], tails=candidates),
            rtol=1e-5,
            atol=1e-5,
        )
        torch.testing.assert_close(
            score_heads(model, triples[:, 1:], candidates),
            model.score_h(triples[:, 1:], heads=candidates),
            rtol=1e-5,
            atol=1e-5,
        )


# --- the regime -------------------------------------------------------------------------------


def test_regime_is_registered_and_refuses_what_it_cannot_do(nations: SimpleNamespace) -> None:
    assert "sharednegatives" in training_regime_resolver.lookup_dict
    with pytest.raises(ConfigError, match="heads and/or tails"):
        LocalTrainer(nations, shared(corruption_scheme="head,relation"))
    with pytest.raises(ConfigError, match="negative-sampler"):
        LocalTrainer(nations, shared(negative_sampler="bernoulli"))


def test_one_batch_loss_equals_reference_nssa(nations: SimpleNamespace) -> None:
    """The loop's loss = NSSA over per-triple scores, known triples dropped, by hand."""
    config = shared(num_negs_per_pos=12, corruption_scheme="head,tail", adversarial_temperature=0.5)
    trainer = LocalTrainer(nations, config)
    loop = trainer.loop
    loop._create_training_data_loader(nations.train, sampler=None, batch_size=32, drop_last=False)
    batch = nations.train.mapped_triples[:32]
    with seeded(11):
        got = loop._process_batch(batch, 0, 32)
    with seeded(11):  # the same draws: head candidates first, then tail candidates (config order)
        heads = torch.randint(nations.num_entities, (6,))
        tails = torch.randint(nations.num_entities, (6,))
    known = {tuple(t) for t in nations.train.mapped_triples.tolist()}
    model, margin, alpha = trainer.model, nssa_margin(config), config.adversarial_temperature
    losses_pos, losses_neg = [], []
    with torch.no_grad():
        for h, r, t in batch.tolist():
            negatives = [(c, r, t) for c in heads.tolist()] + [(h, r, c) for c in tails.tolist()]
            negatives = [n for n in negatives if n not in known]
            pos = model.score_hrt(torch.tensor([[h, r, t]]))[0, 0]
            neg = model.score_hrt(torch.tensor(negatives))[:, 0]
            weights = torch.softmax(alpha * neg, dim=0)
            losses_pos.append(-torch.nn.functional.logsigmoid(margin + pos))
            losses_neg.append((weights * -torch.nn.functional.logsigmoid(-neg - margin)).sum())
    want = 0.5 * (torch.stack(losses_pos).mean() + torch.stack(losses_neg).mean())
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_each_model_learns_with_shared_negatives(nations: SimpleNamespace, model: str) -> None:
    trainer = LocalTrainer(nations, shared(model, embedding_dim=16))
    losses = trainer.train(5)
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # and the rows it returns are what it trained: the federation's contract
    assert trainer.get_entity_embeddings().shape == (nations.num_entities, trainer.entity_dim)


def test_shared_negatives_resume_equals_uninterrupted(nations: SimpleNamespace) -> None:
    config = shared("RotatE")
    uninterrupted = LocalTrainer(nations, config)
    uninterrupted.train(1)
    state, rows = uninterrupted.get_private_state(), uninterrupted.get_entity_embeddings()
    resumed = LocalTrainer(nations, config)
    resumed.set_private_state(state)
    resumed.set_entity_embeddings(rows)
    assert resumed.train(2) == uninterrupted.train(2)
    np.testing.assert_array_equal(resumed.get_entity_embeddings(), uninterrupted.get_entity_embeddings())


def test_shared_negatives_learn_link_prediction(nations: SimpleNamespace) -> None:
    """Trained rows rank test triples better than the untrained ones (valid, not a fixed number)."""
    trainer = LocalTrainer(nations, shared(embedding_dim=16))
    before = trainer.evaluate("valid")["mrr"]
    trainer.train(15)
    assert trainer.evaluate("valid")["mrr"] > before + 0.05


# --- the evaluator's fast path agrees with PyKEEN's own evaluate ------------------------------


@pytest.mark.parametrize("name", ["RotatE", "ComplEx"])
@pytest.mark.parametrize("protocol", ["standard", "fede"])
def test_fast_evaluation_equals_pykeen_evaluate(nations: SimpleNamespace, name: str, protocol: str) -> None:
    model = _model(name, nations)
    got, results, side = evaluation_against_pykeen(model, nations, protocol)
    assert got["mrr"] == pytest.approx(results.get_metric(f"{side}.realistic.inverse_harmonic_mean_rank"), abs=1e-6)
    assert got["hits@10"] == pytest.approx(results.get_metric(f"{side}.realistic.hits_at_10"), abs=1e-6)


def test_protocols_in_one_pass_equal_one_at_a_time(nations: SimpleNamespace) -> None:
    from client.kge.evaluation import evaluate_client, evaluate_client_protocols

    model = _model("TransE", nations)
    both = evaluate_client_protocols(model, nations, split="test", batch_size=5)
    for protocol in ("standard", "fede"):
        assert both[protocol] == evaluate_client(model, nations, split="test", protocol=protocol)
    assert both["standard"]["mrr"] != both["fede"]["mrr"]  # different sides: not the same numbers twice


# --- the time-to-accuracy benchmark script (in-process mode), on a tiny federation -------------


def test_time_to_accuracy_script_reports_rounds(tmp_path) -> None:
    import json

    module = load_script("bench_time_to_accuracy")
    out = tmp_path / "tta.json"
    args = [
        "--mode",
        "in-process",
        "--data",
        "Nations",
        "--num-clients",
        "2",
        "--rounds",
        "2",
        "--out",
        str(out),
        "--set",
        "training-loop=sharednegatives",
        "--set",
        "embedding-dim=8",
        "--set",
        "eval-every=1",
        "--set",
        "num-negs-per-pos=8",
        "--set",
        "eval-protocol=fede",
    ]
    assert module.main(args) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "in-process" and not report.get("partial")
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    first, second = report["rounds"]
    assert 0 < first["elapsed_seconds"] < second["elapsed_seconds"]
    for record in report["rounds"]:
        assert 0.0 < record["valid"]["overall"]["mrr"] <= 1.0 and "hits@5" in record["test"]["overall"]
        assert record["local_training_seconds"] > 0 and record["evaluation_seconds"] > 0
    assert report["best_valid_round"] in (1, 2)
    assert report["config"]["training-loop"] == "sharednegatives"
