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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_side_broadcast_lookups_match_a_python_set_reference(seed: int) -> None:
    """contains_tails / contains_heads (the shared-negatives loop's (B, K) filter) answer as a Python set
    of the known triples does, for ids inside and beyond the table, without the (B, K, 3) stack."""
    generator = torch.Generator().manual_seed(seed)
    known = torch.randint(0, 30, (400, 3), generator=generator)
    known[:, 1] %= 4
    filterer = SortedKeyFilterer(known)
    reference = {tuple(t) for t in known.tolist()}
    picked = known[torch.randperm(400, generator=generator)[:40]]  # half the positives known, half random
    positives = torch.cat([picked, torch.randint(0, 33, (40, 3), generator=generator)])
    positives[::7, 1] = 5  # a relation beyond the table
    candidates = torch.cat([known[:20, 2], torch.randint(0, 36, (20,), generator=generator)])
    tails = filterer.contains_tails(positives[:, :2], candidates)
    heads = filterer.contains_heads(candidates, positives[:, 1:])
    h, r, t = (positives[:, i].tolist() for i in range(3))
    expected_tails = [[(h[b], r[b], c) in reference for c in candidates.tolist()] for b in range(len(h))]
    expected_heads = [[(c, r[b], t[b]) in reference for c in candidates.tolist()] for b in range(len(h))]
    assert torch.equal(tails, torch.tensor(expected_tails)) and torch.equal(heads, torch.tensor(expected_heads))
    assert tails.any() and heads.any() and not tails.all()


def test_the_run_config_check_alone_knows_the_filterer() -> None:
    """A resumed run checks its run config before any trainer is imported: the registry module alone must
    register ``sortedkey`` (a resume once failed with "'sortedkey' is not one of bloom, pythonset")."""
    import subprocess
    import sys

    code = (
        "import client.kge.run_config\n"
        "from pykeen.sampling.filtering import filterer_resolver\n"
        "assert 'sortedkey' in filterer_resolver.lookup_dict, sorted(filterer_resolver.lookup_dict)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
