"""Patience-based early stopping on a validation metric checked between rounds.

PyKEEN's ``EarlyStopper`` evaluates one model from inside one training loop; federated and
baseline runs instead check a metric combined over several clients' models between rounds, so
this small tracker is written here and shared by the baselines and the Flower server.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

__all__ = ["EarlyStopping"]

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
