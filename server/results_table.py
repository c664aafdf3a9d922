"""The refined-vs-unrefined results table of a run, per downstream protocol: plain data in, plain data out.

Input: ``clients``, ``{client: record}``, each the record of :func:`client.kge.comparison.evaluate_client_rows`
(per downstream protocol label: per seed: per row -- ``unrefined``, ``refined``, ``perturbed``,
``refined-no-skip`` -- the test metrics under both evaluation protocols, the valid score, the
epochs trained and the displacement; the valid-only ``selection`` of the refined setting), and
``ranks``, ``{client: {rr_key: per-triple reciprocal ranks}}`` (:func:`client.kge.comparison.rr_key`).

Per protocol the table holds, per client and ``overall`` (clients weighted by test triples), each
row's metrics as mean +- std over seeds, each gain over ``unrefined`` in points (x100) as mean
+- std over seeds, and for the MRR of both evaluation protocols a 95 % paired-bootstrap interval
of the gain over test triples (10,000 resamples, seeded; :mod:`client.kge.significance`) against
``unrefined`` and against ``perturbed``. A refined gain is marked significant only when both
intervals lie above 0 (``verdict``: ``gain``, ``loss`` or ``none``).

The files and plots made of it: :mod:`server.report`, :mod:`server.report_plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from client.kge.comparison import ROWS, DownstreamRecordError, check_record, rr_key
from client.kge.evaluation import weighted_overall
from client.kge.protocols import EVAL_PROTOCOLS
from client.kge.significance import mean_std, paired_bootstrap, significant_gain

__all__ = [
    "COLUMNS",
    "GAIN_BASELINE",
    "OVERALL",
    "ReportInputError",
    "build_results_table",
    "column_name",
    "sorted_clients",
]

#: Rows whose gain over this baseline row is reported.
GAIN_BASELINE = "unrefined"
OVERALL = "overall"
#: (protocol, metric) columns, in table order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("standard", "mrr"),
    ("standard", "hits@1"),
    ("standard", "hits@3"),
    ("standard", "hits@10"),
    ("fede", "mrr"),
    ("fede", "hits@1"),
    ("fede", "hits@5"),
    ("fede", "hits@10"),
)
WEIGHT_KEY = "num_triples"
#: Valid MRR below as-trained by more than this (seed noise is about 0.007) flags a too-small budget.
BUDGET_TOLERANCE = 0.01


class ReportInputError(ValueError):
    """The results cannot be tabulated (missing client, row or metric, bad file)."""


def column_name(protocol: str, metric: str) -> str:
    """``("fede", "hits@5")`` -> ``"fede.hits@5"`` (the CSV/JSON column)."""
    return f"{protocol}.{metric}"


def sorted_clients(names: Sequence[str]) -> list[str]:
    """Client names in table order: numeric ones by number first, then the rest by name."""
    return sorted(names, key=lambda n: (0, int(n)) if str(n).isdigit() else (1, str(n)))


def build_results_table(
    clients: Mapping[str, Mapping[str, Any]],
    ranks: Mapping[str, Mapping[str, np.ndarray]],
    *,
    bootstrap_seed: int = 0,
    resamples: int = 10_000,
) -> dict[str, Any]:
    """Tabulate every protocol: rows (mean +- std over seeds), gains, intervals, selection.

    :param clients: ``{client: record}`` (see the module docstring).
    :param ranks: ``{client: {rr_key: array}}``.
    :returns: ``{"columns", "clients", "num_test", "protocols": {label: {"seeds", "rows", "gain_points",
        "intervals", "verdict", "displacement", "selection", "epochs", "notes"}}}``; values of ``rows``
        and ``gain_points`` are ``{"mean", "std", "n", "seeds"}``.
    :raises ReportInputError: for clients with different protocols, seeds or rows, a missing metric or
        reciprocal-rank array, or arrays whose length is not the client's test count.
    """
    names = sorted_clients([str(c) for c in clients])
    if not names:
        raise ReportInputError("no client results to tabulate")
    records = {name: clients[name] for name in names}
    for name in names:
        try:
            check_record(records[name], ranks.get(name, {}))
        except DownstreamRecordError as error:
            raise ReportInputError(f"client {name}: {error}") from None

    def order(record: Mapping[str, Any]) -> list[str]:
        found = list(record.get("protocols", {}))
        return [label for label in record.get("protocol_order", found) if label in found]

    labels = order(records[names[0]])
    for name in names:
        if order(records[name]) != labels:
            raise ReportInputError(
                f"client {name} reports protocols {list(records[name].get('protocols', {}))}, "
                f"client {names[0]} {labels}"
            )
    if not labels:
        raise ReportInputError("no downstream protocol results to tabulate")
    num_test: dict[str, int] = {}
    out: dict[str, Any] = {}
    for label in labels:
        per_client = {name: records[name]["protocols"][label] for name in names}
        seeds = list(per_client[names[0]]["seeds"])
        rows = [row for row in ROWS if row in per_client[names[0]]["seeds"][seeds[0]]]
        for name in names:
            got = per_client[name]["seeds"]
            if list(got) != seeds or any([r for r in ROWS if r in got[s]] != rows for s in seeds):
                raise ReportInputError(f"{label}: client {name} has other seeds or rows than client {names[0]}")
        values: dict[str, dict[str, dict[str, list[float]]]] = {}  # row -> client -> column -> per seed
        for row in rows:
            values[row] = {}
            for seed in seeds:
                metrics = {name: per_client[name]["seeds"][seed][row]["test"] for name in names}
                overall = {}
                for protocol in EVAL_PROTOCOLS:
                    try:
                        overall[protocol] = weighted_overall([metrics[name][protocol] for name in names], WEIGHT_KEY)
                    except (KeyError, ValueError) as error:
                        raise ReportInputError(
                            f"{label}, row {row}: a client lacks {protocol} metrics ({error})"
                        ) from None
                for client in names + [OVERALL]:
                    source = overall if client == OVERALL else metrics[client]
                    cell = values[row].setdefault(client, {})
                    for protocol, metric in COLUMNS:
                        try:
                            cell.setdefault(column_name(protocol, metric), []).append(float(source[protocol][metric]))
                        except KeyError:
                            raise ReportInputError(
                                f"{label}, row {row}, client {client}: no {protocol} {metric}"
                            ) from None
                    num_test[client] = int(source["standard"][WEIGHT_KEY])
        table_rows = {
            row: {c: {col: _summary(v) for col, v in per.items()} for c, per in by_client.items()}
            for row, by_client in values.items()
        }
        gains = {
            row: {
                c: {
                    col: _summary([100.0 * (a - b) for a, b in zip(v, values[GAIN_BASELINE][c][col], strict=True)])
                    for col, v in per.items()
                }
                for c, per in by_client.items()
            }
            for row, by_client in values.items()
            if row != GAIN_BASELINE and GAIN_BASELINE in values
        }
        intervals, verdict = _intervals(label, seeds, rows, names, ranks, num_test, bootstrap_seed, resamples)
        out[label] = {
            "seeds": [int(s) for s in seeds],
            "rows": table_rows,
            "gain_points": gains,
            "intervals": intervals,
            "verdict": verdict,
            "displacement": {
                row: {
                    name: _summary([per_client[name]["seeds"][s][row].get("displacement", 0.0) for s in seeds])
                    for name in names
                }
                for row in rows
                if row != GAIN_BASELINE
            },
            "epochs": {
                row: {name: [per_client[name]["seeds"][s][row].get("epochs", 0) for s in seeds] for name in names}
                for row in rows
            },
            "valid": {
                row: {name: _summary([per_client[name]["seeds"][s][row]["valid"] for s in seeds]) for name in names}
                for row in rows
            },
            "selection": {name: per_client[name].get("selection", {}) for name in names},
            "seconds": {name: per_client[name].get("seconds") for name in names},
        }
    _budget_notes(out, labels, names)
    return {
        "columns": [column_name(p, m) for p, m in COLUMNS],
        "clients": names + [OVERALL],
        "num_test": num_test,
        "protocols": out,
        # how far each encoder itself moved the rows (alpha 1), per client: mean ||f(x) - x|| / ||x||
        "simskip_displacement": {name: records[name].get("simskip_displacement", {}) for name in names},
    }


def _summary(per_seed: Sequence[float]) -> dict[str, Any]:
    return {**mean_std(per_seed), "seeds": [float(v) for v in per_seed]}


def _intervals(label, seeds, rows, names, ranks, num_test, seed, resamples):
    """Paired-bootstrap intervals (points) of refined / perturbed / no-skip minus unrefined, and
    refined minus perturbed, per client and overall, for each evaluation protocol's MRR."""
    comparisons = [(row, GAIN_BASELINE) for row in rows if row != GAIN_BASELINE]
    if "refined" in rows and "perturbed" in rows:
        comparisons.insert(1, ("refined", "perturbed"))
    if not comparisons:
        return {}, {}
    intervals: dict[str, dict[str, dict[str, Any]]] = {}
    verdict: dict[str, dict[str, str]] = {}
    for protocol in EVAL_PROTOCOLS:
        per_client_diffs = {}
        for name in names:
            diffs = []
            for row, base in comparisons:
                d = np.mean(
                    [
                        _ranks(ranks, name, label, s, row, protocol, num_test[name])
                        - _ranks(ranks, name, label, s, base, protocol, num_test[name])
                        for s in seeds
                    ],
                    axis=0,
                )
                diffs.append(d * 100.0)
            per_client_diffs[name] = np.stack(diffs)
        groups = {**per_client_diffs, OVERALL: np.concatenate([per_client_diffs[n] for n in names], axis=1)}
        for client, diffs in groups.items():
            found = paired_bootstrap(diffs, resamples=resamples, seed=seed)
            cell = intervals.setdefault(client, {})
            for (row, base), interval in zip(comparisons, found, strict=True):
                cell[f"{protocol}.mrr:{row}-{base}"] = dict(interval)
            if ("refined", "perturbed") in comparisons:
                verdict.setdefault(client, {})[f"{protocol}.mrr"] = significant_gain(
                    found[comparisons.index(("refined", GAIN_BASELINE))],
                    found[comparisons.index(("refined", "perturbed"))],
                )
    return intervals, verdict


