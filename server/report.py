"""Results of a run: the refined-vs-unrefined table (Markdown, CSV, JSON) and PNG plots.

Input is plain data, so the table can be built from a live run or from a finished run folder:

``downstream``: ``{row: {client: {protocol: metrics}}}`` where ``row`` is one of
:data:`ROW_ORDER` (``fede-as-trained``, ``unrefined``, ``refined``, ``refined-gated``,
``refined-no-skip``; rows not run are simply absent), ``protocol`` is ``standard`` / ``fede``
and ``metrics`` is what :func:`client.kge.evaluation.evaluate_link_prediction` returns (``mrr``,
``hits@k``, ``num_triples``). ``overall`` is the mean over clients weighted by their number of
test triples (:func:`client.kge.evaluation.weighted_overall`). The gain rows are ``refined -
unrefined`` (and ``refined-gated - unrefined``, ``refined-no-skip - unrefined``) in points, i.e. x100.
``gate`` (optional): ``{client: {"alpha", "valid_mrr": {alpha: mrr}, "protocol", ...}}``, the
skip strength each client's ``refined-gated`` row was chosen with (:func:`client.kge.refit.choose_skip_strength`);
stored as ``results.json``'s ``gate`` and listed under the Markdown table.

Files written into the run folder (atomically): ``results.json``, ``results.csv``,
``results.md`` and, where their data exist, ``valid_mrr.png`` (KGE phase: overall and
per-client validation MRR per round, from ``metrics.jsonl``), ``simskip_loss.png`` (SimSkip
phase: NT-Xent loss per round, from ``simskip_metrics.jsonl``) and ``refined_vs_unrefined.png``
(test MRR per client and overall, both protocols). :func:`write_report` does all of it from a
run folder holding ``downstream.json``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from server.run_folder import atomic_write_bytes, atomic_write_text

__all__ = [
    "COLUMNS",
    "DOWNSTREAM_FILE",
    "GAIN_BASELINE",
    "OVERALL",
    "ROW_ORDER",
    "ReportInputError",
    "SIMSKIP_METRICS_FILE",
    "build_results_table",
    "load_jsonl",
    "write_plots",
    "write_report",
    "write_results",
]

DOWNSTREAM_FILE = "downstream.json"
SIMSKIP_METRICS_FILE = "simskip_metrics.jsonl"
KGE_METRICS_FILE = "metrics.jsonl"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"

ROW_ORDER: tuple[str, ...] = ("fede-as-trained", "unrefined", "refined", "refined-gated", "refined-no-skip")
#: Rows whose gain over this baseline row is reported.
GAIN_BASELINE = "unrefined"
GAIN_ROWS: tuple[str, ...] = ("refined", "refined-gated", "refined-no-skip")
OVERALL = "overall"
#: (protocol, metric) columns, in table order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("standard", "mrr"), ("standard", "hits@1"), ("standard", "hits@3"), ("standard", "hits@10"),
    ("fede", "mrr"), ("fede", "hits@1"), ("fede", "hits@5"), ("fede", "hits@10"),
)
WEIGHT_KEY = "num_triples"


class ReportInputError(ValueError):
    """The results cannot be tabulated (unknown row, missing client or metric, bad file)."""


def column_name(protocol: str, metric: str) -> str:
    """``("fede", "hits@5")`` -> ``"fede.hits@5"`` (the CSV/JSON column)."""
    return f"{protocol}.{metric}"


def _sorted_clients(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: (0, int(n)) if str(n).isdigit() else (1, str(n)))


def build_results_table(downstream: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> dict[str, Any]:
    """Tabulate per-client and overall metrics, and the gains in points.

    :param downstream: ``{row: {client: {protocol: metrics}}}`` (see the module docstring).
    :returns: ``{"columns": [...], "clients": [... , "overall"], "rows": {row: {client: {column: value}}},
        "gain_points": {row: {client: {column: points}}}, "num_test": {client: n}}``.
    :raises ReportInputError: for an unknown row, rows over different clients, or a missing metric.
    """
    unknown = sorted(set(downstream) - set(ROW_ORDER))
    if unknown:
        raise ReportInputError(f"unknown result row(s) {unknown}; rows are {list(ROW_ORDER)}")
    present = [row for row in ROW_ORDER if row in downstream]
    if not present:
        raise ReportInputError("no result rows to tabulate")
    clients = _sorted_clients(list(downstream[present[0]]))
    for row in present:
        if set(downstream[row]) != set(clients):
            raise ReportInputError(f"row {row!r} has clients {_sorted_clients(list(downstream[row]))}, row {present[0]!r} has {clients}")
    from client.kge.evaluation import weighted_overall

    rows: dict[str, dict[str, dict[str, float]]] = {}
    num_test: dict[str, int] = {}
    for row in present:
        rows[row] = {}
        per_protocol_overall = {}
        for protocol in {p for p, _ in COLUMNS}:
            try:
                per_protocol_overall[protocol] = weighted_overall([downstream[row][c][protocol] for c in clients], WEIGHT_KEY)
            except KeyError as error:
                raise ReportInputError(f"row {row!r}: a client lacks protocol {protocol!r} or {WEIGHT_KEY!r} ({error})") from None
            except ValueError as error:  # clients report different metric keys
                raise ReportInputError(f"row {row!r}, protocol {protocol!r}: {error}") from None
        for client in clients + [OVERALL]:
            source = per_protocol_overall if client == OVERALL else downstream[row][client]
            values = {}
            for protocol, metric in COLUMNS:
                try:
                    values[column_name(protocol, metric)] = float(source[protocol][metric])
                except KeyError:
                    raise ReportInputError(f"row {row!r}, client {client}: no {protocol} {metric}") from None
            rows[row][client] = values
            if row == present[0]:
                num_test[client] = int(source["standard"][WEIGHT_KEY])
    gains: dict[str, dict[str, dict[str, float]]] = {}
    if GAIN_BASELINE in rows:
        for row in GAIN_ROWS:
            if row in rows:
                gains[row] = {
                    client: {col: 100.0 * (rows[row][client][col] - rows[GAIN_BASELINE][client][col]) for col in rows[row][client]}
                    for client in clients + [OVERALL]
                }
    return {
        "columns": [column_name(p, m) for p, m in COLUMNS],
        "clients": clients + [OVERALL],
        "rows": rows,
        "gain_points": gains,
        "num_test": num_test,
    }


def _check_gate(gate: Mapping[str, Any], clients: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The gate records, checked against the table's clients.

    :raises ReportInputError: for a client not in the table, or a record without ``alpha`` /
        ``valid_mrr`` or whose alpha is not among its scored ones.
    """
    unknown = sorted(set(map(str, gate)) - set(clients))
    if unknown:
        raise ReportInputError(f"gate records for client(s) {unknown} not in the table {list(clients)}")
    checked = {}
    for client in _sorted_clients([str(c) for c in gate]):
        record = gate[client]
        if not isinstance(record, Mapping) or "alpha" not in record or not isinstance(record.get("valid_mrr"), Mapping):
            raise ReportInputError(f"gate record of client {client}: expected 'alpha' and a 'valid_mrr' object, got {record!r}")
        if not any(float(alpha) == float(record["alpha"]) for alpha in record["valid_mrr"]):
            raise ReportInputError(f"gate record of client {client}: alpha {record['alpha']} is not among the scored {list(record['valid_mrr'])}")
        checked[client] = dict(record)
    return checked


