"""Filtered link-prediction evaluation under the two protocols the field reports.

Both protocols use PyKEEN's :class:`~pykeen.evaluation.RankBasedEvaluator` (filtered, realistic
ranks: the mean of the optimistic and pessimistic rank, so ties are neither rewarded nor
punished); nothing here ranks by hand. What is ours is how the scores reach the evaluator
(:func:`_rank_into`): PyKEEN's ``evaluate`` builds each batch's filter by comparing the batch
with every known triple (a dense ``batch x known`` mask) and scores through ``(batch, entities,
dim)`` broadcasts; measured on FB15k-237-Fed3 client 0 that took ~480 s for one protocol. Here the
scores come from :mod:`client.kge.candidate_scoring` (distance matrix / matrix product) and the
filter from a sorted index of the known triples, then :class:`FusedRankEvaluator` (PyKEEN's
evaluator with the same rank definition) ranks them.

Profile of the Fed3 test set, both protocols (torch profiler, TransE, before this module's fused
counting): ``_cdist_forward`` (L1 distances) ~60 % of the time; PyKEEN's ``Ranks.from_scores``
(three comparisons of the (B, K) score matrix, each a bool tensor summed through an int64 copy,
``copy_`` + ``sum`` + ``gt``/``ge``/``isfinite``) ~30 %. The comparisons are now one fused pass
(:data:`_count_ranks`, compiled like the L1 kernel of :mod:`client.kge.candidate_scoring`), and
the FedE protocol's candidate restriction is skipped when it keeps every column. Measured with
``scripts/bench_eval.py`` (untrained models, 1 torch thread, load average 3-4 on 2 cores), the
whole Fed3 test set (31,013 triples, 3 clients) under both protocols: TransE 145 s wall / 104
CPU-s before, 16.6 s / 15.2 CPU-s after; RotatE 11.9 s, ComplEx 8.7 s, DistMult 8.1 s after.
Results are unchanged: the L1 kernel is bit-identical to ``cdist`` and the counts are PyKEEN's.

``standard``
    Head and tail prediction; every entity of the model is a candidate; the ranking is filtered
    with the client's train, valid and test triples. MRR and Hits@1/3/10.
``fede``
    The protocol of FedE's public code: tail prediction only; candidates restricted to the
    client's train entities; filtered likewise. MRR and Hits@1/5/10.

When the model is a client's local model (its entity set is the client's train entities, as in
:class:`kg_datasets.ClientGraph`), the two candidate sets coincide and the protocols differ only
in the predicted side and the reported Hits@k. When the model spans a larger entity set (the
federation's global table, or a centrally trained model), pass ``candidate_entities`` for the
FedE protocol and the standard protocol ranks against all of the model's entities.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pykeen.evaluation import RankBasedEvaluator
from pykeen.evaluation.ranks import Ranks
from pykeen.typing import LABEL_HEAD, LABEL_TAIL

from client.kge.candidate_scoring import fused_kernel, score_heads, score_tails

if TYPE_CHECKING:  # pragma: no cover
    from pykeen.models import Model

    from kg_datasets import ClientGraph

__all__ = [
    "PROTOCOLS",
    "EvaluationProtocol",
    "FusedRankEvaluator",
    "UnknownProtocolError",
    "evaluate_client",
    "evaluate_client_protocols",
    "evaluate_link_prediction",
    "evaluate_protocols",
    "weighted_overall",
]

#: Number of triples scored at once (each scored against every entity: batch x entities floats).
DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class EvaluationProtocol:
    """How one protocol ranks and what it reports.

    :param name: the protocol's name.
    :param side: PyKEEN's side key of the reported metrics (``"both"`` or ``"tail"``).
    :param targets: the predicted positions.
    :param ks: the k of the reported Hits@k.
    :param restrict_to_train_entities: whether candidates are only the client's train entities.
    """

    name: str
    side: str
    targets: tuple[str, ...]
    ks: tuple[int, ...]
    restrict_to_train_entities: bool


PROTOCOLS: Mapping[str, EvaluationProtocol] = {
    "standard": EvaluationProtocol("standard", "both", (LABEL_HEAD, LABEL_TAIL), (1, 3, 10), False),
    "fede": EvaluationProtocol("fede", "tail", (LABEL_TAIL,), (1, 5, 10), True),
}


class UnknownProtocolError(ValueError):
    """Raised for a protocol name that is not in :data:`PROTOCOLS`."""


def _protocol(name: str) -> EvaluationProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UnknownProtocolError(f"unknown evaluation protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


def evaluate_link_prediction(
    model: Model,
    mapped_triples: torch.Tensor,
    *,
    filter_triples: Sequence[torch.Tensor] = (),
    protocol: str = "standard",
    candidate_entities: Collection[int] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Rank ``mapped_triples`` with ``model`` and return filtered rank metrics.

    :param model: a PyKEEN model whose entity and relation ids the triples use.
    :param mapped_triples: shape (n, 3), ``(head, relation, tail)`` ids of the triples to rank.
    :param filter_triples: further known true triples (each shape (m, 3)) removed from the ranking;
        the evaluated triples are always filtered too.
    :param protocol: ``"standard"`` or ``"fede"`` (see the module docstring).
    :param candidate_entities: the candidate entity ids for the FedE protocol (the client's train
        entities in the model's id space); ``None`` means all of the model's entities. Ignored by
        the standard protocol.
    :param batch_size: triples scored at once (default :data:`DEFAULT_BATCH_SIZE`).
    :param device: where to score; the model's device by default.
    :returns: ``{"mrr", "hits@k" for the protocol's k, "num_triples"}``.
    :raises UnknownProtocolError: for an unknown protocol name.
    :raises ValueError: for triples of the wrong shape, ids outside the model, or evaluated
        entities outside ``candidate_entities``.
    """
    return evaluate_protocols(
        model,
        mapped_triples,
        filter_triples=filter_triples,
        protocols=(protocol,),
        candidate_entities=candidate_entities,
        batch_size=batch_size,
        device=device,
    )[protocol]


