"""Results of a run: the refined-vs-unrefined table per downstream protocol (Markdown, CSV, JSON) and plots.

Input is plain data, so the table can be built from a live run or from a finished run folder:

``clients``: ``{client: record}``, each the record of :func:`client.kge.comparison.evaluate_client_rows`
(per downstream protocol label: per seed: per row -- ``unrefined``, ``refined``, ``perturbed``,
``refined-no-skip`` -- the test metrics under both evaluation protocols, the valid score, the
epochs trained and the displacement; the valid-only ``selection`` of the refined setting).
``ranks``: ``{client: {rr_key: per-triple reciprocal ranks}}`` (:func:`client.kge.comparison.rr_key`).

Per protocol the table holds, per client and ``overall`` (clients weighted by test triples), each
row's metrics as mean +- std over seeds, each gain over ``unrefined`` in points (x100) as mean
+- std over seeds, and for the MRR of both evaluation protocols a 95 % paired-bootstrap interval
of the gain over test triples (10,000 resamples, seeded; :mod:`client.kge.significance`) against
``unrefined`` and against ``perturbed``. A refined gain is marked significant only when both
intervals lie above 0 (``verdict``: ``gain``, ``loss`` or ``none``).

Files written into the run folder (atomically): ``results.json``, ``results.csv``,
``results.md`` and, where their data exist, ``valid_mrr.png`` (KGE phase: overall and
per-client validation MRR per round, from ``metrics.jsonl``), ``simskip_loss.png`` (SimSkip
phase: NT-Xent loss per round, from ``simskip_metrics.jsonl``) and ``refined_vs_unrefined.png``
(per protocol, the overall test MRR gain over the unrefined rows of each other row, in points,
with its 95 % paired-bootstrap interval). :func:`write_report` does all
of it from a run folder holding ``downstream.json`` and ``downstream_rr.npz``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.comparison import ROWS, DownstreamRecordError, check_record, rr_key
from client.kge.evaluation import weighted_overall
from client.kge.protocols import EVAL_PROTOCOLS
from client.kge.run_folder import atomic_write_bytes, atomic_write_text
from client.kge.significance import mean_std, paired_bootstrap, significant_gain

__all__ = [
    "COLUMNS",
    "DOWNSTREAM_FILE",
    "GAIN_BASELINE",
    "OVERALL",
    "RANKS_FILE",
    "SIMSKIP_METRICS_FILE",
    "ReportInputError",
    "build_results_table",
    "load_jsonl",
    "load_ranks",
    "save_ranks",
    "write_plots",
    "write_report",
    "write_results",
]

DOWNSTREAM_FILE = "downstream.json"
RANKS_FILE = "downstream_rr.npz"
SIMSKIP_METRICS_FILE = "simskip_metrics.jsonl"
KGE_METRICS_FILE = "metrics.jsonl"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"

#: Rows whose gain over this baseline row is reported.
GAIN_BASELINE = "unrefined"
OVERALL = "overall"
#: (protocol, metric) columns, in table order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("standard", "mrr"), ("standard", "hits@1"), ("standard", "hits@3"), ("standard", "hits@10"),
    ("fede", "mrr"), ("fede", "hits@1"), ("fede", "hits@5"), ("fede", "hits@10"),
)
WEIGHT_KEY = "num_triples"
#: Valid MRR below as-trained by more than this (seed noise is about 0.007) flags a too-small budget.
BUDGET_TOLERANCE = 0.01


class ReportInputError(ValueError):
    """The results cannot be tabulated (missing client, row or metric, bad file)."""


def column_name(protocol: str, metric: str) -> str:
    """``("fede", "hits@5")`` -> ``"fede.hits@5"`` (the CSV/JSON column)."""
    return f"{protocol}.{metric}"


def _sorted_clients(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: (0, int(n)) if str(n).isdigit() else (1, str(n)))


# ----------------------------------------------------------------------------- the table
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
    names = _sorted_clients([str(c) for c in clients])
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
            raise ReportInputError(f"client {name} reports protocols {list(records[name].get('protocols', {}))}, "
                                   f"client {names[0]} {labels}")
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
                        raise ReportInputError(f"{label}, row {row}: a client lacks {protocol} metrics ({error})") from None
                for client in names + [OVERALL]:
                    source = overall if client == OVERALL else metrics[client]
                    cell = values[row].setdefault(client, {})
                    for protocol, metric in COLUMNS:
                        try:
                            cell.setdefault(column_name(protocol, metric), []).append(float(source[protocol][metric]))
                        except KeyError:
                            raise ReportInputError(f"{label}, row {row}, client {client}: no {protocol} {metric}") from None
                    num_test[client] = int(source["standard"][WEIGHT_KEY])
        table_rows = {row: {c: {col: _summary(v) for col, v in per.items()} for c, per in by_client.items()}
                      for row, by_client in values.items()}
        gains = {
            row: {c: {col: _summary([100.0 * (a - b) for a, b in zip(v, values[GAIN_BASELINE][c][col], strict=True)])
                      for col, v in per.items()} for c, per in by_client.items()}
            for row, by_client in values.items() if row != GAIN_BASELINE and GAIN_BASELINE in values
        }
        intervals, verdict = _intervals(label, seeds, rows, names, ranks, num_test, bootstrap_seed, resamples)
        out[label] = {
            "seeds": [int(s) for s in seeds],
            "rows": table_rows,
            "gain_points": gains,
            "intervals": intervals,
            "verdict": verdict,
            "displacement": {
                row: {name: _summary([per_client[name]["seeds"][s][row].get("displacement", 0.0) for s in seeds]) for name in names}
                for row in rows if row != GAIN_BASELINE
            },
            "epochs": {row: {name: [per_client[name]["seeds"][s][row].get("epochs", 0) for s in seeds] for name in names}
                       for row in rows},
            "valid": {row: {name: _summary([per_client[name]["seeds"][s][row]["valid"] for s in seeds]) for name in names}
                      for row in rows},
            "selection": {name: per_client[name].get("selection", {}) for name in names},
            "seconds": {name: per_client[name].get("seconds") for name in names},
        }
    _budget_notes(out, labels, names)
    return {"columns": [column_name(p, m) for p, m in COLUMNS], "clients": names + [OVERALL], "num_test": num_test,
            "protocols": out,
            # how far each encoder itself moved the rows (alpha 1), per client: mean ||f(x) - x|| / ||x||
            "simskip_displacement": {name: records[name].get("simskip_displacement", {}) for name in names}}


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
                d = np.mean([_ranks(ranks, name, label, s, row, protocol, num_test[name])
                             - _ranks(ranks, name, label, s, base, protocol, num_test[name]) for s in seeds], axis=0)
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
                    found[comparisons.index(("refined", GAIN_BASELINE))], found[comparisons.index(("refined", "perturbed"))])
    return intervals, verdict


def _ranks(ranks, client, label, seed, row, protocol, n) -> np.ndarray:
    key = rr_key(label, int(seed), row, protocol)
    try:
        values = np.asarray(ranks[client][key], dtype=np.float64)
    except KeyError:
        raise ReportInputError(f"client {client}: no reciprocal ranks {key!r}") from None
    if values.shape != (n,) or not np.isfinite(values).all():
        raise ReportInputError(f"client {client}: reciprocal ranks {key!r} of shape {values.shape}, expected ({n},) finite")
    return values


def _budget_notes(out: dict[str, Any], labels: Sequence[str], names: Sequence[str]) -> None:
    """Per protocol: say where the unrefined row stays below the as-trained model on valid (the
    budget was too small to re-fit), and where runs stopped at the epoch cap still improving."""
    reference = out.get("as-trained", {}).get("valid", {}).get(GAIN_BASELINE)
    for label in labels:
        notes = []
        entry = out[label]
        if reference is not None and label != "as-trained":
            short = [n for n in names
                     if entry["valid"][GAIN_BASELINE][n]["mean"] < reference[n]["mean"] - BUDGET_TOLERANCE]
            if short:
                notes.append(f"budget too small: the unrefined row's valid MRR stays more than {BUDGET_TOLERANCE} below "
                             f"as-trained on client(s) {short}")
        entry["notes"] = notes


# ----------------------------------------------------------------------------- files
def _fmt(summary: Mapping[str, Any], signed: bool = False, digits: int = 4) -> str:
    mean = f"{summary['mean']:+.{digits}f}" if signed else f"{summary['mean']:.{digits}f}"
    return mean if summary["n"] < 2 else f"{mean} ± {summary['std']:.{digits}f}"


def _markdown(table: Mapping[str, Any], title: str, notes: Sequence[str]) -> str:
    columns = table["columns"]
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    lines += [
        ("Metrics are filtered and realistic-rank; `standard`: head+tail, all entities, Hits@1/3/10; "
        "`fede`: tail only, candidates = the client's train entities, Hits@1/5/10. `overall` weights clients by "
        "test triples. Cells: mean ± std over seeds. Gain rows: (row - unrefined) x 100, in points. "
        "Intervals: 95 % paired bootstrap over test triples of the MRR gain (points). A refined gain is "
        "significant (**gain**) only when it beats both `unrefined` and `perturbed` with intervals above 0."),
        "",
    ]
    for label, entry in table["protocols"].items():
        lines += [f"## Downstream protocol `{label}` (seeds {entry['seeds']})", ""]
        lines += [f"- NOTE: {note}" for note in entry["notes"]]
        lines += ["| client | row | " + " | ".join(columns) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|"]
        for client in table["clients"]:
            name = f"{client} (n={table['num_test'][client]})"
            for row, per in entry["rows"].items():
                lines.append(f"| {name} | {row} | " + " | ".join(_fmt(per[client][c]) for c in columns) + " |")
            for row, per in entry["gain_points"].items():
                lines.append(f"| {name} | gain {row} (pts) | " + " | ".join(_fmt(per[client][c], True, 2) for c in columns) + " |")
        lines += ["", "| client | comparison (MRR points) | standard: mean [95 % CI] | fede: mean [95 % CI] | verdict (standard / fede) |",
                  "|---|---|---:|---:|---|"]
        for client in table["clients"]:
            cell = entry["intervals"].get(client, {})
            comparisons = list(dict.fromkeys(key.split(":", 1)[1] for key in cell))
            for comparison in comparisons:
                parts = []
                for protocol in EVAL_PROTOCOLS:
                    iv = cell[f"{protocol}.mrr:{comparison}"]
                    parts.append(f"{iv['mean']:+.2f} [{iv['lo']:+.2f}, {iv['hi']:+.2f}]")
                verdict = ""
                if comparison == f"refined-{GAIN_BASELINE}" and client in entry["verdict"]:
                    verdict = " / ".join(f"**{v}**" if v == "gain" else v for v in entry["verdict"][client].values())
                lines.append(f"| {client} | {comparison} | " + " | ".join(parts) + f" | {verdict} |")
        lines += ["", ("Displacement of the refined rows, mean ||f(x) - x|| / ||x|| (perturbed: the same by construction); "
                  "the refined setting chosen on valid:"), ""]
        for client in table["clients"][:-1]:
            moved = _fmt(entry["displacement"]["refined"][client]) if "refined" in entry["displacement"] else "-"
            chosen = entry["selection"].get(client, {}).get("chosen", {})
            prefers = entry["selection"].get(client, {}).get("valid_prefers_unrefined")
            lines.append(f"- client {client}: displacement {moved}; chosen setting {chosen.get('setting')} "
                         f"{chosen.get('overrides') or '(the config)'}, alpha {chosen.get('alpha')}"
                         + ("; on valid the unrefined rows score at least as well" if prefers else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def _csv(table: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["protocol", "client", "row", "num_test", "statistic", *table["columns"]])
    for label, entry in table["protocols"].items():
        for client in table["clients"]:
            for kind, block in (("", entry["rows"]), ("gain:", entry["gain_points"])):
                for row, per in block.items():
                    for statistic in ("mean", "std"):
                        writer.writerow([label, client, f"{kind}{row}", table["num_test"][client], statistic,
                                         *(repr(per[client][c][statistic]) for c in table["columns"])])
    return buffer.getvalue()


def write_results(
    out_dir: str | Path,
    clients: Mapping[str, Mapping[str, Any]],
    ranks: Mapping[str, Mapping[str, np.ndarray]],
    *,
    title: str = "Link prediction: FedE vs SimSkip-refined entity embeddings",
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``.

    :param clients: see :func:`build_results_table`.
    :param ranks: see :func:`build_results_table`.
    :param title: the Markdown heading.
    :param notes: bullet lines under the heading (budgets, dataset, config).
    :param extra: more JSON fields (e.g. the configs) stored under ``"run"`` in ``results.json``.
    :returns: ``{"json": path, "csv": path, "md": path}``.
    :raises ReportInputError: see :func:`build_results_table`.
    """
    out = Path(out_dir)
    table = build_results_table(clients, ranks)
    payload = {**table, "title": title, "notes": list(notes), "run": dict(extra or {})}
    paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV, "md": out / RESULTS_MD}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, sort_keys=False) + "\n")
    atomic_write_text(paths["csv"], _csv(table))
    atomic_write_text(paths["md"], _markdown(table, title, notes))
    return paths


