"""The evaluator's MRR and Hits@k equal a brute-force filtered rank computation, both protocols."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from pykeen.datasets import Nations
from pykeen.models import DistMult, TransE

from client.kge.evaluation import (
    UnknownProtocolError,
    evaluate_link_prediction,
    weighted_overall,
)


@pytest.fixture(scope="module")
def nations():
    return Nations()


def _brute_force_ranks(model, triples, known, side, candidates):
    """Realistic filtered ranks by enumeration: one score per candidate, compared in Python."""
    known_set = {tuple(t) for t in known.tolist()}
    ranks = []
    with torch.no_grad():
        for h, r, t in triples.tolist():
            batch = torch.tensor([[h, r, t]])
            if side == "tail":
                scores = model.score_t(batch[:, :2])[0]
                true, corrupt = t, lambda c, h=h, r=r: (h, r, c)
            else:
                scores = model.score_h(batch[:, 1:])[0]
                true, corrupt = h, lambda c, r=r, t=t: (c, r, t)
            true_score = float(scores[true])
            greater = equal = 0
            for c in candidates:
                if c == true or corrupt(c) in known_set:
                    continue
                score = float(scores[c])
                greater += score > true_score
                equal += score == true_score
            # PyKEEN's realistic rank: the mean of the optimistic and the pessimistic rank
            ranks.append(1 + greater + equal / 2)
    return np.asarray(ranks, dtype=float)


def _expected(ranks, ks):
    out = {"mrr": float(np.mean(1.0 / ranks))}
    for k in ks:
        out[f"hits@{k}"] = float(np.mean(ranks <= k))
    return out


@pytest.mark.parametrize("model_cls", [TransE, DistMult])
def test_standard_protocol_matches_brute_force(nations, model_cls):
    model = model_cls(triples_factory=nations.training, embedding_dim=8, random_seed=3)
    model.eval()
    test = nations.testing.mapped_triples
    filters = [nations.training.mapped_triples, nations.validation.mapped_triples]
    known = torch.cat([test, *filters])
    everyone = list(range(nations.num_entities))

    got = evaluate_link_prediction(model, test, filter_triples=filters, protocol="standard")

    ranks = np.concatenate(
        [
            _brute_force_ranks(model, test, known, "head", everyone),
            _brute_force_ranks(model, test, known, "tail", everyone),
        ]
    )
    want = _expected(ranks, (1, 3, 10))
    assert got["num_triples"] == test.shape[0]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    # an untrained model is not perfect: the comparison above is not vacuous
    assert 0.0 < got["mrr"] < 1.0


def test_fede_protocol_restricts_candidates_and_predicts_tails_only(nations):
    model = DistMult(triples_factory=nations.training, embedding_dim=8, random_seed=5)
    model.eval()
    test = nations.testing.mapped_triples
    # keep the triples whose tail lies in a candidate subset, then rank against that subset only
    candidates = list(range(0, nations.num_entities, 2)) + [1]
    test = test[torch.isin(test[:, 2], torch.tensor(candidates))]
    filters = [
        nations.training.mapped_triples,
        nations.validation.mapped_triples,
        nations.testing.mapped_triples,
    ]
    known = torch.cat(filters)

    got = evaluate_link_prediction(model, test, filter_triples=filters, protocol="fede", candidate_entities=candidates)
    want = _expected(_brute_force_ranks(model, test, known, "tail", candidates), (1, 5, 10))
    assert set(got) == {"mrr", "hits@1", "hits@5", "hits@10", "num_triples"}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key

    # the restriction matters: ranking against every entity gives another result
    unrestricted = evaluate_link_prediction(model, test, filter_triples=filters, protocol="fede")
    want_all = _expected(_brute_force_ranks(model, test, known, "tail", range(nations.num_entities)), (1, 5, 10))
    assert unrestricted["mrr"] == pytest.approx(want_all["mrr"], abs=1e-6)
    assert unrestricted["mrr"] != pytest.approx(got["mrr"], abs=1e-6)


def test_fede_protocol_refuses_tails_outside_candidates(nations):
    model = DistMult(triples_factory=nations.training, embedding_dim=4, random_seed=0)
    test = nations.testing.mapped_triples
    with pytest.raises(ValueError, match="not candidates"):
        evaluate_link_prediction(model, test, protocol="fede", candidate_entities=[0, 1])


def test_bad_inputs_are_named(nations):
    model = DistMult(triples_factory=nations.training, embedding_dim=4, random_seed=0)
    test = nations.testing.mapped_triples
    with pytest.raises(UnknownProtocolError, match="'ogb'"):
        evaluate_link_prediction(model, test, protocol="ogb")
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        evaluate_link_prediction(model, test[:, :2])
    bad = test.clone()
    bad[0, 2] = nations.num_entities
    with pytest.raises(ValueError, match="entity ids outside"):
        evaluate_link_prediction(model, bad)


def test_weighted_overall_weights_by_triples():
    a = {"mrr": 0.5, "hits@1": 0.25, "num_triples": 30}
    b = {"mrr": 0.1, "hits@1": 0.05, "num_triples": 10}
    overall = weighted_overall([a, b])
    assert overall["mrr"] == pytest.approx((0.5 * 30 + 0.1 * 10) / 40)
    assert overall["hits@1"] == pytest.approx((0.25 * 30 + 0.05 * 10) / 40)
    assert overall["num_triples"] == 40
    with pytest.raises(ValueError, match="keys"):
        weighted_overall([a, {"mrr": 0.2, "num_triples": 3}])


# --- the fused (torch.compile) kernels give the eager results ---------------------------------


@pytest.fixture
def fused_always(monkeypatch):
    """Compiled kernels whatever the size (``auto`` would keep Nations-sized work eager)."""
    monkeypatch.setenv("SIMSKIP_FUSED_KERNELS", "always")


def test_fused_l1_distance_is_bit_identical_to_cdist(fused_always):
    from client.kge import candidate_scoring

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(37, 24, generator=generator)
    # more candidates than one tile, and a last partial tile
    candidates = torch.randn(2 * candidate_scoring.L1_TILE_ROWS + 77, 24, generator=generator)
    with torch.no_grad():
        got = candidate_scoring.l1_distance(query, candidates)
    assert not candidate_scoring._l1_tile._failed, "the compiled kernel fell back to eager"
    assert candidate_scoring._l1_tile._compiled is not None
    assert torch.equal(got, torch.cdist(query, candidates, p=1.0))
    # with autograd on, the eager op runs (the compiled kernel is for evaluation only)
    query.requires_grad_(True)
    assert candidate_scoring.l1_distance(query, candidates).requires_grad


def test_fused_rank_counts_equal_pykeens_ranks(fused_always):
    from pykeen.evaluation.ranks import Ranks

    from client.kge.evaluation import _count_ranks

    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (40, 300), generator=generator).float()  # many ties
    scores[torch.rand(40, 300, generator=generator) < 0.1] = float("nan")  # filtered candidates
    true_scores = scores[:, 5:6].nan_to_num(2.0)
    scores[:, 5:6] = true_scores
    with torch.no_grad():
        better, at_least, finite = _count_ranks(scores, true_scores, work=scores.numel())
    want = Ranks.from_scores(true_scores, scores)
    assert not _count_ranks._failed
    assert torch.equal(better + 1, want.optimistic) and torch.equal(at_least, want.pessimistic)
    assert torch.equal(finite, want.number_of_options)


@pytest.mark.parametrize("model_cls", [TransE, DistMult])
def test_fused_evaluation_equals_eager_evaluation(nations, monkeypatch, model_cls):
    model = model_cls(triples_factory=nations.training, embedding_dim=8, random_seed=4)
    test = nations.testing.mapped_triples
    filters = [nations.training.mapped_triples, nations.validation.mapped_triples]
    results = {}
    for mode in ("never", "always"):
        monkeypatch.setenv("SIMSKIP_FUSED_KERNELS", mode)
        results[mode] = evaluate_link_prediction(
            model, test, filter_triples=filters, protocol="standard", batch_size=16
        )
    assert results["always"] == results["never"]


def test_failed_compile_falls_back_to_eager(fused_always, monkeypatch, caplog):
    from client.kge.candidate_scoring import FusedKernel

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    kernel = FusedKernel(lambda x: x * 2, eager=lambda x: x + x)
    with torch.no_grad(), caplog.at_level("WARNING"):
        assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))
    assert kernel._failed and "no C++ compiler" in caplog.text
    assert caplog.text.count("failed") == 1  # warned once


def test_a_compiled_kernel_that_computes_something_else_is_caught_on_its_first_call(fused_always, caplog):
    """A miscompile, or an Inductor cache entry built for another CPU capability (which returned L1
    distances of ~1e36 under ATEN_CPU_CAPABILITY=avx2), is compared with the eager version once and
    dropped, with a warning; tuples of tensors (the rank counts) are compared element by element."""
    from client.kge.candidate_scoring import FusedKernel

    kernel = FusedKernel(lambda x: x * 2 + 1e30, eager=lambda x: x + x)
    with torch.no_grad(), caplog.at_level("WARNING"):
        assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))
    assert kernel._failed and "differs from its eager version" in caplog.text
    pair = FusedKernel(lambda x: (x + 1, x * 2), eager=lambda x: (x + 1, x + x))
    with torch.no_grad():
        assert torch.equal(pair(torch.ones(4))[1], torch.full((4,), 2.0))
    assert pair._verified and not pair._failed


def test_each_cpu_capability_gets_its_own_inductor_cache(monkeypatch, tmp_path):
    from client.kge.candidate_scoring import INDUCTOR_CACHE_ENV, isolate_inductor_cache

    capability = torch.backends.cpu.get_cpu_capability().lower()
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path))
    folder = isolate_inductor_cache()
    assert folder == str(tmp_path / f"isa-{capability}") == os.environ[INDUCTOR_CACHE_ENV]
    assert isolate_inductor_cache() == folder  # once only: not nested again
    monkeypatch.delenv(INDUCTOR_CACHE_ENV)
    assert isolate_inductor_cache().endswith(os.sep + f"isa-{capability}")


def test_fused_kernels_setting_is_checked(monkeypatch):
    from client.kge.candidate_scoring import fused_kernels_mode

    monkeypatch.setenv("SIMSKIP_FUSED_KERNELS", "sometimes")
    with pytest.raises(ValueError, match="SIMSKIP_FUSED_KERNELS"):
        fused_kernels_mode()
