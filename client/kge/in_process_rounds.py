"""The round loop of the in-process runners (:mod:`client.kge.centralized`): state, checkpoints and stopping.

:func:`run_rounds` drives :class:`~client.kge.round_engine.RoundEngine` with every party in this
process: it trains, shares and validates each round, keeps the best round's state (per party under
``stopping = per-party``: :class:`PartyState`), saves a :class:`RoundCheckpoint` after every round and
resumes from one, and records how the run stopped (:data:`ENDED_BY_RULE`, :data:`ENDED_BY_BUDGET`).
The runners (isolation, FedE, collection) differ only in the steps they give it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from client.kge.config import KGEConfig
from client.kge.early_stopping import EarlyStopping, PartyStopping
from client.kge.evaluation import weighted_overall
from client.kge.round_engine import RoundEngine
from client.kge.training import OPTIMIZER_PREFIX, LocalTrainer

__all__ = [
    "ENDED_BY_BUDGET",
    "ENDED_BY_RULE",
    "ExtraState",
    "PartyState",
    "Progress",
    "RoundCallback",
    "RoundCheckpoint",
    "client_states",
    "flat_states",
    "per_client_report",
    "run_rounds",
    "trainer_parties",
]

logger = logging.getLogger("client.kge.centralized")  # the runners' logger: their progress lines keep their name

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
    """Per-party stopping's access to each party's own state (see :func:`run_rounds`).

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


def trainer_parties(trainers: Sequence[LocalTrainer]) -> PartyState:
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


def flat_states(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-client private states as one flat ``client/<index>/<key>`` mapping (a snapshot)."""
    return {f"client/{index}/{key}": value for index, state in enumerate(states) for key, value in state.items()}


def client_states(arrays: Mapping[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`flat_states` for ``count`` clients.

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


def per_client_report(metrics: Sequence[Mapping[str, float]], client_ids: Sequence[int]) -> dict[str, Any]:
    return {
        "overall": weighted_overall(list(metrics)),
        "clients": {str(cid): dict(m) for cid, m in zip(client_ids, metrics)},
    }


def run_rounds(
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
    test = per_client_report(evaluate("test"), client_ids)
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
        valid = self._entry["valid"] = per_client_report(self.evaluate("valid"), self.client_ids)
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
