"""The reference settings of federated KGE papers, run without Flower.

``isolation``
    Each client trains alone on its own triples (FedE without aggregation).
``collection``
    All clients' train triples pooled over global entity ids (relations made unique per client)
    and trained centrally; still validated and tested per client, by scoring each client's
    valid/test triples with the central rows of that client's entities and relations.

:func:`run_fede_in_process` runs FedE itself in one process (a reference for the Flower apps).

All use the federated budget: one "round" is ``config.local_epochs`` epochs over the triples,
validation every ``config.eval_every`` rounds (overall MRR weighted by each client's valid
size), early stopping after ``config.patience`` checks without improvement, and the final test
with the best round's weights. Start rows are the server's initial table
(:func:`client.kge.models.initial_entity_table`), as in FedE, so the settings differ only in
what is shared.

``config.stopping`` picks the stopping rule (``docs/concepts/stopping.md``): ``overall`` (the
default) as above; ``per-party`` gives each party (client) its own tracker over its own valid MRR
(:class:`~client.kge.early_stopping.PartyStopping`): every party keeps training and sharing until
every party has stopped (or the round budget ends), and each party tests, and writes, the state
of its own best round (its entity rows as evaluated then and its relation rows); the overall test
is the usual weighted combination of those. Collection trains one pooled model, one party: there
``per-party`` is the overall rule.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from pykeen.models import Model

from client.kge.aggregation import aggregate_rows
from client.kge.collection import CollectionAdapter, pool_clients, require_global_ids
from client.kge.config import KGEConfig
from client.kge.early_stopping import EarlyStopping, PartyStopping
from client.kge.evaluation import weighted_overall
from client.kge.local_dp import LocalDpSpec, PartyAccountant, json_epsilon, release_rows
from client.kge.models import (
    entity_embedding,
    initial_entity_table,
)
from client.kge.round_engine import RoundEngine
from client.kge.run_folder import atomic_write_bytes, save_npy_atomic, write_labels_tsv
from client.kge.training import OPTIMIZER_PREFIX, LocalTrainer, resolve_device
from kg_datasets.triples import labels_in_id_order

if TYPE_CHECKING:  # pragma: no cover
    from kg_datasets import ClientGraph, FederatedKG

__all__ = [
    "RoundCheckpoint",
    "run_collection",
    "run_fede_in_process",
    "run_isolation",
    "untrained_metrics",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: ``on_round(info)``: called after every round of an in-process run (after its checkpoint) with
#: ``{"round", "valid_mrr" (the overall valid MRR, ``None`` in a round without validation),
#: "train_seconds" (training and sharing so far), "stop" (early stopping ends the run with this
#: round)}``; an exception it raises ends the run and propagates (e.g. ``optuna.TrialPruned``).
RoundCallback = Callable[[Mapping[str, Any]], None]

#: ``result["stopping"]["ended_by"]``: the stopping rule ended the run (by ``stopping`` value) ...
ENDED_BY_RULE = {"overall": "overall valid MRR stopped", "per-party": "every party stopped"}
#: ... or the round budget did (the rule had not stopped it by the last round).
ENDED_BY_BUDGET = "round budget"


@dataclass(frozen=True)
class PartyState:
    """Per-party stopping's access to each party's own state (see :func:`_run_rounds`).

    :param snapshot: ``index -> arrays`` of party ``index`` as it was evaluated (copies; its
        private state with its entity rows, without optimizer moments).
    :param restore: ``(index, arrays)``: load such arrays back into party ``index``.
    """

    snapshot: Callable[[int], dict[str, np.ndarray]]
    restore: Callable[[int, Mapping[str, np.ndarray]], None]


@dataclass(frozen=True)
class ExtraState:
    """A runner's state besides its arrays that a checkpoint keeps and a resume loads back (JSON).

    :param save: ``() -> state``: called after every round, into the checkpoint's state.
    :param load: ``(state or None) -> None``: called once on resume with what ``save`` returned
        (``None``: the checkpoint holds none); it raises where it cannot go on without it.
    """

    save: Callable[[], dict[str, Any]]
    load: Callable[[Mapping[str, Any] | None], None]


def _trainer_parties(trainers: Sequence[LocalTrainer]) -> PartyState:
    """:class:`PartyState` of parties that each hold a trainer with their own entity rows loaded
    (isolation; FedE once the aggregated rows were sent back): the trainer's private state with
    its rows."""

    def snapshot(index: int) -> dict[str, np.ndarray]:
        return _without_optimizer(trainers[index].get_private_state(include_entities=True))

    def restore(index: int, arrays: Mapping[str, np.ndarray]) -> None:
        trainers[index].set_private_state(arrays)

    return PartyState(snapshot, restore)


def _without_optimizer(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` less optimizer moments: a best round's state is only restored for the test and
    the outputs, never trained on, so Adam's two moments per parameter would only fill memory and
    the checkpoint (most of the best state; with Adam, a third of the whole checkpoint)."""
    return {name: value for name, value in arrays.items() if f"/{OPTIMIZER_PREFIX}" not in f"/{name}"}