def evaluate_protocols(
    model: Model,
    mapped_triples: torch.Tensor,
    *,
    filter_triples: Sequence[torch.Tensor] = (),
    protocols: Sequence[str] = ("standard", "fede"),
    candidate_entities: Collection[int] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    reciprocal_ranks: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Several protocols at the cost of one: each side's scores are computed once and shared.

    The standard and FedE protocols both rank tails; scoring them once saves a third of the work.

    :param protocols: protocol names; the other parameters and the errors are those of
        :func:`evaluate_link_prediction`.
    :param reciprocal_ranks: if given, filled with ``{protocol: (n,) float64}``: each evaluated
        triple's reciprocal realistic rank, averaged over the protocol's predicted sides (so
        its mean is the protocol's MRR). Paired tests over triples use these
        (:mod:`client.kge.significance`).
    :returns: ``{protocol: metrics}`` with the metrics of :func:`evaluate_link_prediction`.
    """
    specs = [_protocol(name) for name in protocols]
    triples = torch.as_tensor(mapped_triples, dtype=torch.long)
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise ValueError(f"mapped_triples must have shape (n, 3), got {tuple(triples.shape)}")
    if triples.shape[0] == 0:
        raise ValueError("no triples to evaluate")
    _check_ids(model, triples, "evaluated triples")
    filters = [torch.as_tensor(t, dtype=torch.long) for t in filter_triples if len(t)]
    for extra in filters:
        _check_ids(model, extra, "filter triples")

    consumers = []
    for spec in specs:
        restrict = None
        if spec.restrict_to_train_entities and candidate_entities is not None:
            restrict = torch.as_tensor(sorted({int(e) for e in candidate_entities}), dtype=torch.long)
            if restrict.numel() == 0 or int(restrict[0]) < 0 or int(restrict[-1]) >= model.num_entities:
                raise ValueError(f"candidate_entities must be non-empty ids in [0, {model.num_entities}) of the model")
            outside = set(triples[:, 2].tolist()) - set(restrict.tolist())
            if outside:
                raise ValueError(
                    f"{len(outside)} evaluated tail entities are not candidates (e.g. id {min(outside)}); "
                    "the FedE protocol needs every test entity among the client's train entities"
                )
        # only the metrics reported: PyKEEN's defaults add a dozen adjusted metrics we would discard
        evaluator = FusedRankEvaluator(
            filtered=True,
            metrics=["inverse_harmonic_mean_rank", *("hits_at_k" for _ in spec.ks)],
            metrics_kwargs=[None, *({"k": k} for k in spec.ks)],
            add_defaults=False,
        )
        consumers.append(_Consumer(evaluator, spec.targets, restrict))

    was_training = model.training
    model.eval()
    try:
        _rank_into(
            consumers,
            model,
            triples,
            filters,
            batch_size or DEFAULT_BATCH_SIZE,
            torch.device(device) if device is not None else None,
        )
    finally:
        model.train(was_training)
    out: dict[str, dict[str, float]] = {}
    for name, spec, consumer in zip(protocols, specs, consumers):
        if reciprocal_ranks is not None:
            # the evaluator keeps each side's ranks batch by batch, in triple order (finalize clears them)
            per_side = [
                1.0 / np.concatenate(consumer.evaluator.ranks[target, "realistic"]).astype(np.float64)
                for target in spec.targets
            ]
            reciprocal_ranks[name] = np.mean(per_side, axis=0)
        results = consumer.evaluator.finalize()
        metrics = {"mrr": float(results.get_metric(f"{spec.side}.realistic.inverse_harmonic_mean_rank"))}
        for k in spec.ks:
            metrics[f"hits@{k}"] = float(results.get_metric(f"{spec.side}.realistic.hits_at_{k}"))
        metrics["num_triples"] = int(triples.shape[0])
        out[name] = metrics
    return out


def _count_ranks_eager(scores: torch.Tensor, true_scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Counts behind PyKEEN's ``Ranks.from_scores``: candidates scoring better, at least as well, finite.

    :param scores: shape (B, K), NaN marks filtered candidates.
    :param true_scores: shape (B, 1).
    :returns: three int64 tensors of shape (B,).
    """
    return (scores > true_scores).sum(dim=1), (scores >= true_scores).sum(dim=1), torch.isfinite(scores).sum(dim=1)


#: One fused pass over the score matrix when compiled (eager: three passes, like PyKEEN's); work = B x K scores.
_count_ranks = fused_kernel(min_work=2**18)(_count_ranks_eager)


class FusedRankEvaluator(RankBasedEvaluator):
    """PyKEEN's :class:`~pykeen.evaluation.RankBasedEvaluator` with the rank counting fused.

    Ranks are defined exactly as in ``Ranks.from_scores`` (optimistic = 1 + #better, pessimistic
    = #at-least-as-good, realistic = their mean, options = #finite); the three comparisons run as
    one pass over the scores (:data:`_count_ranks`) instead of three plus int64 copies. Metrics
    and finalization are PyKEEN's.
    """

    def process_scores_(  # same contract as the parent's
        self,
        hrt_batch: torch.Tensor,
        target: str,
        scores: torch.Tensor,
        true_scores: torch.Tensor | None = None,
        dense_positive_mask: torch.Tensor | None = None,
    ) -> None:
        if true_scores is None:
            raise ValueError(f"{self.__class__.__name__} needs the true scores!")
        better, at_least, finite = _count_ranks(scores, true_scores.view(-1, 1), work=scores.numel())
        optimistic = better + 1
        ranks = Ranks(
            optimistic=optimistic,
            pessimistic=at_least,
            realistic=(optimistic + at_least).float() * 0.5,
            number_of_options=finite,
        )
        self.num_entities = scores.shape[1]
        for rank_type, value in ranks.items():
            self.ranks[target, rank_type].append(value.detach().cpu().numpy())
        self.num_candidates[target].append(finite.detach().cpu().numpy())


@dataclass(frozen=True)
class _Consumer:
    """One protocol's evaluator, the sides it ranks and its candidate columns (``None``: all)."""

    evaluator: RankBasedEvaluator
    targets: tuple[str, ...]
    restrict: torch.Tensor | None


class _KnownAnswers:
    """The known true answers of (h, r, ?) or (?, r, t) queries, as a sorted index.

    :param known: shape (n, 3), every known true triple.
    :param target: ``"head"`` or ``"tail"``, the predicted position.
    :param num_relations: the relation id range (for the query key).
    """

    def __init__(self, known: torch.Tensor, target: str, num_relations: int) -> None:
        self.answer_column = 2 if target == LABEL_TAIL else 0
        self.num_relations = num_relations
        keys = self._query_keys(known)
        self.keys, order = torch.sort(keys)
        self.answers = known[order, self.answer_column]

    def _query_keys(self, triples: torch.Tensor) -> torch.Tensor:
        entity = triples[:, 0] if self.answer_column == 2 else triples[:, 2]
        return entity * self.num_relations + triples[:, 1]

    def positions(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in batch, answer entity) pairs of every known answer of the batch's queries."""
        query = self._query_keys(batch)
        start = torch.searchsorted(self.keys, query, right=False)
        counts = torch.searchsorted(self.keys, query, right=True) - start
        rows = torch.repeat_interleave(torch.arange(batch.shape[0]), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return rows, self.answers[torch.repeat_interleave(start, counts) + offsets]


def _rank_into(
    consumers: Sequence[_Consumer],
    model: Model,
    triples: torch.Tensor,
    filters: Sequence[torch.Tensor],
    batch_size: int,
    device: torch.device | None,
) -> None:
    """Score ``triples`` against every entity, filter known answers, hand the scores to PyKEEN.

    Same semantics as ``RankBasedEvaluator.evaluate(filtered=True, restrict_entities_to=...)``:
    the true answer keeps its score, other known answers get NaN (PyKEEN's filter marker), and
    non-candidate columns are dropped. Each side is scored once for all consumers ranking it.
    """
    device = device or model.device
    known = torch.cat([triples, *filters]).cpu()
    candidates = torch.arange(model.num_entities, device=device)
    targets = [target for target in (LABEL_HEAD, LABEL_TAIL) if any(target in c.targets for c in consumers)]
    with torch.no_grad():
        for target in targets:
            index = _KnownAnswers(known, target, model.num_relations)
            column = 2 if target == LABEL_TAIL else 0
            for begin in range(0, triples.shape[0], batch_size):
                batch = triples[begin : begin + batch_size]
                on_device = batch.to(device)
                if target == LABEL_TAIL:
                    scores = score_tails(model, on_device[:, :2], candidates)
                else:
                    scores = score_heads(model, on_device[:, 1:], candidates)
                scores = scores.float()
                rows = torch.arange(batch.shape[0], device=device)
                true_scores = scores[rows, on_device[:, column]].clone()
                filter_rows, filter_entities = index.positions(batch)
                scores[filter_rows.to(device), filter_entities.to(device)] = float("nan")
                scores[rows, on_device[:, column]] = true_scores
                for consumer in consumers:
                    if target not in consumer.targets:
                        continue
                    keeps_all = consumer.restrict is None or consumer.restrict.numel() == scores.shape[1]
                    consumer.evaluator.process_scores_(
                        hrt_batch=on_device,
                        target=target,
                        true_scores=true_scores.unsqueeze(-1),
                        scores=scores if keeps_all else scores[:, consumer.restrict.to(device)],
                    )


def _check_ids(model: Model, triples: torch.Tensor, what: str) -> None:
    """Refuse ids outside the model's tables (PyKEEN would index out of range or mis-rank)."""
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise ValueError(f"{what} must have shape (n, 3), got {tuple(triples.shape)}")
    if triples.numel() == 0:
        return
    entities = triples[:, [0, 2]]
    if int(entities.min()) < 0 or int(entities.max()) >= model.num_entities:
        raise ValueError(
            f"{what} hold entity ids outside [0, {model.num_entities}) of the model "
            f"(min {int(entities.min())}, max {int(entities.max())})"
        )
    relations = triples[:, 1]  # the graph's ids: a reciprocal model's tables hold twice as many rows
    if int(relations.min()) < 0 or int(relations.max()) >= model.num_real_relations:
        raise ValueError(
            f"{what} hold relation ids outside [0, {model.num_real_relations}) of the model "
            f"(min {int(relations.min())}, max {int(relations.max())})"
        )


def evaluate_client(
    model: Model,
    client: ClientGraph,
    *,
    split: str = "test",
    protocol: str = "standard",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Evaluate a client's local model on one of its splits.

    The model uses the client's local ids (its entity set is the client's train entities).
    Filtering uses the client's train, valid and test triples.

    :param model: the client's PyKEEN model, ``model.num_entities == client.num_entities``.
    :param client: the client's graph.
    :param split: ``"valid"`` or ``"test"``.
    :param protocol: ``"standard"`` or ``"fede"``.
    :param batch_size: see :func:`evaluate_link_prediction`.
    :param device: see :func:`evaluate_link_prediction`.
    :returns: the metrics of :func:`evaluate_link_prediction`.
    """
    return evaluate_client_protocols(
        model, client, split=split, protocols=(protocol,), batch_size=batch_size, device=device
    )[protocol]


def evaluate_client_protocols(
    model: Model,
    client: ClientGraph,
    *,
    split: str = "test",
    protocols: Sequence[str] = ("standard", "fede"),
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    reciprocal_ranks: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_client` for several protocols, sharing the scores (:func:`evaluate_protocols`).

    :param reciprocal_ranks: see :func:`evaluate_protocols`.
    :returns: ``{protocol: metrics}``.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if model.num_entities != client.num_entities:
        raise ValueError(
            f"client {client.client_id}: model has {model.num_entities} entities, "
            f"the client holds {client.num_entities}"
        )
    factories = {"train": client.train, "valid": client.valid, "test": client.test}
    evaluated = factories[split].mapped_triples
    filters = [factory.mapped_triples for name, factory in factories.items() if name != split]
    train_entities = torch.unique(client.train.mapped_triples[:, [0, 2]])
    return evaluate_protocols(
        model,
        evaluated,
        filter_triples=filters,
        protocols=protocols,
        candidate_entities=train_entities.tolist(),
        batch_size=batch_size,
        device=device,
        reciprocal_ranks=reciprocal_ranks,
    )


def weighted_overall(per_client: Sequence[Mapping[str, Any]], weight_key: str = "num_triples") -> dict[str, float]:
    """Average per-client metrics, each weighted by its number of evaluated triples.

    :param per_client: metric dicts as returned by :func:`evaluate_link_prediction`; all must
        hold the same metric keys.
    :param weight_key: the key holding each client's weight.
    :returns: the weighted mean of every metric and the summed weight under ``weight_key``.
    """
    if not per_client:
        raise ValueError("no client metrics to combine")
    keys = [key for key in per_client[0] if key != weight_key]
    for index, metrics in enumerate(per_client):
        if set(metrics) - {weight_key} != set(keys):
            raise ValueError(f"client metrics {index} have keys {sorted(metrics)}, expected {sorted(keys)}")
    weights = [float(metrics[weight_key]) for metrics in per_client]
    total = sum(weights)
    if total <= 0:
        raise ValueError("client weights sum to zero")
    overall = {key: sum(w * float(m[key]) for w, m in zip(weights, per_client)) / total for key in keys}
    overall[weight_key] = int(total)
    return overall
