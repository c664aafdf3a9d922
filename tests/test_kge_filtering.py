"""The sorted-key negative filterer against a Python-set reference."""

from __future__ import annotations

import pytest
import torch

from client.kge.filtering import SortedKeyFilterer


def test_matches_a_python_set_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    known = torch.randint(0, 30, (400, 3), generator=generator)
    known[:, 1] %= 4
    filterer = SortedKeyFilterer(known)
    # candidates: half drawn from the known triples, half random, some ids beyond the table
    queries = torch.cat(
        [known[torch.randperm(400, generator=generator)[:200]], torch.randint(0, 35, (300, 3), generator=generator)]
    )
    queries = queries.view(25, 20, 3)
    reference = {tuple(t) for t in known.tolist()}
    expected = torch.tensor([tuple(t) in reference for t in queries.view(-1, 3).tolist()]).view(25, 20)
    assert torch.equal(filterer.contains(queries), expected)
    assert torch.equal(filterer(queries), ~expected)  # PyKEEN's mask: True = keep as negative
    assert expected.any() and not expected.all()


def test_is_a_pykeen_filterer_by_name() -> None:
    from pykeen.sampling.filtering import filterer_resolver

    import client.kge.training  # noqa: F401  (registers the name)

    assert filterer_resolver.lookup("sortedkey") is SortedKeyFilterer
    made = filterer_resolver.make("sortedkey", mapped_triples=torch.tensor([[0, 0, 1]]))
    assert made.contains(torch.tensor([[0, 0, 1], [1, 0, 0]])).tolist() == [True, False]


def test_refuses_empty_triples() -> None:
    with pytest.raises(ValueError, match=r"non-empty \(n, 3\)"):
        SortedKeyFilterer(torch.zeros((0, 3), dtype=torch.long))
