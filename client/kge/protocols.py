"""Downstream protocols: how a client's entity rows become a link predictor before ranking.

SimSkip's claim is about the rows; what a KGE model can do with new rows depends on what is
trained after them. So every row (unrefined, refined, the perturbation control, the no-skip
ablation) goes through the same protocol, with the same seed, budget and stopping rule, and the
table reports each protocol side by side (:func:`client.kge.comparison.evaluate_client_rows`).

Registry :data:`DOWNSTREAM_PROTOCOLS` (run-config key ``downstream-protocols``, a list):

``as-trained``
    The rows with the client's trained relations (the FedE model's own), nothing trained.
``relation-refit``
    Rows frozen (bit-identical, the entity constrainer off); relation embeddings trained until
    the valid MRR stops improving (``downstream-patience`` checks, one check per epoch, at most
    ``refit-epochs`` epochs; the best epoch's state is kept). ``refit-init`` says where the
    relations start: ``trained`` (the client's trained relations) and/or ``fresh`` (the run
    seed's initialization); each is its own protocol label (``relation-refit:trained``,
    ``relation-refit:fresh``).
``adapter``
    Rows frozen; a per-client linear map ``W`` (``d x d``, identity at start) applied to every
    entity row, learned together with the trained relations under the same stopping rule.
``finetune``
    Rows and relations trained from the given rows and the trained relations under the same
    stopping rule (continued training: a personalization reading, not a frozen-feature one).

Frozen means bit-identical: the entity weight gets ``requires_grad = False`` before the loop
builds its optimizer (PyKEEN then leaves it out of the parameter list), and the entity
constrainer is switched off (TransE's ``model-default`` constrainer would re-normalize every row
after each step, i.e. change the rows under test); :func:`run_protocol` checks afterwards that
the rows did not move. Rows are used exactly as given (RotatE's and ComplEx's as real pairs; the
adapter's map then acts on those ``2d`` real columns).

Fairness: every row of a comparison goes through the same protocol with the same KGE seed, so
relation init (trained or the seed's fresh one), negatives and stopping rule are the same: the
rows are the only difference. ``refit-init = trained`` starts from relations trained in the
unrefined rows' space (a head start for those rows, which only strengthens the baseline);
``fresh`` removes that advantage at the cost of a longer re-fit.

Where a client has no trained relations that fit its model (:func:`relations_fit`),
``as-trained`` and ``relation-refit:trained`` are skipped (named in the record) and ``adapter``
and ``finetune`` start from fresh relations (``init`` in the record).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from client.kge.config import KGEConfig
from client.kge.early_stopping import EarlyStopping
from client.kge.evaluation import evaluate_client_protocols
from client.kge.models import entity_embedding
from client.kge.refinement_config import REFIT_INITS, check_protocol_names
from client.kge.training import LocalTrainer, PrivateStateError, TrainableGraph

__all__ = [
    "DOWNSTREAM_PROTOCOLS",
    "EVAL_PROTOCOLS",
    "REFIT_INITS",
    "DownstreamBudget",
    "DownstreamProtocol",
    "FrozenRowsChangedError",
    "ProtocolRun",
    "UnknownDownstreamProtocolError",
    "as_trained_trainer",
    "protocol_labels",
    "relations_fit",
    "run_protocol",
]

#: The link-prediction protocols every test evaluation reports (:mod:`client.kge.evaluation`).
EVAL_PROTOCOLS: tuple[str, ...] = ("standard", "fede")


class UnknownDownstreamProtocolError(ValueError):
    """A ``downstream-protocols`` or ``refit-init`` name that is not registered."""


class FrozenRowsChangedError(RuntimeError):
    """Entity rows changed under a protocol that freezes them."""


@dataclass(frozen=True)
class DownstreamBudget:
    """The stopping rule of every trained protocol.

    :param max_epochs: at most this many epochs (``refit-epochs``).
    :param patience: stop after this many checks (one per epoch) without a better valid score.
    """

    max_epochs: int = 20
    patience: int = 2


@dataclass(frozen=True)
class DownstreamProtocol:
    """One registered protocol.

    :param name: registry key.
    :param trains: whether anything is trained (``as-trained`` trains nothing).
    :param frozen_rows: whether the entity rows must stay bit-identical.
    :param adapter: whether a linear map on the entity rows is learned.
    :param needs_trained_relations: skipped (not approximated) without trained relations.
    """

    name: str
    trains: bool
    frozen_rows: bool
    adapter: bool = False
    needs_trained_relations: bool = False


DOWNSTREAM_PROTOCOLS: Mapping[str, DownstreamProtocol] = {
    "as-trained": DownstreamProtocol("as-trained", trains=False, frozen_rows=True, needs_trained_relations=True),
    "relation-refit": DownstreamProtocol("relation-refit", trains=True, frozen_rows=True),
    "adapter": DownstreamProtocol("adapter", trains=True, frozen_rows=True, adapter=True),
    "finetune": DownstreamProtocol("finetune", trains=True, frozen_rows=False),
}


def protocol_labels(names: Sequence[str], refit_inits: Sequence[str] = ("trained",)) -> list[str]:
    """The table's protocol labels: ``relation-refit`` expands to one label per ``refit-init``.

    :raises UnknownDownstreamProtocolError: naming an unknown protocol or init, with the choices
        (:func:`client.kge.refinement_config.check_protocol_names`).
    """
    check_protocol_names(names, refit_inits, UnknownDownstreamProtocolError)
    labels: list[str] = []
    for name in names:
        labels += [f"relation-refit:{init}" for init in refit_inits] if name == "relation-refit" else [name]
    return list(dict.fromkeys(labels))


def _parse_label(label: str) -> tuple[DownstreamProtocol, str]:
    name, _, init = label.partition(":")
    if name not in DOWNSTREAM_PROTOCOLS:
        raise UnknownDownstreamProtocolError(f"unknown downstream protocol {label!r}")
    return DOWNSTREAM_PROTOCOLS[name], init or "trained"


# ----------------------------------------------------------------------------- trained relations, frozen rows
def as_trained_trainer(
    graph: TrainableGraph,
    config: KGEConfig,
    relation_state: Mapping[str, np.ndarray],
    device: torch.device | str | None = None,
) -> LocalTrainer:
    """A trainer holding the client's trained relation tensors (entity rows still to be set).

    :param relation_state: the model's non-entity tensors by state-dict name (as in the client's
        ``relation_embeddings.npz``), or a full private state of
        :meth:`LocalTrainer.get_private_state` (``model/...`` keys; optimizer moments are ignored).
    :raises client.kge.training.PrivateStateError: when the tensors do not fit the model.
    """
    trainer = LocalTrainer(graph, config, device=device)
    state = dict(relation_state)
    if not any(key.startswith("model/") for key in state):
        state = {f"model/{key}": value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.startswith(("model/", "meta/"))}
    state.setdefault("meta/epochs_done", np.asarray([0], dtype=np.int64))
    trainer.set_private_state(state)
    return trainer


def relations_fit(graph: TrainableGraph, config: KGEConfig, relation_state: Mapping[str, np.ndarray] | None) -> bool:
    """Whether ``relation_state`` fits the client's model (not, e.g., the collection's pooled ids)."""
    if relation_state is None:
        return False
    try:
        as_trained_trainer(graph, config, relation_state, "cpu")
    except PrivateStateError:
        return False
    return True


def _freeze_entities(trainer: LocalTrainer) -> None:
    """Exclude the entity table from gradients, the optimizer and the per-step constrainer."""
    embedding = entity_embedding(trainer.model)
    embedding._embeddings.weight.requires_grad_(False)
    embedding.constrainer = None


# ----------------------------------------------------------------------------- adapter
class _AdaptedRows(nn.Module):
    """Entity lookup ``rows[i] @ W``: frozen rows, a learned ``d x d`` map from the identity.

    It stands in for the ``nn.Embedding`` inside PyKEEN's entity representation, so PyKEEN's
    loops, our shared-negatives regime and the evaluator's candidate scoring (all of which look
    entities up through the representation) score adapted rows without knowing it. PyKEEN has no
    "frozen table + linear map" representation that keeps one entity Embedding, which the rest
    of this package relies on; hence this small module.
    """

    def __init__(self, rows: nn.Parameter) -> None:
        super().__init__()
        self.rows = rows  # the frozen table (same Parameter object the trainer tracks)
        self.map = nn.Parameter(torch.eye(rows.shape[1], dtype=rows.dtype, device=rows.device))
        # the whole adapted table of the last no-grad lookup of every entity, and the versions of
        # rows and map it was computed from (an optimizer step or a restored state bumps them)
        self._table: tuple[tuple[int, int], torch.Tensor] | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The adapted table (PyKEEN reads ``.weight`` when all entities are requested)."""
        return self.rows @ self.map

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        # the cache below trusts the tensors' version counters: change rows or map in place through
        # torch ops (an optimizer step, load_state_dict, copy_), never through ``.data``
        if torch.is_grad_enabled():
            self._table = None  # training: the map is about to change
        elif self._all_entities(indices):
            # ranking asks for every entity once per batch: the same product each time until the
            # map changes, so it is computed once (the same op on the same operands: the same bits)
            versions = (self.rows._version, self.map._version)
            if self._table is None or self._table[0] != versions:
                self._table = (versions, self.rows[indices] @ self.map)
            return self._table[1]
        return self.rows[indices] @ self.map

    def _all_entities(self, indices: torch.Tensor) -> bool:
        count = self.rows.shape[0]
        if indices.ndim != 1 or indices.shape[0] != count:
            return False
        return bool(torch.equal(indices, torch.arange(count, device=indices.device, dtype=indices.dtype)))