def _gate_lines(gate: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per client: the chosen skip strength and the valid MRR of every alpha tried."""
    if not gate:
        return []
    first = next(iter(gate.values()))
    lines = ["", f"Skip-strength gate of `refined-gated` (x + alpha (f(x) - x); valid MRR, {first.get('protocol', '?')} protocol, "
                 f"{'relations re-fit per alpha' if first.get('selection') == 'refit' else 'KGE model as trained'}; "
                 "ties to the smaller alpha):", ""]
    for client, record in gate.items():
        scores = ", ".join(f"{alpha}: {float(mrr):.4f}" for alpha, mrr in record["valid_mrr"].items())
        lines.append(f"- client {client}: alpha = {float(record['alpha']):g} (valid MRR {scores})")
    return lines


def _markdown(table: Mapping[str, Any], title: str, notes: Sequence[str], gate: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    columns = table["columns"]
    header = ["client", "row", *columns]
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    lines += [
        "Metrics are filtered and realistic-rank; `standard`: head+tail, all entities, Hits@1/3/10; "
        "`fede`: tail only, candidates = the client's train entities, Hits@1/5/10. "
        "`overall` weights clients by test triples. Gain rows: (variant - unrefined) x 100, in points.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|",
    ]
    for client in table["clients"]:
        label = f"{client} (n={table['num_test'][client]})"
        for row, per_client in table["rows"].items():
            lines.append("| " + " | ".join([label, row, *(f"{per_client[client][c]:.4f}" for c in columns)]) + " |")
        for row, per_client in table["gain_points"].items():
            lines.append("| " + " | ".join([label, f"gain {row} (pts)", *(f"{per_client[client][c]:+.2f}" for c in columns)]) + " |")
    lines += _gate_lines(gate or {})
    return "\n".join(lines) + "\n"


def _csv(table: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["client", "row", "num_test", *table["columns"]])
    for client in table["clients"]:
        for row, per_client in table["rows"].items():
            writer.writerow([client, row, table["num_test"][client], *(repr(per_client[client][c]) for c in table["columns"])])
        for row, per_client in table["gain_points"].items():
            writer.writerow([client, f"gain:{row}:points", table["num_test"][client], *(repr(per_client[client][c]) for c in table["columns"])])
    return buffer.getvalue()


def write_results(
    out_dir: str | Path,
    downstream: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
    *,
    title: str = "Link prediction: FedE vs SimSkip-refined entity embeddings",
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    gate: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` into ``out_dir``.

    :param downstream: see :func:`build_results_table`.
    :param title: the Markdown heading.
    :param notes: bullet lines under the heading (budgets, dataset, config).
    :param extra: more JSON fields (e.g. the configs) stored under ``"run"`` in ``results.json``.
    :param gate: per-client skip-strength gate records (see the module docstring); stored as
        ``results.json``'s ``gate`` and listed under the Markdown table.
    :returns: ``{"json": path, "csv": path, "md": path}``.
    :raises ReportInputError: see :func:`build_results_table`; a gate record of an unknown client.
    """
    out = Path(out_dir)
    table = build_results_table(downstream)
    checked_gate = _check_gate(gate or {}, table["clients"][:-1])
    payload = {**table, "title": title, "notes": list(notes), "run": dict(extra or {})}
    if checked_gate:
        payload["gate"] = checked_gate
    paths = {"json": out / RESULTS_JSON, "csv": out / RESULTS_CSV, "md": out / RESULTS_MD}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, sort_keys=False) + "\n")
    atomic_write_text(paths["csv"], _csv(table))
    atomic_write_text(paths["md"], _markdown(table, title, notes, checked_gate))
    return paths


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
    if table is not None and table.get("rows"):
        rows = list(table["rows"])
        clients = list(table["clients"])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        width = 0.8 / len(rows)
        for ax, protocol in zip(axes, ("standard", "fede"), strict=True):
            for index, row in enumerate(rows):
                xs = [i + index * width for i in range(len(clients))]
                ax.bar(xs, [table["rows"][row][c][f"{protocol}.mrr"] for c in clients], width, label=row)
            ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(clients))], clients)
            ax.set(xlabel="client", ylabel="test MRR", title=f"{protocol} protocol")
        axes[0].legend(fontsize="small")
        _save_figure(fig, out / "refined_vs_unrefined.png")
        plt.close(fig)
        written["refined_vs_unrefined"] = out / "refined_vs_unrefined.png"
    return written


