"""What a run folder says about time to accuracy: per-round records with elapsed wall seconds, the
overall test MRR weighted by each client's test size, and the first round that reaches a target.

Read by ``scripts/bench_time_to_accuracy.py`` while and after ``simskip-sim`` runs (it follows the
run folder's ``metrics.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.kge.run_folder import JsonlFormatError, read_jsonl
from server.records import weighted_mean

__all__ = ["MetricsFormatError", "client_test_sizes", "read_metrics_rows", "summarize_rounds", "weighted_test_mrr"]


class MetricsFormatError(ValueError):
    """A run folder's ``metrics.jsonl`` or ``config.json`` cannot be read (names file and line)."""


def read_metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run folder's ``metrics.jsonl`` (none while it does not exist yet), read by
    the project's one JSON-lines reader (:func:`client.kge.run_folder.read_jsonl`).

    :raises MetricsFormatError: for a line that is not a JSON object or a row without ``round``,
        naming file and line.
    """
    try:
        rows = read_jsonl(path)
    except JsonlFormatError as error:
        raise MetricsFormatError(str(error)) from None
    for number, row in enumerate(rows, start=1):
        if "round" not in row:
            raise MetricsFormatError(f"{path}: row {number}: a metrics row must be an object with a 'round'")
    return rows


def client_test_sizes(config: dict[str, Any]) -> dict[str, int]:
    """Client id -> test triples, from a run folder's ``config.json`` (``clients.<id>.num_test``)."""
    return {
        str(cid): int(entry["num_test"])
        for cid, entry in (config.get("clients") or {}).items()
        if isinstance(entry, dict) and "num_test" in entry
    }


def weighted_test_mrr(test: dict[str, dict[str, float]], sizes: dict[str, int]) -> float | None:
    """Test MRR over the clients that reported, weighted by test size (``config.json``; else the
    reply's ``num_triples``); ``None`` without any test metrics."""
    weighted = {
        cid: {"mrr": float(metrics["mrr"]), "weight": float(sizes.get(cid, metrics.get("num_triples", 0)))}
        for cid, metrics in test.items()
        if "mrr" in metrics
    }
    return weighted_mean(weighted, "weight").get("mrr")


def summarize_rounds(
    rows: list[dict[str, Any]], *, t0: float, test_sizes: dict[str, int], target: float | None
) -> dict[str, Any]:
    """Per-round records and the time-to-accuracy summary of ``metrics.jsonl`` rows.

    :param rows: rows of ``metrics.jsonl`` (:class:`server.strategy.RoundReport` dicts).
    :param t0: wall clock (``time.time()``) of the launch; elapsed times count from it.
    :param test_sizes: client id -> test triples (weights of the overall test MRR).
    :param target: test MRR whose first reach is ``time_to_target``; ``None``: not reported.
    :returns: ``rounds`` (one record per row), ``time_to_target``, ``time_to_best_valid``,
        ``totals`` (seconds per phase) and ``startup_seconds``.
    """
    records = []
    for row in sorted(rows, key=lambda r: int(r["round"])):
        train = row.get("train") or {}
        client_seconds = [float(m["train-seconds"]) for m in train.values() if "train-seconds" in m]
        finished_at = row.get("finished_at")
        record: dict[str, Any] = {
            "round": int(row["round"]),
            "elapsed_seconds": float(finished_at) - t0 if finished_at else None,
            "round_seconds": float(row.get("seconds", 0.0)),
            "local_training_seconds_max_client": max(client_seconds, default=0.0),
            "local_training_seconds_sum": sum(client_seconds),
            "framework_seconds": float(row.get("overhead_seconds", 0.0)),
            "aggregation_seconds": float(row.get("aggregation_seconds", 0.0)),
            "evaluation_seconds": float(row.get("evaluation_seconds", 0.0)),
            "validated": row.get("valid_overall") is not None,
        }
        if record["validated"]:
            record["valid_mrr"] = float(row["valid_overall"]["mrr"])
            record["valid"] = row["valid_overall"]
            test = row.get("test") or {}
            record["test_mrr"] = weighted_test_mrr(test, test_sizes)
            record["test_clients"] = sorted(test)
            if row.get("test_overall"):
                record["test"] = row["test_overall"]
        records.append(record)

    validated = [r for r in records if r["validated"]]
    reached = next(
        (r for r in validated if target is not None and r.get("test_mrr") is not None and r["test_mrr"] >= target), None
    )
    best = max(validated, key=lambda r: r["valid_mrr"], default=None)
    first = next((r for r in records if r["elapsed_seconds"] is not None), None)

    def moment(record: dict[str, Any] | None) -> dict[str, Any] | None:
        if record is None:
            return None
        return {key: record.get(key) for key in ("round", "elapsed_seconds", "valid_mrr", "test_mrr")}

    return {
        "rounds": records,
        "target_test_mrr": target,
        "time_to_target": moment(reached),
        "time_to_best_valid": moment(best),
        # launch to the end of the first round, minus that round: Ray/SuperLink start-up, data partitioning
        "startup_seconds": first["elapsed_seconds"] - first["round_seconds"] if first else None,
        "totals": {
            phase: sum(r[phase] for r in records)
            for phase in (
                "local_training_seconds_max_client",
                "local_training_seconds_sum",
                "framework_seconds",
                "aggregation_seconds",
                "evaluation_seconds",
            )
        },
    }