def _attach_adapter(trainer: LocalTrainer) -> None:
    embedding = entity_embedding(trainer.model)
    embedding._embeddings = _AdaptedRows(embedding._embeddings.weight)


# ----------------------------------------------------------------------------- one run
@dataclass
class ProtocolRun:
    """One protocol applied to one set of rows: its valid score and the model to test.

    :param label: the protocol label (``relation-refit:trained``, ...).
    :param valid: the best valid score (MRR under the run's ``eval-protocol``).
    :param curve: the valid score of every check (epoch 0 = before training).
    :param best_epoch: the epoch whose state is kept.
    :param epochs: epochs trained in all.
    :param seconds: wall time (training and valid checks).
    :param init: where the relations started (``trained`` / ``fresh``).
    :param trainer: the model in its best state (dropped once tested).
    """

    label: str
    valid: float
    curve: list[float] = field(default_factory=list)
    best_epoch: int = 0
    epochs: int = 0
    seconds: float = 0.0
    init: str = "trained"
    trainer: LocalTrainer | None = None

    def test(
        self, protocols: Sequence[str] = EVAL_PROTOCOLS
    ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
        """Rank the test split: ``({protocol: metrics}, {protocol: per-triple reciprocal ranks})``."""
        if self.trainer is None:
            raise RuntimeError(f"{self.label}: this run was already tested (its model is released)")
        ranks: dict[str, np.ndarray] = {}
        trainer = self.trainer
        metrics = evaluate_client_protocols(
            trainer.model,
            trainer.graph,
            split="test",
            protocols=protocols,  # type: ignore[arg-type]
            batch_size=trainer.config.eval_batch_size,
            device=trainer.device,
            reciprocal_ranks=ranks,
        )
        self.trainer = None
        return metrics, ranks

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (no model)."""
        return {
            "valid": self.valid,
            "curve": [round(v, 6) for v in self.curve],
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "init": self.init,
        }


def run_protocol(
    label: str,
    graph: TrainableGraph,
    config: KGEConfig,
    rows: np.ndarray,
    *,
    relation_state: Mapping[str, np.ndarray] | None,
    budget: DownstreamBudget,
    device: torch.device | str | None = None,
    start_valid: float | None = None,
) -> ProtocolRun:
    """Apply the protocol ``label`` to ``rows`` and score it on the valid split.

    :param label: a label of :func:`protocol_labels`.
    :param graph: the client's graph (local ids).
    :param config: the run's KGE config; its ``seed`` seeds relation init and sampling, its
        ``eval_protocol`` is the valid score.
    :param rows: ``(graph.num_entities, entity_dim)`` rows in local-id order.
    :param relation_state: the client's trained relation tensors (``None``: none fit).
    :param budget: the stopping rule of the trained protocols.
    :param start_valid: the valid score of the starting state when the caller already has it
        (every protocol that starts from the trained relations starts from the same model as
        ``as-trained``: the adapter's identity map reproduces the rows exactly), so the epoch-0
        check is not recomputed; ``None`` computes it.
    :raises UnknownDownstreamProtocolError: for an unknown label, or one that needs trained relations without them.
    :raises FrozenRowsChangedError: when a protocol that freezes the rows moved them.
    """
    protocol, init = _parse_label(label)
    if relation_state is None:
        if protocol.needs_trained_relations or label == "relation-refit:trained":
            raise UnknownDownstreamProtocolError(
                f"client {graph.client_id}: {label} needs the client's trained relations"
            )
        init = "fresh"
    started = time.perf_counter()
    if init == "trained":
        trainer = as_trained_trainer(graph, config, relation_state, device)  # type: ignore[arg-type]
    else:
        trainer = LocalTrainer(graph, config, device=device)
    trainer.set_entity_embeddings(rows)
    if protocol.frozen_rows:
        _freeze_entities(trainer)
    if protocol.adapter:
        _attach_adapter(trainer)
    before = trainer.get_entity_embeddings() if protocol.frozen_rows else None
    try:
        curve, best_epoch = _train_with_patience(
            trainer, budget if protocol.trains else DownstreamBudget(0, 1), start_valid if init == "trained" else None
        )
    except ValueError as error:  # a NaN valid score: say where
        raise ValueError(f"client {graph.client_id}, downstream protocol {label}: {error}") from error
    after = trainer.get_entity_embeddings() if before is not None else None
    if before is not None and not np.array_equal(before, after):
        moved = int(np.flatnonzero((before != after).any(axis=1))[0])
        raise FrozenRowsChangedError(f"client {graph.client_id}: entity row {moved} changed under {label}")
    return ProtocolRun(
        label, max(curve), curve, best_epoch, len(curve) - 1, time.perf_counter() - started, init, trainer
    )


def _valid_score(trainer: LocalTrainer) -> float:
    value = float(trainer.evaluate("valid", trainer.config.eval_protocol)["mrr"])
    return value if math.isfinite(value) else float("nan")


def _train_with_patience(
    trainer: LocalTrainer, budget: DownstreamBudget, start_valid: float | None = None
) -> tuple[list[float], int]:
    """Train one epoch at a time, check valid after each, keep the best state (epoch 0 included).

    The stopping rule is :class:`~client.kge.early_stopping.EarlyStopping`'s, the one the KGE
    phase uses too; a NaN valid score raises there.
    """
    stopper = EarlyStopping(patience=max(1, budget.patience))
    curve = [_valid_score(trainer) if start_valid is None else float(start_valid)]
    stopper.update(0, curve[0])
    best = _snapshot(trainer)
    for epoch in range(1, budget.max_epochs + 1):
        trainer.train(1)
        curve.append(_valid_score(trainer))
        if stopper.update(epoch, curve[-1]):
            best = _snapshot(trainer)
        if stopper.should_stop:
            break
    if stopper.best_round != len(curve) - 1:
        trainer.model.load_state_dict(best)
    return curve, int(stopper.best_round or 0)


def _snapshot(trainer: LocalTrainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}


#: A caller's progress callback: one line per finished (client, protocol, row).
LogFn = Callable[[str], None]
