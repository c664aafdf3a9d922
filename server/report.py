"""Results of a run: the refined-vs-unrefined table per downstream protocol as files (Markdown, CSV, JSON), and plots.

Input is plain data, so the table can be built from a live run or from a finished run folder:
``clients`` (``{client: record}``) and ``ranks`` (``{client: {rr_key: per-triple reciprocal ranks}}``),
tabulated by :func:`server.results_table.build_results_table` (what the table holds: see there).

Files written into the run folder (atomically): ``results.json``, ``results.csv``,
``results.md`` and, where their data exist, the plots of :func:`server.report_plots.write_plots`
(``valid_mrr.png``, ``simskip_loss.png``, ``refined_vs_unrefined.png``). :func:`write_report` does all
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

from client.kge.protocols import EVAL_PROTOCOLS
from client.kge.run_folder import JsonlFormatError, atomic_write_bytes, atomic_write_text, read_jsonl
from server.records import dp_text
from server.report_plots import PLOT_FILES, write_plots
from server.results_table import COLUMNS, GAIN_BASELINE, OVERALL, ReportInputError, build_results_table

# the table's and the plots' names too: callers import the whole report from here
__all__ = [
    "COLUMNS",
    "DOWNSTREAM_FILE",
    "GAIN_BASELINE",
    "OVERALL",
    "PLOT_FILES",
    "RANKS_FILE",
    "SIMSKIP_METRICS_FILE",
    "ReportInputError",
    "build_results_table",
    "console_summary",
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
        (
            "Metrics are filtered and realistic-rank; `standard`: head+tail, all entities, Hits@1/3/10; "
            "`fede`: tail only, candidates = the client's train entities, Hits@1/5/10. `overall` weights clients by "
            "test triples. Cells: mean ± std over seeds. Gain rows: (row - unrefined) x 100, in points. "
            "Intervals: 95 % paired bootstrap over test triples of the MRR gain (points). A refined gain is "
            "significant (**gain**) only when it beats both `unrefined` and `perturbed` with intervals above 0."
        ),
        "",
    ]
    for label, entry in table["protocols"].items():
        lines += [f"## Downstream protocol `{label}` (seeds {entry['seeds']})", ""]
        lines += [f"- NOTE: {note}" for note in entry["notes"]]
        lines += [
            "| client | row | " + " | ".join(columns) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|",
        ]
        for client in table["clients"]:
            name = f"{client} (n={table['num_test'][client]})"
            for row, per in entry["rows"].items():
                lines.append(f"| {name} | {row} | " + " | ".join(_fmt(per[client][c]) for c in columns) + " |")
            for row, per in entry["gain_points"].items():
                lines.append(
                    f"| {name} | gain {row} (pts) | "
                    + " | ".join(_fmt(per[client][c], True, 2) for c in columns)
                    + " |"
                )
        lines += [
            "",
            "| client | comparison (MRR points) | standard: mean [95 % CI] | fede: mean [95 % CI] | verdict (standard / fede) |",
            "|---|---|---:|---:|---|",
        ]
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
        lines += [
            "",
            (
                "Displacement of the refined rows, mean ||f(x) - x|| / ||x|| (perturbed: the same by construction); "
                "the refined setting chosen on valid:"
            ),
            "",
        ]
        for client in table["clients"][:-1]:
            moved = _fmt(entry["displacement"]["refined"][client]) if "refined" in entry["displacement"] else "-"
            chosen = entry["selection"].get(client, {}).get("chosen", {})
            prefers = entry["selection"].get(client, {}).get("valid_prefers_unrefined")
            lines.append(
                f"- client {client}: displacement {moved}; chosen setting {chosen.get('setting')} "
                f"{chosen.get('overrides') or '(the config)'}, alpha {chosen.get('alpha')}"
                + ("; on valid the unrefined rows score at least as well" if prefers else "")
            )
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
                        writer.writerow(
                            [
                                label,
                                client,
                                f"{kind}{row}",
                                table["num_test"][client],
                                statistic,
                                *(repr(per[client][c][statistic]) for c in table["columns"]),
                            ]
                        )
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
    np.savez_compressed(
        buffer,
        **{
            f"{client}|{key}": np.asarray(values, dtype=np.float64)
            for client, per in ranks.items()
            for key, values in per.items()
        },
    )
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


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (:func:`client.kge.run_folder.read_jsonl`; ``[]`` when missing).

    :raises ReportInputError: naming the file and line of a malformed row.
    """
    try:
        return read_jsonl(path)
    except JsonlFormatError as error:
        raise ReportInputError(str(error)) from None


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
    paths = write_results(
        run_dir,
        downstream["clients"],
        load_ranks(run_dir / RANKS_FILE),
        title=title or f"Results of {run_dir.name}",
        notes=notes,
        extra=extra,
    )
    table = json.loads(paths["json"].read_text(encoding="utf-8"))
    plots = write_plots(
        run_dir,
        kge_rows=load_jsonl(run_dir / KGE_METRICS_FILE),
        simskip_rows=load_jsonl(run_dir / SIMSKIP_METRICS_FILE),
        table=table,
    )
    return {**paths, **plots}