def save_ranks(path: str | Path, ranks: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write ``{client: {rr_key: array}}`` as one npz (``<client>|<rr_key>`` entries), atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{f"{client}|{key}": np.asarray(values, dtype=np.float64)
                                   for client, per in ranks.items() for key, values in per.items()})
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_ranks(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`save_ranks` (``{}`` when the file is missing).

    :raises ReportInputError: naming the file when it is not such an npz.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            out: dict[str, dict[str, np.ndarray]] = {}
            for entry in archive.files:
                client, sep, key = entry.partition("|")
                if not sep:
                    raise ReportInputError(f"{path}: entry {entry!r} is not '<client>|<key>'")
                out.setdefault(client, {})[key] = archive[entry]
            return out
    except (OSError, ValueError) as error:
        raise ReportInputError(f"{path}: not a reciprocal-rank archive ({error})") from None


# ----------------------------------------------------------------------------- plots
def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (``[]`` when missing).

    :raises ReportInputError: naming the file and line of a malformed row.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ReportInputError(f"{path}:{number}: malformed JSON line: {error}") from None
    return rows


def _save_figure(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def write_plots(
    out_dir: str | Path,
    *,
    kge_rows: Sequence[Mapping[str, Any]] = (),
    simskip_rows: Sequence[Mapping[str, Any]] = (),
    table: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the PNG plots whose data are given; return ``{plot name: path}`` of those written.

    :param kge_rows: ``metrics.jsonl`` rows; validated ones carry ``valid_overall`` and ``valid``.
    :param simskip_rows: ``simskip_metrics.jsonl`` rows (``simskip_loss_overall``, ``simskip_loss``).
    :param table: a :func:`build_results_table` result.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: dict[str, Path] = {}
    validated = [r for r in kge_rows if r.get("valid_overall")]
    if validated:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in validated], [r["valid_overall"]["mrr"] for r in validated], "o-", label="overall", linewidth=2)
        clients = _sorted_clients(sorted({c for r in validated for c in (r.get("valid") or {})}))
        for client in clients:
            points = [(r["round"], r["valid"][client]["mrr"]) for r in validated if client in (r.get("valid") or {})]
            ax.plot(*zip(*points), "--", alpha=0.7, label=f"client {client}")
        ax.set(xlabel="KGE round", ylabel="valid MRR", title="Validation MRR per round")
        ax.legend()
        _save_figure(fig, out / "valid_mrr.png")
        plt.close(fig)
        written["valid_mrr"] = out / "valid_mrr.png"
    if simskip_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        variants = sorted({v for r in simskip_rows for v in r.get("simskip_loss_overall", {})})
        rounds = [r["round"] for r in simskip_rows]
        for variant in variants:
            ax.plot(rounds, [r["simskip_loss_overall"].get(variant) for r in simskip_rows], "o-", linewidth=2, label=f"{variant} (overall)")
            for client in _sorted_clients(sorted({c for r in simskip_rows for c in r.get("simskip_loss", {})})):
                ax.plot(rounds, [r["simskip_loss"].get(client, {}).get(variant) for r in simskip_rows], ":", alpha=0.6,
                        label=f"{variant} client {client}")
        ax.set(xlabel="SimSkip round", ylabel="NT-Xent loss (last local epoch)", title="SimSkip loss per round")
        ax.legend(fontsize="small")
        _save_figure(fig, out / "simskip_loss.png")
        plt.close(fig)
        written["simskip_loss"] = out / "simskip_loss.png"
    if table is not None and table.get("protocols"):
        labels = list(table["protocols"])
        rows = [row for row in ROWS if row != GAIN_BASELINE
                and any(row in table["protocols"][label]["rows"] for label in labels)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        width = 0.8 / max(1, len(rows))
        for ax, protocol in zip(axes, ("standard", "fede"), strict=True):
            for index, row in enumerate(rows):
                xs, means, errors = [], [], [[], []]
                for position, label in enumerate(labels):
                    interval = table["protocols"][label]["intervals"].get(OVERALL, {}).get(f"{protocol}.mrr:{row}-{GAIN_BASELINE}")
                    if interval is not None:
                        xs.append(position + index * width)
                        means.append(interval["mean"])
                        errors[0].append(interval["mean"] - interval["lo"])
                        errors[1].append(interval["hi"] - interval["mean"])
                ax.bar(xs, means, width, yerr=errors, capsize=2, label=row)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(labels))], labels, rotation=20, fontsize="small")
            ax.set(xlabel="downstream protocol", ylabel="overall test MRR gain over unrefined (points, 95 % CI)",
                   title=f"{protocol} protocol")
        axes[0].legend(fontsize="small")
        _save_figure(fig, out / "refined_vs_unrefined.png")
        plt.close(fig)
        written["refined_vs_unrefined"] = out / "refined_vs_unrefined.png"
    return written