def _ranks(ranks, client, label, seed, row, protocol, n) -> np.ndarray:
    key = rr_key(label, int(seed), row, protocol)
    try:
        values = np.asarray(ranks[client][key], dtype=np.float64)
    except KeyError:
        raise ReportInputError(f"client {client}: no reciprocal ranks {key!r}") from None
    if values.shape != (n,) or not np.isfinite(values).all():
        raise ReportInputError(
            f"client {client}: reciprocal ranks {key!r} of shape {values.shape}, expected ({n},) finite"
        )
    return values


def _budget_notes(out: dict[str, Any], labels: Sequence[str], names: Sequence[str]) -> None:
    """Per protocol: say where the unrefined row stays below the as-trained model on valid (the
    budget was too small to re-fit), and where runs stopped at the epoch cap still improving."""
    reference = out.get("as-trained", {}).get("valid", {}).get(GAIN_BASELINE)
    for label in labels:
        notes = []
        entry = out[label]
        if reference is not None and label != "as-trained":
            short = [
                n for n in names if entry["valid"][GAIN_BASELINE][n]["mean"] < reference[n]["mean"] - BUDGET_TOLERANCE
            ]
            if short:
                notes.append(
                    f"budget too small: the unrefined row's valid MRR stays more than {BUDGET_TOLERANCE} below "
                    f"as-trained on client(s) {short}"
                )
        entry["notes"] = notes
