"""Downstream link prediction on given entity rows (the SimSkip paper's downstream task).

Per client: the entity rows are loaded and FROZEN, the client's relation embeddings are re-fit
on its train triples for a fixed budget of epochs, with the same model, loss, negative sampler,
optimizer and batch size as KGE training (a :class:`~client.kge.training.LocalTrainer` built
from the run's :class:`~client.kge.config.KGEConfig`), then the test split is ranked under both
protocols of :mod:`client.kge.evaluation`.

Fairness: the relation tables are re-initialized from the trainer's seed (not taken from the
FedE run), and the re-fit's sampling is seeded by the same (config seed, client, epoch) stream,
so the unrefined and the refined rows get the same relation init, the same negatives and the
same budget: the entity rows are the only difference (``tests/test_refit.py`` checks that equal
rows give equal metrics). Starting from the FedE relations instead would favour the unrefined
rows, whose space those relations were trained in.

Frozen means bit-identical: the entity weight gets ``requires_grad = False`` before the loop
builds its optimizer (PyKEEN then leaves it out of the parameter list), and the entity
constrainer is switched off for the re-fit. Otherwise TransE with ``entity-constrainer =
model-default`` would re-normalize every row to unit L2 norm after each step, i.e. change the
rows under test. So refined rows are used exactly as given (not re-normalized); RotatE's and
ComplEx's rows are real pairs and are likewise used as given. :func:`refit_relations` checks
after training that the rows did not move and raises :class:`FrozenRowsChangedError` if they did.

"FedE as trained" (:func:`evaluate_as_trained`) ranks with the FedE model itself: best-round
entity rows plus the client's trained relation embeddings, no re-fit.

The skip-strength gate (:func:`choose_skip_strength`, row ``refined-gated``): SimSkip's skip
connection keeps ``f(x) = x + g(x)`` near ``x``, but a KGE scoring function whose relations
alone are re-fit cannot undo ``g``, so the raw refined rows can rank worse than the input rows.
The gate interpolates ``x + alpha (f(x) - x)`` (:func:`skip_strength_rows`) and picks ``alpha``
from a grid by the client's VALID MRR under the run's ``eval-protocol``, scored with the FedE
model as trained (its own relations, no re-fit: one ranking of the valid split per ``alpha``).
Ties go to the smaller ``alpha``; ``alpha = 0`` gives the unrefined rows bit for bit, so the
gate can always fall back to them. Only valid ranks decide (filtered by all known triples, as
every evaluation here); no test metric is computed before the choice. Where no
trained relations fit the client's model (the collection setting's pooled relations), each
``alpha`` is scored by the same relation re-fit as the table rows, ranked on valid instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from client.kge.config import KGEConfig
from client.kge.models import entity_embedding
from client.kge.training import LocalTrainer, TrainableGraph

__all__ = [
    "FrozenRowsChangedError",
    "GATED_ROW",
    "GateResult",
    "PROTOCOL_NAMES",
    "RefitResult",
    "SkipStrengthGateError",
    "choose_skip_strength",
    "evaluate_as_trained",
    "evaluate_downstream",
    "evaluate_protocols",
    "pick_skip_strength",
    "refit_relations",
    "skip_strength_rows",
]

#: Both protocols are always reported.
PROTOCOL_NAMES: tuple[str, ...] = ("standard", "fede")
#: The table row of the validation-gated refined rows.
GATED_ROW = "refined-gated"
#: The metric the gate maximizes on the valid split.
GATE_METRIC = "mrr"


class FrozenRowsChangedError(RuntimeError):
    """The entity rows changed during the relation re-fit (they must stay frozen)."""


class SkipStrengthGateError(ValueError):
    """The skip-strength gate cannot run (empty grid or valid split, rows of another shape)."""


@dataclass
class RefitResult:
    """Outcome of one re-fit + evaluation.

    :param metrics: protocol -> metrics of :func:`client.kge.evaluation.evaluate_link_prediction`.
    :param losses: mean training loss of each re-fit epoch.
    :param seconds: wall time of the re-fit (training only).
    :param trainer: the trainer holding the re-fit model (for inspection; not serialized).
    """

    metrics: dict[str, dict[str, float]]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainer: LocalTrainer | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"metrics", "losses", "seconds"}``."""
        return {"metrics": self.metrics, "losses": self.losses, "seconds": round(self.seconds, 4)}