#: How the console summary explains a verdict (:func:`client.kge.significance.significant_gain`).
VERDICT_LEGEND = (
    "gain: interval above 0 against the unrefined rows and against a random move of the same size; "
    "loss: below 0; none: neither"
)


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_simskip_dp(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The ``dp`` of the last row of ``simskip_metrics.jsonl`` (each party's epsilon and releases after the
    SimSkip phase), sorted by party; empty when there is none or the file is unreadable."""
    try:
        rows = (run_dir / SIMSKIP_METRICS_FILE).read_text(encoding="utf-8").splitlines()
        dp = json.loads(rows[-1]).get("dp") if rows else None
    except (OSError, ValueError, AttributeError):
        return []
    return sorted(dp.items()) if isinstance(dp, dict) else []


def _epsilon_text(epsilon: Any) -> str:
    """An epsilon as the console shows it: ``inf`` for ``null`` / infinity (z = 0, no privacy)."""
    return "inf" if epsilon is None or epsilon == float("inf") else f"{float(epsilon):.4g}"


def console_summary(run_dir: str | Path) -> str:
    """The few lines a command prints at the end of a run: what the run found, and where to read more.

    FedE's test MRR (best round, valid MRR), then per downstream protocol the refined-minus-unrefined
    test MRR gain over all clients with its 95 % interval and verdict, for both evaluation protocols,
    then the paths of ``results.md`` and the plots. Read from ``final_metrics.json`` and
    ``results.json``; a file that is missing or unreadable is said so in a line, never raised.

    :param run_dir: a run folder (``simskip-sim`` / ``simskip-server`` / ``--refine-only``).
    :returns: the lines, each ending in a newline.
    """
    run_dir = Path(run_dir)
    lines = [f"Summary of {run_dir}"]
    final = _json_or_none(run_dir / "final_metrics.json")
    if isinstance(final, dict) and isinstance(final.get("test_overall"), dict):
        valid = (final.get("best_valid_overall") or {}).get("mrr")
        lines.append(
            f"  FedE ({final.get('setting', '?')}, {len(final.get('clients', []))} clients): test MRR "
            f"{final['test_overall']['mrr']:.4f} at best round {final.get('best_round')} of {final.get('rounds_run')}"
            + (f" (valid MRR {valid:.4f})" if isinstance(valid, (int, float)) else "")
        )
    else:
        lines.append(f"  FedE: no readable {run_dir / 'final_metrics.json'}")
    if isinstance(final, dict) and isinstance(final.get("dp"), dict):
        lines.append(f"  DP (dp = local, the uploaded rows only): {dp_text(final['dp'])}")
    if isinstance(final, dict) and final.get("secagg_clipped"):
        lines.append(
            f"  WARNING: secure aggregation clipped {final['secagg_clipped']} uploaded values to +-secagg-clipping-range "
            "over the run (their means are biased: raise the range)"
        )
    simskip_dp = _last_simskip_dp(run_dir)
    if simskip_dp:  # a federated SimSkip phase under dp = local: the same accountants, its releases added
        lines.append(
            "  DP after the SimSkip phase (rows and encoder weights): "
            + ", ".join(
                f"party {n}: epsilon {_epsilon_text(v.get('epsilon'))} after {v['releases']} releases"
                for n, v in simskip_dp
            )
        )
    table = _json_or_none(run_dir / RESULTS_JSON)
    if not (isinstance(table, dict) and isinstance(table.get("protocols"), dict)):
        lines.append("  SimSkip: no results.json (no SimSkip phase in this run)")
        return "\n".join(lines) + "\n"
    lines.append("  SimSkip refined - unrefined, test MRR points over all clients [95 % interval]:")
    rows = [("downstream protocol", *EVAL_PROTOCOLS, "verdict (" + " / ".join(EVAL_PROTOCOLS) + ")")]
    comparison = f"refined-{GAIN_BASELINE}"
    for label, entry in table["protocols"].items():
        cell = entry.get("intervals", {}).get(OVERALL, {})
        gains = []
        for protocol in EVAL_PROTOCOLS:
            iv = cell.get(f"{protocol}.mrr:{comparison}")
            gains.append(f"{iv['mean']:+.2f} [{iv['lo']:+.2f}, {iv['hi']:+.2f}]" if iv else "-")
        verdict = entry.get("verdict", {}).get(OVERALL, {})
        rows.append((label, *gains, " / ".join(str(verdict.get(f"{p}.mrr", "-")) for p in EVAL_PROTOCOLS)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"    ({VERDICT_LEGEND})")
    lines.append(f"  results: {run_dir / RESULTS_MD}")
    plots = [str(run_dir / name) for name in PLOT_FILES if (run_dir / name).is_file()]
    if plots:
        lines.append("  plots:   " + "\n           ".join(plots))
    return "\n".join(lines) + "\n"
