"""The FedE / isolation round loop, written once.

Every way this project runs rounds goes through :class:`RoundEngine`: the Flower strategy
(:class:`server.strategy.FedEStrategy`, whose steps exchange messages), the in-process runners of
:mod:`client.kge.centralized` (FedE, isolation and collection in one process) and the in-process
mode of ``scripts/bench_time_to_accuracy.py``. What differs between them are the steps, given as
a :class:`RoundSteps` object; the order of the steps, the validation schedule and the early
stopping rule (:class:`~client.kge.early_stopping.EarlyStopping`) are this module's.

One round ``r``: ``train(r)``, ``aggregate(r, updates)``, then, when ``r`` is a multiple of
``eval_every`` or the last round, ``validate(r)`` -> what the stopper reads (the overall
validation MRR for :class:`~client.kge.early_stopping.EarlyStopping`, per-party MRRs for
:class:`~client.kge.early_stopping.PartyStopping`); a better value calls ``keep_best(r)`` (the
caller snapshots its state; with per-party stopping, of the parties the stopper names as
improved). ``end_round(r, ...)`` closes the round (reports, checkpoints) and may end the loop (a
time budget, a target reached). The loop ends when the stopper says so (``patience`` validations
in a row without a better value; per party: every party's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["RoundEngine", "RoundSteps", "Stopper"]


class Stopper(Protocol):
    """What the engine asks of early stopping (:class:`~client.kge.early_stopping.EarlyStopping`,
    :class:`~client.kge.early_stopping.PartyStopping`)."""

    def update(self, round_number: int, value: Any) -> bool:
        """Record a validation (``RoundSteps.validate``'s value); whether a best state is to be kept."""

    @property
    def should_stop(self) -> bool:
        """Whether the loop ends after this validation."""


class RoundSteps(Protocol):
    """The pluggable steps of one round (see the module docstring for their order)."""

    def train(self, round_number: int) -> Any:
        """Local training of the round's parties; returns their updates (anything ``aggregate`` takes)."""

    def aggregate(self, round_number: int, updates: Any) -> None:
        """Combine the updates (FedE: per-row mean; isolation: keep each party's own)."""

    def validate(self, round_number: int) -> Any:
        """What the stopper reads: the overall validation metric that selects the best round
        (higher is better; NaN or ``-inf`` count as no improvement), or with
        :class:`~client.kge.early_stopping.PartyStopping` party -> that party's metric."""

    def keep_best(self, round_number: int) -> None:
        """This round is the best so far (per party: for the stopper's ``improved`` parties): keep
        what the final test will use."""

    def end_round(self, round_number: int, validated: bool, stop: bool) -> bool:
        """The round is over (``stop``: patience ran out with it); return True to end the loop now."""


@dataclass
class RoundEngine:
    """Runs rounds ``first_round..num_rounds`` of :class:`RoundSteps` with validation and early stopping.

    :param num_rounds: the last round (a budget; early stopping may end the loop before).
    :param eval_every: validate every this many rounds, and always after the last one (so the
        last round's state can win).
    :param stopper: the early-stopping state (:class:`Stopper`; restored from a checkpoint on
        resume); ``None`` runs every round without early stopping (a benchmark that measures a
        fixed budget).
    :param stopped_early: a resumed run that had already stopped runs no further round.
    """

    num_rounds: int
    eval_every: int
    stopper: Stopper | None = None
    stopped_early: bool = False

    def __post_init__(self) -> None:
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")

    def validates(self, round_number: int) -> bool:
        """Whether ``round_number`` is a validation round."""
        return round_number % self.eval_every == 0 or round_number == self.num_rounds

    def run(self, steps: RoundSteps, first_round: int = 1) -> int:
        """Run the rounds; returns the last round run (``first_round - 1`` when none ran)."""
        last = first_round - 1
        for round_number in range(first_round, self.num_rounds + 1):
            if self.stopped_early:
                break
            steps.aggregate(round_number, steps.train(round_number))
            validated = self.validates(round_number)
            stop = False
            if validated:
                value = steps.validate(round_number)
                if self.stopper is not None:
                    if self.stopper.update(round_number, value):
                        steps.keep_best(round_number)
                    stop = self.stopper.should_stop
            self.stopped_early = stop
            last = round_number
            if steps.end_round(round_number, validated, stop) or stop:
                break
        return last