def _freeze_entities(trainer: LocalTrainer) -> None:
    """Exclude the entity table from gradients, the optimizer and the per-step constrainer."""
    embedding = entity_embedding(trainer.model)
    embedding._embeddings.weight.requires_grad_(False)
    # TransE's default constrainer would rewrite the frozen rows after every step.
    embedding.constrainer = None


def evaluate_protocols(
    trainer: LocalTrainer, split: str = "test", protocols: Sequence[str] = PROTOCOL_NAMES
) -> dict[str, dict[str, float]]:
    """Rank ``split`` with the trainer's current model under each protocol."""
    return {protocol: trainer.evaluate(split, protocol) for protocol in protocols}


def refit_relations(
    graph: TrainableGraph,
    config: KGEConfig,
    entity_rows: np.ndarray,
    *,
    epochs: int,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOL_NAMES,
    device: torch.device | str | None = None,
) -> RefitResult:
    """Re-fit the relation embeddings on frozen ``entity_rows`` and evaluate.

    :param graph: the client's graph (train factory in client-local ids; valid/test for evaluation).
    :param config: the run's KGE config (model, loss, sampler, optimizer, batch size, seed).
    :param entity_rows: float array ``(graph.num_entities, entity_dim)`` in local-id order.
    :param epochs: the re-fit budget (``0``: evaluate the fresh relations on the given rows).
    :param split: the evaluated split (``"test"``; ``"valid"`` for model selection).
    :param protocols: protocols to report.
    :param device: training device (CUDA when present by default).
    :raises client.kge.training.EmbeddingShapeError: rows of the wrong shape or non-finite.
    :raises FrozenRowsChangedError: if the rows moved during the re-fit.
    """
    trainer = LocalTrainer(graph, config, device=device)
    trainer.set_entity_embeddings(entity_rows)
    _freeze_entities(trainer)
    before = trainer.get_entity_embeddings()
    started = time.perf_counter()
    losses = trainer.train(epochs)
    seconds = time.perf_counter() - started
    after = trainer.get_entity_embeddings()
    if not np.array_equal(before, after):
        moved = int(np.flatnonzero((before != after).any(axis=1))[0])
        raise FrozenRowsChangedError(f"client {graph.client_id}: entity row {moved} changed during the relation re-fit")
    return RefitResult(evaluate_protocols(trainer, split, protocols), losses, seconds, trainer)


def evaluate_as_trained(
    graph: TrainableGraph,
    config: KGEConfig,
    entity_rows: np.ndarray,
    relation_state: Mapping[str, np.ndarray],
    *,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOL_NAMES,
    device: torch.device | str | None = None,
) -> RefitResult:
    """Evaluate the model as FedE trained it: given entity rows and trained relation tensors.

    :param relation_state: the model's non-entity tensors by state-dict name (as in the client's
        ``relation_embeddings.npz``), or a full private state of
        :meth:`LocalTrainer.get_private_state` (``model/...`` keys).
    :raises client.kge.training.PrivateStateError: when the tensors do not fit the model.
    """
    trainer = _as_trained_trainer(graph, config, relation_state, device)
    trainer.set_entity_embeddings(entity_rows)
    return RefitResult(evaluate_protocols(trainer, split, protocols), [], 0.0, trainer)


def _as_trained_trainer(
    graph: TrainableGraph, config: KGEConfig, relation_state: Mapping[str, np.ndarray], device: torch.device | str | None
) -> LocalTrainer:
    """A trainer holding the client's trained relation tensors (entity rows still to be set)."""
    trainer = LocalTrainer(graph, config, device=device)
    state = dict(relation_state)
    if not any(key.startswith("model/") for key in state):
        state = {f"model/{key}": value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.startswith(("model/", "meta/"))}  # optimizer moments are irrelevant here
    state.setdefault("meta/epochs_done", np.asarray([0], dtype=np.int64))
    trainer.set_private_state(state)
    return trainer