def write_report(run_dir: str | Path, *, title: str | None = None, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Build the whole report of a run folder from its files.

    Reads ``downstream.json`` (``{"rows": {row: {client: {protocol: metrics}}}, "gate": {...}, ...}``;
    ``gate`` becomes ``results.json``'s ``gate``, any other top-level keys are copied to its
    ``run``), ``metrics.jsonl`` and
    ``simskip_metrics.jsonl``; writes the tables and the plots.

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
    if not isinstance(downstream, dict) or not isinstance(downstream.get("rows"), dict):
        raise ReportInputError(f"{source}: expected an object with a 'rows' object")
    extra = {k: v for k, v in downstream.items() if k not in ("rows", "gate")}
    gate = downstream.get("gate") or {}
    if not isinstance(gate, dict):
        raise ReportInputError(f"{source}: 'gate' must be an object of per-client records")
    paths = write_results(run_dir, downstream["rows"], title=title or f"Results of {run_dir.name}", notes=notes, extra=extra,
                          gate=gate)
    table = json.loads(paths["json"].read_text(encoding="utf-8"))
    plots = write_plots(
        run_dir,
        kge_rows=load_jsonl(run_dir / KGE_METRICS_FILE),
        simskip_rows=load_jsonl(run_dir / SIMSKIP_METRICS_FILE),
        table=table,
    )
    return {**paths, **plots}
