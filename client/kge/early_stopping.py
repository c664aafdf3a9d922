"""Patience-based early stopping on a validation metric checked between rounds.

PyKEEN's ``EarlyStopper`` evaluates one model from inside one training loop; federated and
baseline runs instead check a metric combined over several clients' models between rounds, so
this small tracker is written here and shared by the baselines and the Flower server.

The run-config key ``stopping`` picks what it reads (``docs/concepts/stopping.md``):

``overall``
    One :class:`EarlyStopping` over the overall valid MRR (weighted by valid triples): it stops
    the run and picks one best round whose state every party tests.
``per-party``
    :class:`PartyStopping`: one :class:`EarlyStopping` per party over that party's own valid MRR.
    A party whose tracker ran out of patience is *stopped*: its best round is final (a later
    improvement is not taken up), but it keeps training and sharing rows so that the others train
    as before. The run ends when every party has stopped (or the round budget ends).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STOPPING_RULES", "EarlyStopping", "PartyStopping"]

#: The values of the run-config key ``stopping`` (:class:`client.kge.config.KGEConfig`).
STOPPING_RULES = ("overall", "per-party")

logger = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    """Track the best value of a higher-is-better metric and count checks without improvement.

    :param patience: stop after this many consecutive checks without a strictly better value.
    :param min_delta: an improvement must exceed the best value by more than this.
    """

    patience: int
    min_delta: float = 0.0
    best_value: float = field(default=-math.inf, init=False)
    best_round: int | None = field(default=None, init=False)
    checks_without_improvement: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def update(self, round_number: int, value: float) -> bool:
        """Record a check; returns whether it is the new best (callers then keep a snapshot).

        A NaN value (a diverged model) is a check
        without improvement, logged as a warning: the run keeps its best round and stops after
        ``patience`` such checks, so nothing computed before is lost. (The in-process runners
        raised here before, while the Flower server counted it as no improvement: one rule now.)
        """
        if math.isnan(value):
            logger.warning("validation metric is NaN at round %s: counted as a check without improvement", round_number)
        elif value > self.best_value + self.min_delta:
            self.best_value = float(value)
            self.best_round = int(round_number)
            self.checks_without_improvement = 0
            return True
        self.checks_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` checks in a row brought no improvement."""
        return self.checks_without_improvement >= self.patience

    def state(self) -> dict[str, float | int | None]:
        """A JSON-able snapshot (for checkpoints and run folders)."""
        return {
            "best_value": self.best_value,
            "best_round": self.best_round,
            "checks_without_improvement": self.checks_without_improvement,
        }

    @classmethod
    def from_state(cls, patience: int, state: dict[str, float | int | None], min_delta: float = 0.0) -> EarlyStopping:
        """Rebuild a tracker from :meth:`state` (to resume a run)."""
        tracker = cls(patience=patience, min_delta=min_delta)
        tracker.best_value = float(state["best_value"])  # type: ignore[arg-type]
        tracker.best_round = None if state["best_round"] is None else int(state["best_round"])  # type: ignore[arg-type]
        tracker.checks_without_improvement = int(state["checks_without_improvement"])  # type: ignore[arg-type]
        return tracker


@dataclass
class PartyStopping:
    """One :class:`EarlyStopping` per party, over each party's own validation metric.

    A party's tracker is updated until it stops (``patience`` checks in a row without a strictly
    better value); from then on the party is frozen: its best round and value are final and later
    values are ignored. :attr:`should_stop` once every party has stopped.

    :param patience: as :class:`EarlyStopping`'s, for every party.
    :param parties: the parties' names (e.g. client ids as strings), in a fixed order.
    :param min_delta: as :class:`EarlyStopping`'s.
    """

    patience: int
    parties: Sequence[str]
    min_delta: float = 0.0
    trackers: dict[str, EarlyStopping] = field(init=False)
    #: party -> the round its tracker stopped with (``None``: still running)
    stopped_round: dict[str, int | None] = field(init=False)
    #: the parties whose value improved at the last :meth:`update` (their state is to be kept)
    improved: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self.parties = tuple(str(party) for party in self.parties)
        if not self.parties or len(set(self.parties)) != len(self.parties):
            raise ValueError(f"parties must be distinct and at least one, got {list(self.parties)}")
        self.trackers = {party: EarlyStopping(self.patience, self.min_delta) for party in self.parties}
        self.stopped_round = dict.fromkeys(self.parties)

    def update(self, round_number: int, values: Mapping[str, float]) -> bool:
        """Record one check of every running party; returns whether any party improved
        (:attr:`improved` names them). A stopped party's value is ignored; a running party
        without a value (it did not answer) counts as NaN: a check without improvement.
        """
        improved = []
        for party in self.parties:
            if self.stopped_round[party] is not None:
                continue
            tracker = self.trackers[party]
            if tracker.update(round_number, float(values.get(party, math.nan))):
                improved.append(party)
            if tracker.should_stop:
                self.stopped_round[party] = int(round_number)
        self.improved = tuple(improved)
        return bool(improved)

    @property
    def should_stop(self) -> bool:
        """Whether every party's tracker has stopped."""
        return all(stopped is not None for stopped in self.stopped_round.values())

    @property
    def best_round(self) -> int | None:
        """The latest of the parties' best rounds (the last round whose state some party tests;
        ``None`` before any improvement)."""
        rounds = [t.best_round for t in self.trackers.values() if t.best_round is not None]
        return max(rounds) if rounds else None

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per party: ``best_round``, ``best_valid_mrr`` (``None`` before any improvement) and
        ``stopped_round`` (``None``: still running), JSON-able (the run's records)."""
        return {
            party: {
                "best_round": tracker.best_round,
                "best_valid_mrr": tracker.best_value if tracker.best_round is not None else None,
                "stopped_round": self.stopped_round[party],
            }
            for party, tracker in self.trackers.items()
        }

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot (for checkpoints)."""
        return {
            "parties": {
                party: {**tracker.state(), "stopped_round": self.stopped_round[party]}
                for party, tracker in self.trackers.items()
            }
        }

    @classmethod
    def from_state(
        cls, patience: int, parties: Sequence[str], state: Mapping[str, Any], min_delta: float = 0.0
    ) -> PartyStopping:
        """Rebuild a tracker from :meth:`state` (to resume a run).

        :raises ValueError: the state holds other parties (a checkpoint of another partition).
        """
        tracker = cls(patience=patience, parties=parties, min_delta=min_delta)
        saved = dict(state.get("parties") or {})
        if sorted(saved) != sorted(tracker.parties):
            raise ValueError(
                f"the saved stopping state holds parties {sorted(saved)}, this run has {sorted(tracker.parties)}"
            )
        for party, party_state in saved.items():
            tracker.trackers[party] = EarlyStopping.from_state(patience, party_state, min_delta)
            stopped = party_state.get("stopped_round")
            tracker.stopped_round[party] = None if stopped is None else int(stopped)
        return tracker
