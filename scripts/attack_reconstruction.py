#!/usr/bin/env python
"""What an honest-but-curious FedE server recovers from what it receives: entity sets and triples.

FedE runs in process (:func:`client.kge.centralized.run_fede_in_process`: the Flower apps'
rounds without transport) and an observer records what the server receives in round
``--observe-round`` (default: the last round trained): for every party the global ids of the rows
it uploads (the handshake already told the server which entities each party holds: its entity
labels and its train-triple count), the rows the server sent it (downloaded) and the rows it
returned (uploaded). Relation rows never travel. The attacker then tries to recover

(a) each party's entity set: the ids of its uploads, compared with the party's true entities
    (computed, not assumed: precision and recall of the recovered set);
(b) each party's train triples as entity pairs: every candidate pair of the victim's entities is
    scored, the ``k`` best-scored pairs are the attacker's guesses, and precision@k / recall@k
    are measured against the victim's train triples, as ordered ``(h, t)`` pairs and as
    unordered ``{h, t}`` pairs (``h != t``; self-loop triples are counted, not guessed).

The attacks (:data:`ATTACKS`; none is tuned on the truth of the party it is reported for):

``update-anticos`` (server alone)
    ``-cos(Delta_h, Delta_t)`` with ``Delta = uploaded - downloaded`` (the party's local update
    of the round, a sum of gradient steps): the two entities of one TransE triple get opposite
    gradients from it.
``update-abscos`` (server alone)
    ``|cos(Delta_h, Delta_t)|``: correlated updates, whatever their sign.
``row-distance`` (server alone)
    ``-||e_h - e_t||`` of the uploaded rows: related entities sit close together.
``collusion-relation`` (server + party ``--colluder``, which hands over its relation rows)
    FedR's attack (Zhang et al., 2022): ``max_r score(e_h, r, e_t)`` over the colluder's
    relations, with the model's own interaction function (TransE: ``-||e_h + r - e_t||``: how well
    ``t - h`` matches a known relation) on the victim's uploaded rows. It needs relations the
    victim shares with the colluder: on a relation partition (FB15k-237-Fed3, FedE's splits) the
    colluder knows none of the victim's relations; ``--partition triple`` deals triples at random,
    so parties share relations (FedR's setting).

What the attacks read (``--view``):

``uploads`` (default: plain FedE and ``dp = local``)
    each party's own upload, as above.
``aggregate`` (what the server sees under ``secure-aggregation = true``)
    only the round's aggregated table: the per-row mean over the holders (the table every party
    downloads next round; :func:`aggregate_view`) and the holder counts. Per victim the attacks read
    that table restricted to the victim's entity set (known to the server from the handshake), and
    the ``update-*`` attacks the difference between the round's table and the previous round's. With
    ``--set secure-aggregation=true`` the in-process engine computes the plain mean, which equals
    SecAgg+'s mean within its quantization step ``2c / 2^22`` per coordinate (``c``:
    ``secagg-clipping-range``; ``docs/how-to/secure-aggregation.md``): the report says so under
    ``secure_aggregation``. ``--view uploads`` refuses ``secure-aggregation = true`` (under it the
    server never receives one party's upload).

``selected`` reports, per victim, the server-alone attack that scored best (precision@true count,
ordered pairs) on another party (the next one), applied to the victim: a choice never made on the
victim's own truth.

Every attack is compared with random guessing over the same candidates: its expected precision is
exactly ``true pairs / candidate pairs`` at every ``k`` (expected recall ``k / candidates``), and
an empirical draw of ``k`` distinct candidate pairs (``--seed``) is scored like an attack.
Candidate pairs are scored in chunks of head entities with a running top-k (``torch.topk`` per
chunk): the ``n (n - 1)`` pairs are never held at once.

Output (``--out``, written atomically; printed without it): the command, the machine, the load
average before and after, the data and KGE config, the test MRR of the run, the entity-set
recovery per party, and per victim and attack precision / recall / hits at each ``k`` with the
random baseline and the attack's seconds.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from simskip_core.cli_common import CommandParser, add_version, integer, path, run_main

PROG = "attack_reconstruction.py"
#: Scored values held at once per chunk (heads x tails x width floats, about 256 MiB).
CHUNK_ELEMENTS = 1 << 26
#: Up to this many candidate pairs the random draw enumerates them; above, it rejects repeats.
ENUMERATE_LIMIT = 1 << 22

EXAMPLES = """examples:
  python scripts/attack_reconstruction.py --data UMLS --clients 3 --partition triple --rounds 20 \\
      --set local-epochs=1 --set embedding-dim=64 --out results/privacy/attack-umls-triple.json
  python scripts/attack_reconstruction.py --data ../shared/data/FB15k-237-Fed3 --rounds 100 \\
      --set eval-every=5 --device cuda --out results/privacy/attack-fed3-transe.json
  python scripts/attack_reconstruction.py --data UMLS --clients 3 --rounds 20 --view aggregate \\
      --set secure-aggregation=true --out results/privacy/attack-umls-secagg.json