# ----------------------------------------------------------------------------- skip-strength gate
def skip_strength_rows(rows: np.ndarray, refined: np.ndarray, alpha: float) -> np.ndarray:
    """The rows at skip strength ``alpha``: ``rows + alpha * (refined - rows)``, float32.

    ``alpha = 0`` returns (a copy of) ``rows`` and ``alpha = 1`` ``refined``, bit for bit: the
    endpoints are the table's ``unrefined`` and ``refined`` rows, not a rounding of them.

    :param rows: ``(n, entity_dim)`` input rows ``x``.
    :param refined: ``(n, entity_dim)`` encoder output ``f(x)`` (the raw SimSkip rows).
    :param alpha: the skip strength.
    :raises SkipStrengthGateError: when the shapes differ.
    """
    rows, refined = np.asarray(rows), np.asarray(refined)
    if rows.shape != refined.shape:
        raise SkipStrengthGateError(f"refined rows of shape {refined.shape} do not match the input rows {rows.shape}")
    if alpha == 0.0:
        return np.array(rows, dtype=np.float32, copy=True)
    if alpha == 1.0:
        return np.array(refined, dtype=np.float32, copy=True)
    x = rows.astype(np.float32, copy=False)
    return x + np.float32(alpha) * (refined.astype(np.float32, copy=False) - x)


def pick_skip_strength(scores: Mapping[float, float]) -> float:
    """The ``alpha`` of the best score; ties go to the smaller ``alpha`` (closer to the input rows).

    :raises SkipStrengthGateError: for no scores, or a NaN score (no order to pick from).
    """
    if not scores:
        raise SkipStrengthGateError("no skip strength was scored")
    if any(score != score for score in scores.values()):
        raise SkipStrengthGateError(f"a valid score is NaN: {dict(scores)}")
    best = max(scores.values())
    return min(alpha for alpha, score in scores.items() if score == best)


@dataclass
class GateResult:
    """The gate's choice for one client.

    :param alpha: the chosen skip strength.
    :param valid_scores: ``alpha`` -> valid MRR under ``protocol``, in grid order.
    :param protocol: the evaluation protocol of the scores (the run's ``eval-protocol``).
    :param selection: ``"as-trained"`` (FedE's relations) or ``"refit"`` (relations re-fit per alpha).
    :param variant: the refined variant that was gated (the configured encoder's).
    :param seconds: wall time of the selection.
    """

    alpha: float
    valid_scores: dict[float, float]
    protocol: str
    selection: str
    variant: str = "refined"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the per-alpha scores keyed by the alpha's text (``"0.25"``)."""
        return {
            "alpha": self.alpha,
            "valid_mrr": {_alpha_key(a): s for a, s in self.valid_scores.items()},
            "protocol": self.protocol,
            "split": "valid",
            "selection": self.selection,
            "variant": self.variant,
            "seconds": round(self.seconds, 4),
        }


def _alpha_key(alpha: float) -> str:
    return repr(float(alpha)).removesuffix(".0")


def choose_skip_strength(
    graph: TrainableGraph,
    config: KGEConfig,
    rows: np.ndarray,
    refined: np.ndarray,
    grid: Sequence[float],
    *,
    relation_state: Mapping[str, np.ndarray] | None = None,
    refit_epochs: int = 0,
    variant: str = "refined",
    device: torch.device | str | None = None,
) -> GateResult:
    """Pick the skip strength with the best valid MRR under ``config.eval_protocol``.

    :param graph: the client's graph (its ``valid`` split is ranked; ``test`` is never used).
    :param config: the run's KGE config.
    :param rows: ``(n, entity_dim)`` unrefined rows (local-id order).
    :param refined: ``(n, entity_dim)`` the encoder's output for ``rows``.
    :param grid: skip strengths to try (``0`` should be among them: the fallback).
    :param relation_state: the client's trained relation tensors: each alpha is scored by the
        FedE model as trained. ``None``: by a relation re-fit of ``refit_epochs`` epochs.
    :param refit_epochs: the re-fit budget of the ``None`` case.
    :param variant: the gated variant's name (recorded only).
    :raises SkipStrengthGateError: for an empty grid or valid split, or mismatched shapes.
    :raises client.kge.training.PrivateStateError: when ``relation_state`` does not fit the model.
    """
    if not grid:
        raise SkipStrengthGateError(f"client {graph.client_id}: empty skip-strength grid")
    valid = getattr(graph, "valid", None)
    if valid is None or valid.num_triples == 0:
        raise SkipStrengthGateError(f"client {graph.client_id}: no valid triples to choose the skip strength on")
    protocol = config.eval_protocol
    started = time.perf_counter()
    scores: dict[float, float] = {}
    if relation_state is not None:
        trainer = _as_trained_trainer(graph, config, relation_state, device)  # one model, rows swapped per alpha
        for alpha in grid:
            trainer.set_entity_embeddings(skip_strength_rows(rows, refined, alpha))
            scores[float(alpha)] = float(trainer.evaluate("valid", protocol)[GATE_METRIC])
        selection = "as-trained"
    else:
        for alpha in grid:
            result = refit_relations(graph, config, skip_strength_rows(rows, refined, alpha), epochs=refit_epochs,
                                     split="valid", protocols=(protocol,), device=device)
            scores[float(alpha)] = float(result.metrics[protocol][GATE_METRIC])
        selection = "refit"
    return GateResult(pick_skip_strength(scores), scores, protocol, selection, variant, time.perf_counter() - started)