def write_report(run_dir: str | Path, *, title: str | None = None, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Build the whole report of a run folder from its files.

    Reads ``downstream.json`` (``{"clients": {client: record}, ...}``; every other top-level key
    is copied to ``results.json``'s ``run``), ``downstream_rr.npz`` (:func:`save_ranks`),
    ``metrics.jsonl`` and ``simskip_metrics.jsonl``; writes the tables and the plots.

    :raises ReportInputError: when ``downstream.json`` is missing or malformed (naming it).
    """
    run_dir = Path(run_dir)
    source = run_dir / DOWNSTREAM_FILE
    try:
        downstream = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{source}: no downstream results (run the downstream evaluation first)") from None
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{source}: malformed JSON: {error}") from None
    if not isinstance(downstream, dict) or not isinstance(downstream.get("clients"), dict):
        raise ReportInputError(f"{source}: expected an object with a 'clients' object")
    extra = {k: v for k, v in downstream.items() if k != "clients"}
    paths = write_results(run_dir, downstream["clients"], load_ranks(run_dir / RANKS_FILE),
                          title=title or f"Results of {run_dir.name}", notes=notes, extra=extra)
    table = json.loads(paths["json"].read_text(encoding="utf-8"))
    plots = write_plots(
        run_dir,
        kge_rows=load_jsonl(run_dir / KGE_METRICS_FILE),
        simskip_rows=load_jsonl(run_dir / SIMSKIP_METRICS_FILE),
        table=table,
    )
    return {**paths, **plots}