class RoundCheckpoint(Protocol):
    """Where an in-process run keeps the state after each finished round, to resume from it.

    ``scripts/run_experiments.py`` backs it with :mod:`server.checkpoint` (manifest + npz,
    written atomically, checked against the run config and the entity vocabulary); this module
    only says what goes in: ``arrays`` (the runner's current state under ``now/``, the best
    round's under ``best/``) and a JSON ``state`` (early stopping, history, seconds).
    """

    def load(self) -> tuple[int, Mapping[str, np.ndarray], Mapping[str, Any]] | None:
        """``(last finished round, arrays, state)`` of an earlier run, or ``None`` to start afresh."""

    def save(self, round_number: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        """Keep the state after ``round_number`` (replacing the previous one)."""


def _flat_states(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-client private states as one flat ``client/<index>/<key>`` mapping (a snapshot)."""
    return {f"client/{index}/{key}": value for index, state in enumerate(states) for key, value in state.items()}


def _client_states(arrays: Mapping[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`_flat_states` for ``count`` clients.

    :raises ValueError: the arrays hold another number of clients (a state of another partition).
    """
    by_index = _party_states(arrays)
    if sorted(by_index) != list(range(count)):
        raise ValueError(f"the saved state holds {len(by_index)} clients' states, this run has {count} clients")
    return [by_index[index] for index in range(count)]


def _party_states(arrays: Mapping[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Client index -> its states in ``client/<index>/<key>`` arrays (those present: a per-party best
    snapshot lacks a party that never improved)."""
    by_index: dict[int, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if name.startswith("client/"):
            index, key = name[len("client/") :].split("/", 1)
            by_index.setdefault(int(index), {})[key] = value
    return by_index


def _with_prefix(arrays: Mapping[str, np.ndarray] | None, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + name: value for name, value in (arrays or {}).items()}


def _under_prefix(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}


# --- outputs ---------------------------------------------------------------------------------------


def _write_client_outputs(out_dir: Path, client: ClientGraph, model: Model, with_entities: bool) -> None:
    """``clients/<k>/``: ``relation_embeddings.npz`` (model tensors besides the entity rows, by
    state-dict name), ``relations.tsv``, and with ``with_entities`` ``entity_embeddings.npy`` (local
    order) plus ``entities.tsv``; the same files a Flower party writes into its own folder."""
    folder = out_dir / "clients" / str(client.client_id)
    entity_weight = entity_embedding(model)._embeddings.weight
    arrays = {
        name: tensor.detach().cpu().numpy()
        for name, tensor in model.state_dict(keep_vars=True).items()
        if tensor is not entity_weight
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(folder / "relation_embeddings.npz", buffer.getvalue())
    write_labels_tsv(folder / "relations.tsv", client.relation_labels)
    if with_entities:
        save_npy_atomic(folder / "entity_embeddings.npy", entity_weight.detach().cpu().numpy())
        write_labels_tsv(folder / "entities.tsv", client.entity_labels)


# --- the shared round schedule ---------------------------------------------------------------------


def _per_client_report(metrics: Sequence[Mapping[str, float]], client_ids: Sequence[int]) -> dict[str, Any]:
    return {
        "overall": weighted_overall(list(metrics)),
        "clients": {str(cid): dict(m) for cid, m in zip(client_ids, metrics)},
    }


def _run_rounds(
    *,
    setting: str,
    config: KGEConfig,
    rounds: int,
    client_ids: Sequence[int],
    train_round: Callable[[int], dict[str, list[float]]],
    evaluate: Callable[[str], list[dict[str, float]]],
    snapshot: Callable[[], dict[str, np.ndarray]],
    restore: Callable[[Mapping[str, np.ndarray]], None],
    progress: Progress | None,
    aggregate: Callable[[], None] | None = None,
    checkpoint: RoundCheckpoint | None = None,
    on_round: RoundCallback | None = None,
    parties: PartyState | None = None,
    extra_state: ExtraState | None = None,
) -> dict[str, Any]:
    """Train ``rounds`` rounds (:class:`~client.kge.round_engine.RoundEngine`) with validation,
    early stopping and a best-round test.

    :param train_round: one round of local training (given the round number); returns the losses
        per client.
    :param aggregate: FedE's step after training (``None``: nothing is shared).
    :param evaluate: ``split -> per-client metrics``.
    :param snapshot: / restore: the runner's whole state as named arrays (copies) / load it:
        keeps the best round's state for the test, and with ``checkpoint`` the state to resume.
    :param checkpoint: saved after every round; a run that finds one resumes after its round
        (the trainers seed each epoch from the epochs done, so a resumed run trains the same
        rounds as one that was never stopped).
    :param on_round: called after every round (:data:`RoundCallback`).
    :param parties: each client's own state (:class:`PartyState`), for ``config.stopping =
        "per-party"``: one tracker per client, and a best snapshot merged from each client's own
        best round (``client/<index>/...``: every client's arrays once, so no larger than the
        overall rule's). ``None``: one party (collection), whose rule is the overall one.
    :param extra_state: more of the runner's state that a checkpoint keeps (:class:`ExtraState`),
        but that the best round's snapshot must not roll back (e.g. the DP accountants).
    :returns: the run's record (JSON-able): ``rounds_trained``, ``best_round`` (per party: the
        latest of the clients' best rounds), ``best_valid_mrr`` (per party: the weighted overall of
        each client's best valid metrics, the valid counterpart of the test), ``stopping``
        (``{"rule", "ended_by", "parties"}``, :func:`_stopping_record`), ``history``, ``test``, ...
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_party = config.stopping == "per-party" and parties is not None
    names = [str(cid) for cid in client_ids]
    stopper: EarlyStopping | PartyStopping = (
        PartyStopping(config.patience, names) if per_party else EarlyStopping(config.patience)
    )
    engine = RoundEngine(num_rounds=rounds, eval_every=config.eval_every, stopper=stopper)
    steps = _InProcessSteps(
        setting,
        engine,
        client_ids,
        train_round,
        aggregate,
        evaluate,
        snapshot,
        progress or logger.info,
        checkpoint,
        on_round=on_round,
        parties=parties if per_party else None,
        extra_state=extra_state,
    )
    first_round, resumed_after = 1, None
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        done, arrays, state = saved
        restore(_under_prefix(arrays, "now/"))
        steps.best_snapshot = _under_prefix(arrays, "best/") or None
        if per_party:
            engine.stopper = PartyStopping.from_state(config.patience, names, state["stopper"])
            steps.best_valid = {name: dict(metrics) for name, metrics in state["best_valid"].items()}
        else:
            engine.stopper = EarlyStopping.from_state(config.patience, state["stopper"])
        engine.stopped_early = bool(state["stopped_early"])
        steps.history = list(state["history"])
        steps.train_seconds = float(state["train_seconds"])
        if extra_state is not None:
            extra_state.load(state.get("extra"))
        first_round, resumed_after = int(done) + 1, int(done)
        steps.say(f"[{setting}] resumed after round {done} ({steps.best_text()})")
    last_round = engine.run(steps, first_round=first_round)
    stopper = engine.stopper
    if steps.best_snapshot is not None and per_party:
        for index, arrays in sorted(_party_states(steps.best_snapshot).items()):
            parties.restore(index, arrays)  # type: ignore[union-attr]  # per_party: not None
    elif steps.best_snapshot is not None:
        restore(steps.best_snapshot)
    test = _per_client_report(evaluate("test"), client_ids)
    if per_party:
        best_valid = [steps.best_valid[name] for name in names if name in steps.best_valid]
        best_valid_mrr = weighted_overall(best_valid)["mrr"] if len(best_valid) == len(names) else -math.inf
        rounds_used = ", ".join(f"{name}: {party['best_round']}" for name, party in stopper.summary().items())
        steps.say(f"[{setting}] test MRR {test['overall']['mrr']:.4f} with each party's best round ({rounds_used})")
    else:
        best_valid_mrr = stopper.best_value
        steps.say(f"[{setting}] test MRR {test['overall']['mrr']:.4f} with round {stopper.best_round}'s weights")
    return {
        "setting": setting,
        "config": config.to_run_config(),
        "rounds_budget": rounds,
        "rounds_trained": last_round,
        "best_round": stopper.best_round,
        "best_valid_mrr": best_valid_mrr,
        "stopping": _stopping_record(config.stopping, engine, last_round, steps.best_valid),
        "train_seconds": steps.train_seconds,
        "history": steps.history,
        "resumed_after_round": resumed_after,
        "test": test,
    }


def _stopping_record(
    rule: str, engine: RoundEngine, last_round: int, best_valid: Mapping[str, Mapping[str, float]]
) -> dict[str, Any]:
    """``result["stopping"]``: ``rule`` (the ``stopping`` key), ``ended_by`` (:data:`ENDED_BY_RULE`
    or :data:`ENDED_BY_BUDGET`) and, for ``per-party``, ``parties``: per party ``best_round``,
    ``best_valid_mrr`` and ``stopped_round`` (``None``: still improving when the budget ended) and
    ``best_valid`` (its valid metrics at its best round). Collection's one party is ``pooled``."""
    stopper = engine.stopper
    record: dict[str, Any] = {
        "rule": rule,
        "ended_by": ENDED_BY_RULE[rule] if engine.stopped_early else ENDED_BY_BUDGET,
        "parties": None,
    }
    if isinstance(stopper, PartyStopping):
        record["parties"] = {
            name: {**party, "best_valid": dict(best_valid.get(name, {}))} for name, party in stopper.summary().items()
        }
    elif rule == "per-party" and isinstance(stopper, EarlyStopping):  # collection: one pooled party
        record["parties"] = {
            "pooled": {
                "best_round": stopper.best_round,
                "best_valid_mrr": stopper.best_value if stopper.best_round is not None else None,
                "stopped_round": last_round if engine.stopped_early else None,
            }
        }
    return record


@dataclass
class _InProcessSteps:
    """The :class:`~client.kge.round_engine.RoundSteps` of the in-process runners: every party in
    this process, one history entry and one progress line per round, and a checkpoint after it."""

    setting: str
    engine: RoundEngine
    client_ids: Sequence[int]
    train_round: Callable[[int], dict[str, list[float]]]
    share: Callable[[], None] | None
    evaluate: Callable[[str], list[dict[str, float]]]
    snapshot: Callable[[], dict[str, np.ndarray]]
    say: Progress
    checkpoint: RoundCheckpoint | None = None
    on_round: RoundCallback | None = None
    #: per-party stopping (``None``: the overall rule): each party's own state
    parties: PartyState | None = None
    #: the best round's state (per party: each party's own arrays from its own best round)
    best_snapshot: dict[str, np.ndarray] | None = None
    #: per party: its valid metrics at its best round
    best_valid: dict[str, dict[str, float]] = field(default_factory=dict)
    #: more state for the checkpoint (:class:`ExtraState`)
    extra_state: ExtraState | None = None
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    _started: float = 0.0
    _entry: dict[str, Any] = field(default_factory=dict)

    def train(self, round_number: int) -> None:
        self._started = time.perf_counter()
        self._entry = {"round": round_number, "losses": self.train_round(round_number)}

    def aggregate(self, round_number: int, updates: None) -> None:
        if self.share is not None:
            self.share()
        self.train_seconds += time.perf_counter() - self._started

    def validate(self, round_number: int) -> float | dict[str, float]:
        valid = self._entry["valid"] = _per_client_report(self.evaluate("valid"), self.client_ids)
        if self.parties is not None:
            return {name: float(metrics["mrr"]) for name, metrics in valid["clients"].items()}
        return valid["overall"]["mrr"]

    def keep_best(self, round_number: int) -> None:
        if self.parties is None:
            self.best_snapshot = _without_optimizer(self.snapshot())
            return
        # per party: replace only the improved parties' own arrays (``client/<index>/...``)
        best = self.best_snapshot if self.best_snapshot is not None else {}
        stopper = self.engine.stopper
        assert isinstance(stopper, PartyStopping)
        for name in stopper.improved:
            index = [str(cid) for cid in self.client_ids].index(name)
            best.update(_with_prefix(self.parties.snapshot(index), f"client/{index}/"))
            self.best_valid[name] = dict(self._entry["valid"]["clients"][name])
        self.best_snapshot = best

    def best_text(self) -> str:
        """The best value(s) so far, for a progress line."""
        stopper = self.engine.stopper
        if isinstance(stopper, PartyStopping):
            parts = []
            for name, party in stopper.summary().items():
                value = party["best_valid_mrr"]
                text = f"{name}: best {value:.4f} at round {party['best_round']}" if value is not None else f"{name}: -"
                parts.append(text + (f", stopped at {party['stopped_round']}" if party["stopped_round"] else ""))
            return "; ".join(parts)
        assert stopper is not None
        return f"best {stopper.best_value:.4f} at round {stopper.best_round}"

    def end_round(self, round_number: int, validated: bool, stop: bool) -> bool:
        rounds, stopper = self.engine.num_rounds, self.engine.stopper
        assert stopper is not None
        if validated:
            if isinstance(stopper, PartyStopping):
                self._entry["parties"] = stopper.summary()
            self.say(
                f"[{self.setting}] round {round_number}/{rounds}: valid MRR {self._entry['valid']['overall']['mrr']:.4f} "
                f"({self.best_text()})"
            )
        else:
            losses = self._entry["losses"]
            self.say(
                f"[{self.setting}] round {round_number}/{rounds}: mean loss "
                f"{np.mean([values[-1] for values in losses.values() if values]):.4f}"
            )
        self._entry["seconds"] = round(time.perf_counter() - self._started, 3)  # training + validation
        self.history.append(self._entry)
        if stop:
            every = "every party stopped" if isinstance(stopper, PartyStopping) else "early stop"
            self.say(f"[{self.setting}] {every} after round {round_number}")
        if self.checkpoint is not None:
            self.checkpoint.save(
                round_number,
                {**_with_prefix(self.snapshot(), "now/"), **_with_prefix(self.best_snapshot, "best/")},
                {
                    "stopper": stopper.state(),
                    "stopped_early": stop,
                    "history": self.history,
                    "train_seconds": self.train_seconds,
                    "best_valid": self.best_valid,
                    **({"extra": self.extra_state.save()} if self.extra_state is not None else {}),
                },
            )
        if self.on_round is not None:
            valid = self._entry.get("valid")
            self.on_round(
                {
                    "round": round_number,
                    "valid_mrr": valid["overall"]["mrr"] if valid is not None else None,
                    "train_seconds": self.train_seconds,
                    "stop": stop,
                }
            )
        return False


def run_isolation(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    checkpoint: RoundCheckpoint | None = None,
) -> dict[str, Any]:
    """Each client trains alone for ``num_rounds`` rounds of ``config.local_epochs`` epochs.

    :param kg: the federated graph (clients with global ids).
    :param config: the KGE config.
    :param num_rounds: the round budget (as FedE's ``num-server-rounds``).
    :param device: where to train; CUDA when present.
    :param progress: called with one line per round (default: ``logging``).
    :param out_dir: if given, the best round's embeddings are written there (atomically):
        ``clients/<k>/{entity_embeddings.npy, entities.tsv, relation_embeddings.npz, relations.tsv}``.
    :param checkpoint: saves the state after every round and resumes from it
        (:class:`RoundCheckpoint`); ``None``: nothing is kept between processes. (Not with
        :func:`run_fede_in_process`'s ``update_hook``, whose own state a checkpoint cannot hold.)
    :returns: ``{"setting", "config", "rounds_trained", "best_round", "best_valid_mrr", "stopping",
        "history", "test": {"overall", "clients": {id: metrics}}, ...}`` (JSON-able; see
        :func:`_run_rounds` for what the keys mean under ``config.stopping = "per-party"``).
    """
    require_global_ids(kg)
    device = resolve_device(device)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    trainers = [LocalTrainer(client, config, device) for client in kg.clients]
    for trainer, client in zip(trainers, kg.clients):
        trainer.set_entity_embeddings(table[client.entity_ids])

    def train_round(round_number: int) -> dict[str, list[float]]:
        return {str(c.client_id): t.train(config.local_epochs) for t, c in zip(trainers, kg.clients)}

    def snapshot() -> dict[str, np.ndarray]:
        return _flat_states([t.get_private_state(include_entities=True) for t in trainers])

    def restore(arrays: Mapping[str, np.ndarray]) -> None:
        for trainer, state in zip(trainers, _client_states(arrays, len(trainers))):
            trainer.set_private_state(state)

    result = _run_rounds(
        setting="isolation",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=train_round,
        evaluate=lambda split: [t.evaluate(split) for t in trainers],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
        parties=_trainer_parties(trainers),
    )
    if out_dir is not None:
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=True)
    return result


#: ``hook(client index, round, rows sent, rows trained) -> rows returned``: what a client returns
#: instead of its trained rows (e.g. a poisoning party in :mod:`scripts.bench_poisoning`).
UpdateHook = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]

#: ``observer(round, client index, global ids, rows sent, rows returned, model)``: sees each upload
#: as the server receives it (after any ``update_hook``), in client order, with the party's own
#: PyKEEN model (read it, never change it: e.g. a colluding party's relation rows in
#: ``scripts/attack_reconstruction.py``).
UploadObserver = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray, Model], None]


def run_fede_in_process(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    aggregation: str = "mean",
    aggregation_trim: float = 0.25,
    update_hook: UpdateHook | None = None,
    checkpoint: RoundCheckpoint | None = None,
    on_round: RoundCallback | None = None,
    on_upload: UploadObserver | None = None,
    dp: LocalDpSpec | None = None,
) -> dict[str, Any]:
    """FedE without Flower: a reference for the Flower apps and a quick learning check.

    Every round each client loads the server's rows of its entities, trains
    ``config.local_epochs`` epochs and returns them; each global row becomes the mean over the
    clients holding it (:func:`client.kge.aggregation.aggregate_rows`). All clients take part
    every round; relation embeddings and optimizer state stay in each client's trainer. The
    test uses the best round's table and client states.

    Parameters and result as :func:`run_isolation`; with ``out_dir`` also the global
    ``entity_embeddings.npy`` / ``entities.tsv`` (the best round's table), except with
    ``config.stopping = "per-party"``: then each client's own best-round rows go to
    ``clients/<k>/entity_embeddings.npy`` + ``entities.tsv`` instead (as under isolation).
    ``aggregation`` / ``aggregation_trim``: the per-row rule
    (:func:`client.kge.aggregation.aggregate_rows`); ``update_hook``: replaces a client's returned
    rows (:data:`UpdateHook`), the rest of its state is left as trained.
    ``on_round``: called after every round (:data:`RoundCallback`; e.g. a search's pruning).
    ``on_upload``: sees every upload before it is aggregated (:data:`UploadObserver`).
    ``dp``: ``dp = local`` (:mod:`client.kge.local_dp`; ``FederationSettings.local_dp()``): each
    client releases its returned rows (after any ``update_hook``) through the Gaussian mechanism,
    against the rows it was sent that round, before ``on_upload`` sees them and the server
    aggregates them; one accountant per client. The result then has ``"dp"``: the parameters
    (:meth:`~client.kge.local_dp.LocalDpSpec.as_dict`), ``"parties"`` (client id -> epsilon, delta,
    releases, noise multiplier for the whole run) and ``"rounds"`` (per round, per client: epsilon
    and releases so far, and, as an in-process analysis only, the update norm before clipping and
    whether it was clipped: a federation's party never sends these).
    """
    if update_hook is not None and checkpoint is not None:
        raise ValueError("run_fede_in_process: an update_hook's own state (e.g. its RNG) is not checkpointed")
    require_global_ids(kg)
    device = resolve_device(device)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    trainers = [LocalTrainer(client, config, device) for client in kg.clients]
    holders = [np.asarray(client.entity_ids, dtype=np.int64) for client in kg.clients]
    state: dict[str, Any] = {"table": table, "round": 0}
    names = [str(client.client_id) for client in kg.clients]
    accountants = [PartyAccountant(dp.delta) for _ in kg.clients] if dp is not None else []
    dp_rounds: list[dict[str, Any]] = []

    def send_rows() -> None:
        for trainer, ids in zip(trainers, holders):
            trainer.set_entity_embeddings(state["table"][ids])

    def returned(index: int, ids: np.ndarray, trainer: LocalTrainer) -> np.ndarray:
        rows = trainer.get_entity_embeddings()
        if update_hook is not None:
            rows = np.asarray(update_hook(index, state["round"], state["table"][ids], rows), dtype=np.float32)
        if dp is None:
            return rows
        release = release_rows(rows, state["table"][ids], dp.clip, dp.noise_multiplier)
        accountants[index].record_release(dp.noise_multiplier)
        dp_rounds[-1]["parties"][names[index]] = {
            "epsilon": json_epsilon(accountants[index].epsilon),  # null, not Infinity (z = 0)
            "releases": accountants[index].releases,
            "update_norm": release.norm,
            "clipped": release.clipped,
        }
        return release.rows.astype(state["table"].dtype)

    def train_round(round_number: int) -> dict[str, list[float]]:
        state["round"] = round_number
        send_rows()
        return {str(c.client_id): t.train(config.local_epochs) for t, c in zip(trainers, kg.clients)}

    def aggregate() -> None:
        if dp is not None:
            dp_rounds.append({"round": state["round"], "parties": {}})
        updates = [(ids, returned(k, ids, t)) for k, (t, ids) in enumerate(zip(trainers, holders))]
        if on_upload is not None:
            for k, ((ids, rows), trainer) in enumerate(zip(updates, trainers)):
                on_upload(state["round"], k, ids, state["table"][ids], rows, trainer.model)
        state["table"] = aggregate_rows(state["table"], updates, aggregation, aggregation_trim)
        send_rows()  # evaluation scores the aggregated rows, as the federation's clients would

    def snapshot() -> dict[str, np.ndarray]:
        return {"table": state["table"].copy(), **_flat_states([t.get_private_state() for t in trainers])}

    def restore(arrays: Mapping[str, np.ndarray]) -> None:
        if arrays["table"].shape != state["table"].shape:
            raise ValueError(f"saved entity table has shape {arrays['table'].shape}, expected {state['table'].shape}")
        state["table"] = np.array(arrays["table"], dtype=state["table"].dtype)
        for trainer, private in zip(trainers, _client_states(arrays, len(trainers))):
            trainer.set_private_state(private)
        send_rows()

    def load_dp(saved: Mapping[str, Any] | None) -> None:
        if saved is None or "dp" not in saved:
            raise ValueError("run_fede_in_process: dp is set, but the checkpoint holds no DP accountant state")
        for accountant, accountant_state in zip(accountants, saved["dp"]["accountants"], strict=True):
            accountant.load_state_dict(accountant_state)
        dp_rounds[:] = saved["dp"]["rounds"]

    result = _run_rounds(
        setting="fede",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=train_round,
        aggregate=aggregate,
        evaluate=lambda split: [t.evaluate(split) for t in trainers],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
        on_round=on_round,
        parties=_trainer_parties(trainers),
        extra_state=ExtraState(
            save=lambda: {"dp": {"accountants": [a.state_dict() for a in accountants], "rounds": dp_rounds}},
            load=load_dp,
        )
        if dp is not None
        else None,
    )
    if dp is not None:
        result["dp"] = {
            **dp.as_dict(),
            "parties": {name: accountant.spent() for name, accountant in zip(names, accountants)},
            "rounds": dp_rounds,
        }
        (progress or logger.info)(
            f"[fede] dp = local (z {dp.noise_multiplier:.4g}, C {dp.clip:g}): epsilon at delta {dp.delta:g} "
            + ", ".join(f"{name}: {a.epsilon:.4g} after {a.releases} releases" for name, a in zip(names, accountants))
        )
    if out_dir is not None and config.stopping == "per-party":
        # each party's rows are its own best round's: no one table holds them all
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=True)
    elif out_dir is not None:
        save_npy_atomic(Path(out_dir) / "entity_embeddings.npy", state["table"])
        write_labels_tsv(Path(out_dir) / "entities.tsv", labels_in_id_order(kg.entity_to_id))
        for trainer, client in zip(trainers, kg.clients):
            _write_client_outputs(Path(out_dir), client, trainer.model, with_entities=False)
    return result