def evaluate_downstream(
    graph: TrainableGraph,
    config: KGEConfig,
    unrefined_rows: np.ndarray,
    refined_rows: Mapping[str, np.ndarray],
    *,
    refit_epochs: int,
    relation_state: Mapping[str, np.ndarray] | None = None,
    gate_grid: Sequence[float] = (),
    gated_variant: str | None = None,
    split: str = "test",
    device: torch.device | str | None = None,
) -> dict[str, dict[str, Any]]:
    """One client's rows of the results table: as trained, unrefined, every refined variant and
    (with a ``gate_grid``) the validation-gated ``refined-gated`` row.

    :param unrefined_rows: the FedE (best round) entity rows, local-id order.
    :param refined_rows: variant name (``refined``, ``refined-no-skip``) -> refined rows.
    :param refit_epochs: the re-fit budget, identical for every row.
    :param relation_state: the client's trained relation tensors; ``None`` leaves out the
        ``fede-as-trained`` row (and the gate scores each alpha by a re-fit instead).
    :param gate_grid: skip strengths of :func:`choose_skip_strength`; empty: no gated row.
    :param gated_variant: the variant of ``refined_rows`` to gate (default: the first one).
    :returns: ``{row: {"metrics": {protocol: metrics}, "losses": [...], "seconds": s}}``; the
        gated row also holds ``"gate"`` (:meth:`GateResult.as_dict`).
    :raises SkipStrengthGateError: when the gate cannot run (checked before any re-fit).
    """
    gated_variant = gated_variant or next(iter(refined_rows), None)
    if gate_grid:
        if gated_variant not in refined_rows:
            raise SkipStrengthGateError(f"client {graph.client_id}: no refined rows of variant {gated_variant!r} to gate")
        valid = getattr(graph, "valid", None)
        if valid is None or valid.num_triples == 0:
            raise SkipStrengthGateError(f"client {graph.client_id}: no valid triples to choose the skip strength on")
    results: dict[str, dict[str, Any]] = {}
    if relation_state is not None:
        results["fede-as-trained"] = evaluate_as_trained(
            graph, config, unrefined_rows, relation_state, split=split, device=device
        ).as_dict()
    evaluated: list[tuple[np.ndarray, str]] = [(unrefined_rows, "unrefined")]
    results["unrefined"] = refit_relations(graph, config, unrefined_rows, epochs=refit_epochs, split=split, device=device).as_dict()
    for variant, rows in refined_rows.items():
        results[variant] = refit_relations(graph, config, rows, epochs=refit_epochs, split=split, device=device).as_dict()
        evaluated.append((rows, variant))
    if gate_grid:
        gate = choose_skip_strength(graph, config, unrefined_rows, refined_rows[gated_variant], gate_grid,
                                    relation_state=relation_state, refit_epochs=refit_epochs, variant=gated_variant,
                                    device=device)
        gated = skip_strength_rows(unrefined_rows, refined_rows[gated_variant], gate.alpha)
        # The re-fit is deterministic in its rows (tests/test_refit.py): rows equal to an already
        # evaluated row (alpha 0 or 1) would repeat that re-fit to the bit, so its result is reused.
        same = next((row for rows, row in evaluated if np.array_equal(np.asarray(rows, dtype=np.float32), gated)), None)
        if same is not None:
            results[GATED_ROW] = {**results[same], "reused_from": same}
        else:
            results[GATED_ROW] = refit_relations(graph, config, gated, epochs=refit_epochs, split=split, device=device).as_dict()
        results[GATED_ROW]["gate"] = gate.as_dict()
        # table order: the gated row right after the variant it gates
        order = [row for row in results if row != GATED_ROW]
        order.insert(order.index(gated_variant) + 1, GATED_ROW)
        results = {row: results[row] for row in order}
    return results
