"""The steps of one FedE round on the Flower grid (:class:`~client.kge.round_engine.RoundSteps`).

:class:`FedERoundSteps` is what :meth:`server.strategy.FedEStrategy.start` hands the round engine:
``train`` sends each sampled client its rows and collects the replies, ``aggregate`` checks and
averages them (:meth:`~server.strategy.FedEStrategy.aggregate_attributed`; under ``secure-aggregation``
``train`` runs the upload and the aggregation through SecAgg+ and ``aggregate`` takes the table,
:mod:`server.secure_aggregation`), ``validate`` asks every
connected client for its validation metrics, ``keep_best`` snapshots the best round's table, and
``end_round`` completes the round's :class:`~server.records.RoundReport`, updates the loop state a
checkpoint saves and calls ``on_round_end`` (the ServerApp writes ``metrics.jsonl`` and the
checkpoint there).

With ``stopping = per-party`` the engine's stopper is a
:class:`~client.kge.early_stopping.PartyStopping` keyed by client id: ``validate`` hands it each
client's own MRR, ``keep_best`` keeps the rows and valid metrics of the clients it names as
improved, and the loop state holds the trackers (``LoopState.parties``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from logging import INFO
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from client.kge.early_stopping import PartyStopping
from client.kge.round_engine import RoundEngine
from client.protocol import WEIGHT_KEY
from server.records import FedEResult, RoundReport, weighted_mean
from server.secure_aggregation import SecureRound

if TYPE_CHECKING:  # the strategy imports this module; annotations only
    from server.strategy import FedEStrategy

__all__ = ["FedERoundSteps", "format_metrics"]


class FedERoundSteps:
    """The :class:`~client.kge.round_engine.RoundSteps` of one :meth:`FedEStrategy.start`: a round's
    messages out and back, its report, and the loop state a checkpoint saves after it."""

    def __init__(
        self,
        strategy: FedEStrategy,
        grid: Grid,
        engine: RoundEngine,
        timeout: float,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
        result: FedEResult,
        on_round_end: Callable[[RoundReport], None] | None,
    ) -> None:
        self.strategy, self.grid, self.engine, self.timeout = strategy, grid, engine, timeout
        self.train_config, self.evaluate_config = train_config, evaluate_config
        self.result, self.on_round_end = result, on_round_end
        self.started = 0.0
        self.report = RoundReport(round=0)

    def train(self, round_number: int) -> list[tuple[int, Message]]:
        self.started = time.perf_counter()
        strategy = self.strategy
        strategy.members.report = self.report = RoundReport(round=round_number)
        strategy.members.await_clients(self.grid, f"round {round_number}")
        self.train_started = time.perf_counter()
        messages = list(strategy.configure_train(round_number, ArrayRecord(), self.train_config, self.grid))
        if strategy.secure_aggregation is not None:  # the upload and the aggregation, under SecAgg+
            return strategy.secure_round(self.grid, round_number, messages, self.timeout)
        return strategy.members.exchange(self.grid, messages, self.timeout)

    def aggregate(self, round_number: int, replies: list[tuple[int, Message]] | SecureRound) -> None:
        report = self.report
        if isinstance(replies, SecureRound):
            _, train_metrics = self.strategy.aggregate_secure(round_number, replies)
        else:
            _, train_metrics = self.strategy.aggregate_attributed(round_number, replies)
            replies.clear()  # the payloads are not needed any more
        report.train_phase_seconds = time.perf_counter() - self.train_started
        slowest = max((m.get("train-seconds", 0.0) for m in report.train.values()), default=0.0)
        report.overhead_seconds = max(0.0, report.train_phase_seconds - slowest - report.aggregation_seconds)
        if train_metrics is not None:
            self.result.train_metrics_clientapp[round_number] = train_metrics

    def validate(self, round_number: int) -> float | dict[str, float]:
        strategy, report = self.strategy, self.report
        eval_started = time.perf_counter()
        messages = list(strategy.configure_evaluate(round_number, ArrayRecord(), self.evaluate_config, self.grid))
        overall = strategy.aggregate_evaluate_attributed(
            strategy.members.exchange(self.grid, messages, self.timeout, phase="validation")
        )
        del messages
        report.evaluation_seconds = time.perf_counter() - eval_started
        report.valid = strategy.last_eval
        report.valid_overall = dict(overall) if overall is not None else {}
        if strategy.last_test:
            report.test = strategy.last_test
            report.test_overall = weighted_mean(strategy.last_test)
        if overall is not None:
            self.result.evaluate_metrics_clientapp[round_number] = overall
        if isinstance(self.engine.stopper, PartyStopping):  # a client without a reply counts as NaN
            return {name: float(metrics.get("mrr", math.nan)) for name, metrics in report.valid.items()}
        return float(report.valid_overall.get("mrr", -math.inf))

    def keep_best(self, round_number: int) -> None:
        loop, stopper = self.strategy.loop, self.engine.stopper
        if isinstance(stopper, PartyStopping):  # only the improved clients' own rows and metrics
            improved = set(stopper.improved)
            self.strategy.state.keep_best_of(
                [node for node, info in self.strategy.clients.items() if info.client_id in improved]
            )
            for name in improved:
                loop.party_best_valid[name] = dict(self.report.valid[name])
            loop.best_round = int(stopper.best_round or 0)
            loop.best_valid = weighted_mean(loop.party_best_valid)
            return
        loop.best_round, loop.best_valid = round_number, dict(self.report.valid_overall)
        self.strategy.state.keep_best()

    def end_round(self, round_number: int, validated: bool, stop: bool) -> bool:
        strategy, report, loop, stopper = self.strategy, self.report, self.strategy.loop, self.engine.stopper
        if isinstance(stopper, PartyStopping):
            loop.parties = stopper.state()
            loop.best_mrr = float(loop.best_valid.get("mrr", -math.inf))
            if validated:
                report.parties = stopper.summary()
        else:
            loop.best_mrr, loop.bad_checks = stopper.best_value, stopper.checks_without_improvement
        report.best_round = loop.best_round
        report.server_peak_rss_mb = _peak_rss_mb()
        report.seconds = time.perf_counter() - self.started
        report.finished_at = time.time()
        _log_round(report, self.engine.num_rounds)
        loop.round, loop.stopped_early = round_number, stop
        loop.reports.append(report.as_dict())
        strategy.members.report = None
        self.result.rounds.append(report)
        if self.on_round_end is not None:
            self.on_round_end(report)
        if stop and isinstance(stopper, PartyStopping):
            log(INFO, "early stopping after round %s: every party stopped (%s)", round_number, report.parties)
        elif stop:
            log(INFO, "early stopping after round %s: %s checks without a better MRR", round_number, loop.bad_checks)
        return False


def _log_round(report: RoundReport, num_rounds: int) -> None:
    losses = " ".join(f"{cid}:{m.get('train-loss', float('nan')):.4f}" for cid, m in sorted(report.train.items()))
    line = f"[round {report.round}/{num_rounds}] {report.seconds:.1f}s loss {losses}"
    if report.valid_overall:
        line += f" | valid {format_metrics(report.valid_overall)} (best round {report.best_round})"
    if report.failures:
        line += f" | left out: {report.failures}"
    log(INFO, line)


def _peak_rss_mb() -> float:
    """This (ServerApp) process's peak resident set size in MiB (Linux: ru_maxrss in KiB)."""
    import resource  # POSIX-only: imported where it is used, so the module loads on any platform

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def format_metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k != WEIGHT_KEY)