"""

#: What the attacks read: each party's upload, or only the aggregated table (:func:`aggregate_view`).
VIEWS = ("uploads", "aggregate")
#: The engine's rule the aggregate view recomputes (``run_fede_in_process``'s default; SecAgg+ needs it).
AGGREGATION_RULE = "mean"

#: Pair orders the triples are compared in.
ORDERS = ("ordered", "unordered")


class AttackError(ValueError):
    """An attack cannot run on what was observed (an unknown attack, a round never observed...)."""


# --- what the server receives ----------------------------------------------------------------------


class Upload(NamedTuple):
    """One party's upload in the observed round, as the server receives it.

    :param ids: int64 ``(n,)`` global entity ids, the party's local order.
    :param sent: float32 ``(n, width)`` rows the server sent it (downloaded).
    :param returned: float32 ``(n, width)`` rows it returned (uploaded).
    """

    ids: np.ndarray
    sent: np.ndarray
    returned: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        """The local update of the round: uploaded - downloaded."""
        return self.returned - self.sent


class Recorder:
    """The observer of :func:`run_fede_in_process` (``on_upload``): keeps the uploads of round
    ``round_number`` (``None``: of every round, the latest replacing the earlier) and a copy of the
    colluder's model of that round (its relation rows and interaction).

    :param round_number: the round to keep, or ``None`` for the last one.
    :param colluder: the colluding party's index, or ``None``.
    """

    def __init__(self, round_number: int | None, colluder: int | None) -> None:
        self.round_number = round_number
        self.colluder = colluder
        self.observed_round: int | None = None
        self.uploads: dict[int, Upload] = {}
        self.colluder_model: Any = None

    def __call__(
        self, server_round: int, index: int, ids: np.ndarray, sent: np.ndarray, returned: np.ndarray, model: Any
    ) -> None:
        if self.round_number is not None and server_round != self.round_number:
            return
        if server_round != self.observed_round:
            self.observed_round, self.uploads, self.colluder_model = server_round, {}, None
        self.uploads[index] = Upload(np.array(ids, dtype=np.int64), np.array(sent), np.array(returned))
        if index == self.colluder:
            self.colluder_model = copy.deepcopy(model).cpu().eval()


def aggregate_view(uploads: Mapping[int, Upload], num_entities: int) -> dict[int, Upload]:
    """What the server sees of a round under secure aggregation, per party, as an :class:`Upload`.

    The round's aggregated table is the per-row mean over the holders of ``uploads`` (the engine's own
    rule, :func:`client.kge.aggregation.aggregate_rows` with :data:`AGGREGATION_RULE`: the table every
    party downloads next round); the previous round's table is what the server sent every party this
    round (each party's ``sent`` rows, the same global table). Party ``k``'s view is both tables
    restricted to its own entity set (known from the handshake): ``sent`` = the previous table's rows,
    ``returned`` = the aggregated rows, so :attr:`Upload.delta` is the change of the aggregated table.

    :param uploads: party index -> its upload of the round (every party of the round).
    :param num_entities: rows of the global table (ids above every party's are never read).
    :returns: party index -> its aggregate view, ``ids`` unchanged.
    """
    from client.kge.aggregation import aggregate_rows

    if not uploads:
        raise AttackError("aggregate view: no upload was observed")
    width = next(iter(uploads.values())).returned.shape[1]
    previous = np.zeros((num_entities, width), dtype=np.float32)
    for upload in uploads.values():
        previous[upload.ids] = upload.sent
    table = aggregate_rows(previous, [(up.ids, up.returned) for up in uploads.values()], AGGREGATION_RULE)
    return {index: Upload(up.ids, previous[up.ids], table[up.ids]) for index, up in uploads.items()}


# --- scoring candidate pairs with a running top-k --------------------------------------------------

#: ``scorer(heads, tails) -> (len(heads), len(tails))`` scores (higher: more likely a triple's pair).
PairScorer = Callable[["Any", "Any"], "Any"]


def top_pairs(scorer: PairScorer, n: int, k: int, order: str, *, width: int = 1, device: Any = "cpu") -> np.ndarray:
    """The ``k`` best-scored candidate pairs of ``n`` entities in one ``order`` (:func:`top_pairs_by_order`)."""
    return top_pairs_by_order(scorer, n, {order: k}, width=width, device=device)[order]


def top_pairs_by_order(
    scorer: PairScorer,
    n: int,
    ks: Mapping[str, int],
    *,
    width: int = 1,
    device: Any = "cpu",
    symmetric: bool = False,
) -> dict[str, np.ndarray]:
    """Per order, the ``ks[order]`` best-scored candidate pairs of ``n`` entities, best first, in one
    pass over the pairs and without holding them all.

    Candidates: ``ordered``: every ``(h, t)`` with ``h != t``; ``unordered``: every ``h < t``,
    scored ``max(score(h, t), score(t, h))``. Heads are scored in chunks of about
    :data:`CHUNK_ELEMENTS` / ``(n * width)`` rows; each chunk's ``torch.topk`` is merged into the
    running top-k of each order.

    :param scorer: see :data:`PairScorer` (torch tensors of local indices in, a float tensor out).
    :param n: entities (local indices ``0..n-1``).
    :param ks: order (``ordered``, ``unordered``) -> guesses; more than the candidates gives every
        candidate.
    :param width: floats per scored pair, to size the chunks.
    :param symmetric: ``score(h, t) == score(t, h)``: the reverse direction is not scored again.
    :returns: per order, int64 ``(min(k, candidates), 2)`` pairs.
    """
    import torch

    unknown = sorted(set(ks) - set(ORDERS))
    if unknown:
        raise AttackError(f"order must be one of {list(ORDERS)}, got {unknown}")
    wanted = {order: min(int(k), candidate_count(n, order)) for order, k in ks.items()}
    everyone = torch.arange(n, device=device)
    running = {
        order: (torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device))
        for order, k in wanted.items()
        if k > 0
    }
    step = max(1, CHUNK_ELEMENTS // max(1, n * width))
    for begin in range(0, n if running else 0, step):
        heads = everyone[begin : begin + step]
        flat = (heads[:, None] * n + everyone[None, :]).reshape(-1)
        with torch.no_grad():
            forward = scorer(heads, everyone).float()
            for order, (best_values, best_index) in running.items():
                if order == "unordered":
                    scores = forward if symmetric else torch.maximum(forward, scorer(everyone, heads).float().T)
                    invalid = everyone[None, :] <= heads[:, None]  # keep h < t only
                else:
                    scores, invalid = forward, everyone[None, :] == heads[:, None]
                scores = scores.masked_fill(invalid, -torch.inf).reshape(-1)
                chunk_values, chunk_index = torch.topk(scores, min(wanted[order], scores.numel()))
                keep = torch.isfinite(chunk_values)
                values = torch.cat([best_values, chunk_values[keep]])
                index = torch.cat([best_index, flat[chunk_index[keep]]])
                best_values, position = torch.topk(values, min(wanted[order], values.numel()))
                running[order] = (best_values, index[position])
    pairs = {order: np.zeros((0, 2), dtype=np.int64) for order in ks}
    for order, (_, best_index) in running.items():
        index = best_index.cpu().numpy()
        pairs[order] = np.stack([index // n, index % n], axis=1).astype(np.int64)
    return pairs


def candidate_count(n: int, order: str) -> int:
    """Candidate pairs of ``n`` entities: ``n (n - 1)`` ordered, ``n (n - 1) / 2`` unordered."""
    return n * (n - 1) if order == "ordered" else n * (n - 1) // 2


def true_pairs(triples: np.ndarray, order: str) -> set[tuple[int, int]]:
    """The distinct ``(h, t)`` (``ordered``) or ``(min, max)`` (``unordered``) pairs of ``(m, 3)``
    local-id triples, self-loops (``h == t``, never a candidate) left out."""
    pairs = np.asarray(triples, dtype=np.int64).reshape(-1, 3)[:, [0, 2]]
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if order == "unordered":
        pairs = np.sort(pairs, axis=1)
    return set(map(tuple, pairs.tolist()))


def precision_recall(guesses: np.ndarray, truth: set[tuple[int, int]], ks: Sequence[int]) -> dict[str, list]:
    """Precision@k (hits / k) and recall@k (hits / true pairs) of the first ``k`` of ``guesses``
    (best first), for each ``k`` (capped at the guesses: ``k_used``)."""
    hit = np.fromiter((tuple(pair) in truth for pair in guesses.tolist()), dtype=bool, count=len(guesses))
    cumulative = np.concatenate([[0], np.cumsum(hit)])
    used = [min(int(k), len(guesses)) for k in ks]
    hits = [int(cumulative[k]) for k in used]
    return {
        "k": [int(k) for k in ks],
        "k_used": used,
        "hits": hits,
        "precision": [h / k if k else 0.0 for h, k in zip(hits, used)],
        "recall": [h / len(truth) if truth else 0.0 for h in hits],
    }


def random_pairs(n: int, k: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """``min(k, candidates)`` distinct candidate pairs drawn uniformly (a random order of them:
    every prefix is a uniform draw too)."""
    total = candidate_count(n, order)
    k = min(int(k), total)
    if total <= ENUMERATE_LIMIT:
        h, t = np.divmod(np.arange(n * n, dtype=np.int64), n)
        valid = h < t if order == "unordered" else h != t
        pairs = np.stack([h[valid], t[valid]], axis=1)
        return pairs[rng.choice(total, size=k, replace=False)]
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < k:
        draw = rng.integers(0, n, size=(2 * (k - len(chosen)) + 16, 2))
        draw = draw[draw[:, 0] < draw[:, 1]] if order == "unordered" else draw[draw[:, 0] != draw[:, 1]]
        for pair in map(tuple, draw.tolist()):
            chosen.setdefault(pair)
            if len(chosen) == k:
                break
    return np.array(list(chosen), dtype=np.int64).reshape(-1, 2)


def random_baseline(
    n: int, truth: Mapping[str, set[tuple[int, int]]], ks: Mapping[str, Sequence[int]], rng: np.random.Generator
) -> dict[str, Any]:
    """Per order: the exact expected precision (``true / candidates``, the same at every ``k``) and
    recall (``k / candidates``) of uniform guessing, and one empirical draw scored as an attack.

    :param ks: per order, the numbers of guesses.
    """
    report = {}
    for order in ORDERS:
        total = candidate_count(n, order)
        draw = random_pairs(n, max(ks[order]), order, rng)
        report[order] = {
            "candidates": total,
            "expected_precision": len(truth[order]) / total if total else 0.0,
            "expected_recall": [min(int(k), total) / total if total else 0.0 for k in ks[order]],
            "empirical": precision_recall(draw, truth[order], ks[order]),
        }
    return report


# --- the attacks -----------------------------------------------------------------------------------


def _unit(x: Any) -> Any:
    import torch

    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def cosine_scorer(rows: np.ndarray, sign: str, device: Any = "cpu") -> PairScorer:
    """``-cos`` (``sign="anti"``) or ``|cos|`` (``"abs"``) of two rows."""
    import torch

    unit = _unit(torch.as_tensor(rows, dtype=torch.float32, device=device))

    def score(heads: Any, tails: Any) -> Any:
        cos = unit[heads] @ unit[tails].T
        return -cos if sign == "anti" else cos.abs()

    return score


def distance_scorer(rows: np.ndarray, device: Any = "cpu") -> PairScorer:
    """``-||e_h - e_t||`` of two rows."""
    import torch

    table = torch.as_tensor(rows, dtype=torch.float32, device=device)
    return lambda heads, tails: -torch.cdist(table[heads], table[tails])


def entity_forms(model: Any, rows: np.ndarray, device: Any = "cpu") -> Any:
    """``rows`` (a party's uploaded rows, stored floats) in the form ``model``'s interaction takes
    (complex numbers for ComplEx/RotatE; after the representation's normalizer): ``model``'s entity
    representation with its weight replaced by ``rows``."""
    import torch

    from client.kge.models import entity_embedding

    representation = copy.deepcopy(entity_embedding(model)).to(device)
    weight = torch.as_tensor(rows, dtype=representation._embeddings.weight.dtype, device=device)
    representation._embeddings = torch.nn.Embedding.from_pretrained(weight, freeze=True)
    representation.max_id = weight.shape[0]
    with torch.no_grad():
        return representation(indices=torch.arange(weight.shape[0], device=device))


def relation_scorer(model: Any, rows: np.ndarray, device: Any = "cpu") -> tuple[PairScorer, int]:
    """FedR's collusion attack: ``max_r score(e_h, r, e_t)`` over ``model``'s relations with its own
    interaction function, on ``rows``. Returns the scorer and the floats per scored pair (the
    chunk size's width: each relation is scored in turn). A reciprocal model (``reciprocal-relations``)
    is scored with its forward relations only: its inverse row ``r^-1`` scores ``(t, r, h)``, the other
    direction."""
    import torch

    from client.kge.models import relation_rows

    model = model.to(device)
    interaction = model.interaction
    if len(model.entity_representations) != 1:
        raise AttackError(f"{type(model).__name__}: the attack needs one entity representation")
    entities = entity_forms(model, rows, device)
    forward = None  # every row, or a reciprocal model's forward rows
    if model.use_inverse_triples:
        forward = relation_rows(model, torch.arange(model.num_real_relations, device=model.device))
    with torch.no_grad():
        relations = [representation(indices=forward) for representation in model.relation_representations]
    count = relations[0].shape[0]

    def pick(x: Any, index: Any, shape: tuple[int, ...]) -> Any:
        return x[index].reshape(*shape, *x.shape[1:])

    @torch.no_grad()
    def score(heads: Any, tails: Any) -> Any:
        h = pick(entities, heads, (len(heads), 1))
        t = pick(entities, tails, (1, len(tails)))
        best = None
        for j in range(count):
            parts = [x[j].reshape(1, 1, *x.shape[1:]) for x in relations]
            r = parts[0] if len(parts) == 1 else tuple(parts)
            value = interaction(h=h, r=r, t=t)
            best = value if best is None else torch.maximum(best, value)
        return best

    width = int(np.prod(entities.shape[1:])) * (2 if entities.is_complex() else 1)
    return score, width


class Attack(NamedTuple):
    """An attack: ``build(upload, colluder_model, device) -> (scorer, width)``; ``colluding``: it
    needs the colluder's model; ``symmetric``: its score of ``(h, t)`` is that of ``(t, h)``."""

    build: Callable[[Upload, Any, Any], tuple[PairScorer, int]]
    colluding: bool
    about: str
    symmetric: bool = True


#: The attacks by name (see the module docstring).
ATTACKS: dict[str, Attack] = {
    "update-anticos": Attack(
        lambda up, _m, dev: (cosine_scorer(up.delta, "anti", dev), 1), False, "-cos(Delta_h, Delta_t)"
    ),
    "update-abscos": Attack(
        lambda up, _m, dev: (cosine_scorer(up.delta, "abs", dev), 1), False, "|cos(Delta_h, Delta_t)|"
    ),
    "row-distance": Attack(
        lambda up, _m, dev: (distance_scorer(up.returned, dev), up.returned.shape[1]), False, "-||e_h - e_t||"
    ),
    "collusion-relation": Attack(
        lambda up, model, dev: relation_scorer(model, up.returned, dev),
        True,
        "max over the colluder's relations of the model's score(e_h, r, e_t)",
        symmetric=False,
    ),
}


def entity_set_recovery(recovered: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Precision and recall of a recovered entity set against the true one."""
    got, real = set(np.asarray(recovered).tolist()), set(np.asarray(truth).tolist())
    common = len(got & real)
    return {
        "recovered": len(got),
        "true": len(real),
        "precision": common / len(got) if got else 0.0,
        "recall": common / len(real) if real else 0.0,
    }


def attack_party(
    name: str,
    upload: Upload,
    colluder_model: Any,
    truth: Mapping[str, set],
    ks: Mapping[str, Sequence[int]],
    device: Any,
) -> dict[str, Any]:
    """Run attack ``name`` on one victim's upload: per order its top-``max(ks[order])`` guesses
    scored against ``truth[order]``."""
    started = time.perf_counter()
    scorer, width = ATTACKS[name].build(upload, colluder_model, device)
    n = len(upload.ids)
    report: dict[str, Any] = {"about": ATTACKS[name].about}
    wanted = {order: max(ks[order]) for order in ORDERS}
    guesses = top_pairs_by_order(scorer, n, wanted, width=width, device=device, symmetric=ATTACKS[name].symmetric)
    for order in ORDERS:
        report[order] = precision_recall(guesses[order], truth[order], ks[order])
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def select_on_other_party(parties: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> None:
    """Add ``selected`` to each party: the server-alone attack with the best ordered precision at
    the party's true count on the next party (cyclically), as measured on this party."""
    keys = list(parties)
    for position, key in enumerate(keys):
        other = parties[keys[(position + 1) % len(keys)]]
        if other is parties[key] or not names:
            continue

        def at_true(attack: str, party: Mapping[str, Any] = other) -> float:
            return party["attacks"][attack]["ordered"]["precision"][-1]

        chosen = max(names, key=at_true)
        parties[key]["selected"] = {
            "attack": chosen,
            "chosen_on": keys[(position + 1) % len(keys)],
            "rule": "best ordered precision at the true count on the chosen_on party",
            **{order: parties[key]["attacks"][chosen][order] for order in ORDERS},
        }


# --- the command -----------------------------------------------------------------------------------


def _observe_round(text: str) -> int | None:
    if text == "last":
        return None
    return integer(1)(text)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from client.kge.config import add_set_option
    from server.run_options import add_preset_option

    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_version(parser)
    parser.add_argument(
        "--data", type=path, required=True, help="a federated folder, or a graph (folder or PyKEEN name) to partition"
    )
    parser.add_argument("--clients", type=integer(2), default=None, help="parties to partition a single graph into")
    parser.add_argument(
        "--partition",
        choices=("relation", "triple"),
        default="relation",
        help="how a single graph is partitioned: relation (FedE: disjoint relations) or triple (FedR: random "
        "triples, shared relations); a federated folder keeps its own (default relation)",
    )
    add_preset_option(parser)
    add_set_option(parser, dest="sets", help="a KGE run-config value (KEY=VALUE), applied after --preset; repeatable")
    parser.add_argument("--rounds", type=integer(1), default=20, help="FedE round budget (default 20)")
    parser.add_argument(
        "--observe-round",
        type=_observe_round,
        default=None,
        help="the round whose uploads the attacker uses: a number or last (default last, the last round trained)",
    )
    parser.add_argument(
        "--view",
        choices=VIEWS,
        default="uploads",
        help="what the attacks read: uploads (each party's own upload, plain FedE / dp = local) or aggregate "
        "(only the round's per-row mean over the holders, restricted to each victim's entity set, and its change "
        "since the previous round: what the server sees under secure aggregation); --set secure-aggregation=true "
        "needs aggregate, and then the in-process plain mean stands in for SecAgg+'s, equal within its "
        "quantization step 2c/2^22 (default uploads)",
    )
    parser.add_argument(
        "--colluder", type=integer(0), default=0, help="the colluding party's index, for collusion-relation (default 0)"
    )
    parser.add_argument(
        "--attacks", nargs="+", choices=sorted(ATTACKS), default=list(ATTACKS), help="attacks to run (default all)"
    )
    parser.add_argument(
        "--k",
        type=integer(1),
        nargs="+",
        default=[100, 1000, 10000],
        help="numbers of guesses; each party's true pair count is always added last (default 100 1000 10000)",
    )
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the random-guess draw (default 0)")
    parser.add_argument("--threads", type=integer(1), default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="where to train and score: cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--out", type=path, default=None, help="the JSON report (written atomically; default stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run FedE with the observer, attack every party; write the JSON report."""
    args, config, dp, secagg = prepare(argv)
    return run_main(PROG, lambda: _run(args, config, dp, secagg, list(argv) if argv is not None else sys.argv[1:]))


def prepare(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Any, Any, dict[str, Any] | None]:
    """Every check of the command line before any work (``scripts/privacy_table.py`` runs them for
    every run first): ``(args, KGE config, dp spec or None, secure_aggregation report or None)``.

    :param argv: the arguments (``None``: ``sys.argv[1:]``).
    :raises SystemExit: 2 (``parser.error``), naming the option.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs

    check_script_outputs(parser, inputs=[args.data], files={"--out": args.out})
    if args.device not in ("cpu", "cuda") and not (args.device.startswith("cuda:") and args.device[5:].isdigit()):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    from client.kge.config import ConfigError
    from client.kge.settings import FederationSettings, in_process_local_dp
    from server.run_options import kge_run_config
    from simskip_core.cli_common import RUN_CONFIG_FLAGS

    secagg = None
    try:
        sets, config = kge_run_config(args.preset, args.sets)
        run_config = {**sets, "num-server-rounds": args.rounds}
        settings = FederationSettings.from_run_config(run_config)  # every key checked, SecAgg's too
        if settings.secure_aggregation and args.view == "aggregate":
            secagg = secure_aggregation_stand_in(settings.secagg_clipping_range)
            run_config["secure-aggregation"] = False  # the aggregate view is what SecAgg+ leaves the server
        # the Flower-free commands' one rule: dp = local honoured (its budget is --rounds releases), SecAgg
        # refused with --view uploads (under it the server receives only the per-row sums, not the uploads)
        dp = in_process_local_dp(run_config, command="attack_reconstruction.py", honours_dp=True)
    except (ConfigError, ValueError) as err:
        hint = " (--view aggregate attacks what the server sees under it)" if "secure-aggregation" in str(err) else ""
        parser.error(f"{RUN_CONFIG_FLAGS}: {err}{hint}")
    return args, config, dp, secagg


def secure_aggregation_stand_in(clipping_range: float) -> dict[str, Any]:
    """The report's ``secure_aggregation``: the in-process plain mean stands in for SecAgg+'s.

    :param clipping_range: ``secagg-clipping-range`` c.
    """
    from server.secure_aggregation import QUANTIZATION_RANGE, quantization_step

    return {
        "in_process_stand_in": True,
        "clipping_range": clipping_range,
        "quantization_range": QUANTIZATION_RANGE,
        "quantization_step": quantization_step(clipping_range),
        "about": "the in-process engine computes the plain per-row mean over the holders; Flower's SecAgg+ "
        "(simskip-sim / simskip-server) gives the server the same mean within its quantization step 2c/2^22 per "
        "coordinate, and the holder counts (docs/how-to/secure-aggregation.md)",
    }


def _run(args: argparse.Namespace, config: Any, dp: Any, secagg: Any, argv: list[str]) -> int:
    import torch

    from client.kge.centralized import run_fede_in_process
    from client.kge.run_folder import emit_json
    from kg_datasets import load_federated

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    source = str(args.data)
    kg = load_federated(source, num_clients=args.clients, partition=args.partition, seed=0)
    clients = list(kg.clients)
    if args.colluder >= len(clients):
        raise AttackError(f"--colluder {args.colluder}: the federation has {len(clients)} parties")
    recorder = Recorder(args.observe_round, args.colluder)
    result = run_fede_in_process(
        kg,
        config,
        args.rounds,
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr),
        on_upload=recorder,
        dp=dp,
    )
    if recorder.observed_round is None:
        raise AttackError(
            f"--observe-round {args.observe_round}: the run trained {result['rounds_trained']} rounds only"
        )
    train_seconds = time.perf_counter() - started
    colluder_relations = set(np.asarray(clients[args.colluder].relation_ids).tolist())
    parties: dict[str, dict[str, Any]] = {}
    entity_sets: dict[str, Any] = {}
    rng = np.random.default_rng(args.seed)
    seen = recorder.uploads if args.view == "uploads" else aggregate_view(recorder.uploads, int(kg.num_entities))
    alone = [name for name in args.attacks if not ATTACKS[name].colluding]
    for index, client in enumerate(clients):
        upload = seen[index]
        entity_sets[str(client.client_id)] = entity_set_recovery(upload.ids, client.entity_ids)
        if not np.array_equal(upload.ids, client.entity_ids):
            raise AttackError(f"party {client.client_id}: its uploads are not in its local order")
        triples = client.train.mapped_triples.numpy()
        truth = {order: true_pairs(triples, order) for order in ORDERS}
        ks = {order: [*args.k, len(truth[order])] for order in ORDERS}
        party: dict[str, Any] = {
            "entities": len(upload.ids),
            "train_triples": len(triples),
            "self_loop_triples": int(np.sum(triples[:, 0] == triples[:, 2])),
            "true_pairs": {order: len(truth[order]) for order in ORDERS},
            "relations": int(client.num_relations),
            "relations_shared_with_colluder": len(colluder_relations & set(np.asarray(client.relation_ids).tolist())),
            "random": random_baseline(len(upload.ids), truth, ks, rng),
            "attacks": {},
        }
        for name in args.attacks:
            if ATTACKS[name].colluding and index == args.colluder:
                continue
            party["attacks"][name] = attack_party(name, upload, recorder.colluder_model, truth, ks, args.device)
            ordered = party["attacks"][name]["ordered"]
            line = ", ".join(f"P@{k}={p:.4f}" for k, p in zip(ordered["k"], ordered["precision"], strict=True))
            print(f"party {client.client_id} {name}: {line}", file=sys.stderr)
        parties[str(client.client_id)] = party
    select_on_other_party(parties, alone)
    report = {
        "command": "python scripts/attack_reconstruction.py " + shlex.join(argv),
        "machine": {
            "device": args.device,
            "gpu": torch.cuda.get_device_name(torch.device(args.device)) if args.device != "cpu" else None,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "data": {
            "source": source,
            "partition": args.partition if args.clients else "the source's own",
            "parties": len(clients),
            "entities": int(kg.num_entities),
            "relations": int(kg.num_relations),
        },
        "kge": config.to_run_config(),
        # dp = local: the rows the observer saw are the released (clipped and noised) ones
        "dp": result.get("dp"),
        "rounds_budget": args.rounds,
        "rounds_trained": result["rounds_trained"],
        "observed_round": recorder.observed_round,
        "view": args.view,
        "best_round": result["best_round"],
        "test_mrr": result["test"]["overall"]["mrr"],
        "colluder": str(clients[args.colluder].client_id),
        "threat_model": "honest-but-curious server; collusion-relation adds the colluder's relation rows",
        **(
            {
                "view_about": "the attacks read the round's per-row mean over the holders, restricted to each "
                "victim's entity set, and its change since the previous round, not the victim's upload",
                "secure_aggregation": secagg,
            }
            if args.view == "aggregate"
            else {}
        ),
        "orders": {
            "ordered": "(h, t) pairs of train triples, h != t",
            "unordered": "{h, t} pairs of train triples, h != t",
        },
        "k_last": "each party's true pair count in that order",
        "entity_sets": entity_sets,
        "parties": parties,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