def run_collection(
    kg: FederatedKG,
    config: KGEConfig,
    num_rounds: int,
    *,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    checkpoint: RoundCheckpoint | None = None,
) -> dict[str, Any]:
    """Train one model on all clients' pooled triples; validate and test per client.

    Parameters and result as :func:`run_isolation`; one round is ``config.local_epochs`` epochs
    over the pooled triples (every triple is seen as often as under FedE's budget). With
    ``out_dir``, writes ``entity_embeddings.npy`` (row = global id) and ``entities.tsv``, and per
    client ``clients/<k>/{relation_embeddings.npz, relations.tsv}`` (the central relation rows of
    that client, in its local order).
    """
    device = resolve_device(device)
    pooled = pool_clients(kg)
    trainer = LocalTrainer(pooled, config, device)
    trainer.set_entity_embeddings(initial_entity_table(config, kg.num_entities, seed=config.seed))
    adapters = [
        CollectionAdapter(client, offset, config, device) for client, offset in zip(kg.clients, pooled.relation_offsets)
    ]

    def snapshot() -> dict[str, np.ndarray]:
        return trainer.get_private_state(include_entities=True)

    def restore(state: Mapping[str, np.ndarray]) -> None:
        trainer.set_private_state(state)

    result = _run_rounds(
        setting="collection",
        config=config,
        rounds=num_rounds,
        client_ids=[c.client_id for c in kg.clients],
        train_round=lambda round_number: {"pooled": trainer.train(config.local_epochs)},
        evaluate=lambda split: [a.evaluate(trainer.model, split, config) for a in adapters],
        snapshot=snapshot,
        restore=restore,
        progress=progress,
        checkpoint=checkpoint,
    )
    if out_dir is not None:
        save_npy_atomic(Path(out_dir) / "entity_embeddings.npy", trainer.get_entity_embeddings())
        write_labels_tsv(Path(out_dir) / "entities.tsv", labels_in_id_order(kg.entity_to_id))
        for adapter, client in zip(adapters, kg.clients):
            _write_client_outputs(Path(out_dir), client, adapter.load_from(trainer.model), with_entities=False)
    return result


def untrained_metrics(kg: FederatedKG, config: KGEConfig, split: str = "test") -> dict[str, Any]:
    """Per-client metrics of the untrained model (the server's initial rows): the floor to beat."""
    require_global_ids(kg)
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    metrics = []
    for client in kg.clients:
        trainer = LocalTrainer(client, config)
        trainer.set_entity_embeddings(table[client.entity_ids])
        metrics.append(trainer.evaluate(split))
    return _per_client_report(metrics, [c.client_id for c in kg.clients])
