#!/usr/bin/env python
"""The paper's table of the experiment grid (FB15k-237, FedE +- SimSkip), built from committed JSON.

Reads ``results/grid/<split>/<model>/`` as written by ``scripts/run_experiments.py``: the main cell
(``cell.json`` + ``results.json``: FedE, SimSkip with its default views) and the sub-cells
``structure/``, ``isolation/`` and ``collection/``. Every number comes from a cell's ``results.json``
(the evaluator's report); ``cell.json`` gives the status, the variant and the wall time. Cells that
are absent or not ``done`` are listed as not run, never filled in.

Two generated blocks: the at-a-glance table in ``README.md`` (between the ``grid-summary`` markers) and
every table in ``docs/results/grid.md`` (between the ``grid-table`` markers).

    python scripts/grid_table.py            # print the markdown of every table
    python scripts/grid_table.py --write    # replace both blocks (written atomically)
    python scripts/grid_table.py --check    # exit 1 when a block is stale (CI; scripts/gen_docs.py --check too)
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from client.kge.config import PAPER_MODELS

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- grid-table:start -->", "<!-- grid-table:end -->"
SUMMARY_START, SUMMARY_END = "<!-- grid-summary:start -->", "<!-- grid-summary:end -->"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "results" / "grid.md"
SPLITS = ("FB15k-237-Fed3", "FB15k-237-Fed5", "FB15k-237-Fed10", "FB15k-237-R10-FedLU")
MODELS = PAPER_MODELS
VARIANTS = ("simskip", "structure", "isolation", "collection")
BASELINE_SPLITS = ("FB15k-237-Fed3",)  # isolation and collection run on this split only
METRICS = tuple(f"standard.{m}" for m in ("mrr", "hits@1", "hits@3", "hits@10")) + tuple(
    f"fede.{m}" for m in ("mrr", "hits@1", "hits@5", "hits@10")
)
MAIN_HEADER = (
    "| split | model | method | standard MRR | standard H@1 | standard H@3 | standard H@10"
    " | FedE MRR | FedE H@1 | FedE H@5 | FedE H@10 |"
)
PROTOCOL_ORDER = ("as-trained", "relation-refit:trained", "relation-refit:fresh", "adapter", "finetune")
DASH = "–"
MAIN_CAPTION = (
    "Protocol `as-trained` (the FedE model's own relations, nothing re-trained), test split, client `overall`"
    " (weighted by test triples). Metrics x100, `mean ± std` over seeds, 1 decimal (isolation and collection:"
    " 1 seed). standard: head and tail prediction, all entities as candidates; FedE: FedE's tail-only protocol."
    " `FedE + SimSkip`: the refined rows chosen on valid; `perturbed`: the unrefined rows moved at random by the"
    " same per-row distance (control). The mark after standard MRR is the evaluator's verdict for the standard"
    " protocol (`standard.mrr`), after FedE MRR the one for the FedE protocol (`fede.mrr`): **gain** when the"
    " 95 % paired-bootstrap intervals of refined - unrefined AND refined - perturbed both lie above 0, loss when"
    " refined - unrefined lies below 0, nothing otherwise."
)
PROTOCOL_CAPTION = (
    "Every downstream protocol: overall MRR gain of the refined rows over the unrefined ones, in points, with the"
    " 95 % paired-bootstrap interval over test triples, and the verdict (standard / FedE protocol)."
)
SUMMARY_RULE = "defined under the next table"
README_SUMMARY_RULE = "the rule: [the verdict](docs/concepts/verdict.md)"
SUMMARY_BELOW = " Intervals and the FedE protocol in the protocol table below."
README_SUMMARY_MORE = " Intervals, the FedE protocol and every other table: [the grid's page](docs/results/grid.md)."
SUMMARY_CAPTION = (
    "At a glance, test split, client `overall`: FedE's standard MRR (x100, as trained, mean over seeds) and, per"
    " downstream protocol, the standard-MRR gain of FedE + SimSkip over FedE in points with the evaluator's"
    f" verdict (**gain**, loss, or no mark for nothing; {SUMMARY_RULE}); `structure`: the"
    " structure-aware view, as trained; a dash where the cell did not run." + SUMMARY_BELOW
)
TIME_CAPTION = (
    "Wall time per cell, as `cell.json` records it: `run_seconds` (the KGE run), `refine_seconds` (SimSkip and"
    " the downstream protocols), the device and the load average; minutes, 1 decimal."
)


def _order(value: str, known: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: the known names in their given order, then any other name alphabetically."""
    return (known.index(value), "") if value in known else (len(known), value)


def _cell_key(key: tuple[str, str, str]) -> tuple:
    """Sort key of a ``(split, model, variant)`` cell."""
    split, model, variant = key
    return _order(split, SPLITS), _order(model, MODELS), _order(variant, VARIANTS)


def load_cells(grid_dir: Path) -> dict[tuple[str, str, str], dict]:
    """Every folder with a ``cell.json`` under ``grid_dir/<split>/<model>/[<sub>/]``.

    :returns: ``{(split, model, variant): {"cell": ..., "results": ... or None}}``; the variant is
        ``cell.json``'s ``variant``, else the sub-folder's name, else ``simskip`` for a ``fede`` cell
        and the setting otherwise.
    """
    cells: dict[tuple[str, str, str], dict] = {}
    grid_dir = Path(grid_dir)
    if not grid_dir.is_dir():
        return cells
    for model_dir in sorted(p for p in grid_dir.glob("*/*") if p.is_dir()):
        for folder in [model_dir, *sorted(p for p in model_dir.iterdir() if p.is_dir())]:
            if not (folder / "cell.json").is_file():
                continue
            cell = json.loads((folder / "cell.json").read_text(encoding="utf-8"))
            setting = cell.get("setting", "fede")
            default = folder.name if folder != model_dir else ("simskip" if setting == "fede" else setting)
            results_file = folder / "results.json"
            results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else None
            key = (model_dir.parent.name, model_dir.name, cell.get("variant") or default)
            cells[key] = {"cell": cell, "results": results}
    return cells


def _done(entry: dict) -> bool:
    """A cell counts once ``cell.json`` says ``done`` and its ``results.json`` exists."""
    return entry["cell"].get("status") == "done" and entry["results"] is not None


def missing_cells(cells: dict) -> str:
    """The ``not run: ...`` line: expected cells (every known split x model; SimSkip and structure
    everywhere, isolation and collection on the baseline split) that are absent or not done."""
    splits = sorted({k[0] for k in cells} | set(SPLITS), key=lambda s: _order(s, SPLITS))
    models = sorted({k[1] for k in cells} | set(MODELS), key=lambda m: _order(m, MODELS))
    parts = []
    for split in splits:
        per_model = []
        for model in models:
            wanted = VARIANTS if split in BASELINE_SPLITS else VARIANTS[:2]
            lacking = []
            for variant in wanted:
                entry = cells.get((split, model, variant))
                if entry is None:
                    lacking.append(variant)
                elif not _done(entry):
                    lacking.append(f"{variant} [{entry['cell'].get('status') or 'no results.json'}]")
            if lacking:
                per_model.append((model, lacking, lacking == list(wanted)))
        if len(per_model) == len(models) and all(full for *_, full in per_model):
            parts.append(f"{split} (all)")
        else:
            parts += [f"{split}/{m} ({'all' if full else ', '.join(v)})" for m, v, full in per_model]
    return "not run: " + ("; ".join(parts) if parts else "none") + "."


def _stat(results: dict, label: str, row: str, metric: str, std: bool = True) -> str:
    """``mean ± std`` x100 (``mean`` alone unless ``std``) of a row's overall metric in one protocol, or a dash."""
    try:
        value = results["protocols"][label]["rows"][row]["overall"][metric]
    except KeyError:
        return DASH
    return f"{100 * value['mean']:.1f}" + (f" ± {100 * (value.get('std') or 0.0):.1f}" if std else "")


def _verdict(results: dict, label: str, metric: str) -> str:
    """The evaluator's verdict (``gain`` / ``loss`` / ``none``) for the overall client."""
    return results["protocols"].get(label, {}).get("verdict", {}).get("overall", {}).get(metric, "none")


def _mark(verdict: str) -> str:
    return {"gain": " **gain**", "loss": " loss"}.get(verdict, "")


def _gain(results: dict, label: str, metric: str, interval: bool = True) -> str:
    """Overall refined - unrefined gain in points, with its 95 % paired-bootstrap interval unless ``interval`` is off."""
    entry = results["protocols"].get(label, {})
    try:
        mean = entry["gain_points"]["refined"]["overall"][metric]["mean"]
    except KeyError:
        return DASH
    bounds = entry.get("intervals", {}).get("overall", {}).get(f"{metric}:refined-unrefined") if interval else None
    return f"{mean:+.2f}" + (f" [{bounds['lo']:+.2f}, {bounds['hi']:+.2f}]" if bounds else "")


def _results(done: dict, split: str, model: str, variant: str) -> dict | None:
    """A finished cell's ``results.json``, or ``None``."""
    entry = done.get((split, model, variant))
    return entry["results"] if entry else None


def _fede_results(done: dict, split: str, model: str) -> dict | None:
    """The report whose ``unrefined`` rows are FedE's: the plain SimSkip cell's, else its structure variant's
    (the same KGE run), else ``None``."""
    return _results(done, split, model, "simskip") or _results(done, split, model, "structure")


def _summary_table(done: dict) -> list[str]:
    """Per model: FedE's standard MRR and the SimSkip gain of each protocol (and of the structure view), one
    column per split: the grid's answer on one screen."""
    splits = sorted({k[0] for k in done}, key=lambda s: _order(s, SPLITS))
    lines = [
        "| model | row | " + " | ".join(s.removeprefix("FB15k-237-") for s in splits) + " |",
        "|---|---|" + "---:|" * len(splits),
    ]
    metric = "standard.mrr"

    def gain(results: dict | None, label: str) -> str:
        text = _gain(results, label, metric, interval=False) if results else DASH
        return text if text == DASH else text + _mark(_verdict(results, label, metric))

    for model in sorted({k[1] for k in done}, key=lambda m: _order(m, MODELS)):
        plain, structure = ({s: _results(done, s, model, v) for s in splits} for v in ("simskip", "structure"))
        base = [_fede_results(done, s, model) for s in splits]
        rows = []
        if any(base):
            rows.append(
                ("FedE (MRR)", [_stat(r, "as-trained", "unrefined", metric, std=False) if r else DASH for r in base])
            )
        labels = {label for r in plain.values() if r for label in r["protocols"]}
        rows += [
            (p, [gain(plain[s], p) for s in splits]) for p in sorted(labels, key=lambda p: _order(p, PROTOCOL_ORDER))
        ]
        if any(structure.values()):
            rows.append(("structure", [gain(structure[s], "as-trained") for s in splits]))
        for i, (row, values) in enumerate(rows):
            lines.append(f"| {model if i == 0 else ''} | {row} | {' | '.join(values)} |")
    return lines


def _main_table(done: dict) -> list[str]:
    """Protocol ``as-trained``, client ``overall``: one row per split x model x method."""
    lines = [MAIN_HEADER, "|---|---|---|" + "---:|" * len(METRICS)]
    for split, model in sorted({k[:2] for k in done}, key=lambda sm: _cell_key((*sm, ""))):
        cell = {v: r for v in VARIANTS if (r := _results(done, split, model, v)) is not None}
        rows = []
        base = _fede_results(done, split, model)
        if base is not None:
            rows.append(("FedE", base, "unrefined", False))
        for variant, suffix in (("simskip", ""), ("structure", "-structure")):
            if variant in cell:
                rows.append((f"FedE + SimSkip{suffix}", cell[variant], "refined", True))
                rows.append(("perturbed" + (" (structure)" if suffix else ""), cell[variant], "perturbed", False))
        rows += [(v, cell[v], "unrefined", False) for v in ("isolation", "collection") if v in cell]
        for i, (method, results, row, marked) in enumerate(rows):
            values = [_stat(results, "as-trained", row, m) for m in METRICS]
            if marked:
                values[0] += _mark(_verdict(results, "as-trained", "standard.mrr"))
                values[4] += _mark(_verdict(results, "as-trained", "fede.mrr"))
            lines.append(f"| {split if i == 0 else ''} | {model if i == 0 else ''} | {method} | {' | '.join(values)} |")
    return lines


def _protocol_table(done: dict) -> list[str]:
    """Per SimSkip cell and downstream protocol: the overall MRR gains with intervals and verdicts."""
    lines = [
        "| split | model | SimSkip | protocol | gain standard MRR [95 %] | gain FedE MRR [95 %] | verdict standard / FedE |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for key in sorted((k for k in done if k[2] in ("simskip", "structure")), key=_cell_key):
        results = done[key]["results"]
        for label in sorted(results["protocols"], key=lambda p: _order(p, PROTOCOL_ORDER)):
            verdicts = [_verdict(results, label, m) for m in ("standard.mrr", "fede.mrr")]
            verdict = " / ".join(f"**{v}**" if v == "gain" else v for v in verdicts)
            gains = f"{_gain(results, label, 'standard.mrr')} | {_gain(results, label, 'fede.mrr')}"
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {label} | {gains} | {verdict} |")
    return lines


def _minutes(seconds) -> str:
    """Seconds as minutes with one decimal, or a dash."""
    return DASH if seconds is None else f"{seconds / 60:.1f}"


def _load(value) -> str:
    """A load average (one number or the 1/5/15-minute triple) with one decimal, or a dash."""
    if value is None:
        return DASH
    values = value if isinstance(value, list | tuple) else [value]
    return " / ".join(f"{float(v):.1f}" for v in values)


def _rounds(cell: dict) -> str:
    """``rounds run (best round)`` of the cell's KGE run, or a dash where the cell did not record them."""
    run, best = cell.get("kge_rounds_run"), cell.get("kge_best_round")
    return DASH if run is None else f"{run} ({DASH if best is None else best})"


def _time_table(done: dict) -> list[str]:
    """Per cell: KGE rounds run (best), ``run_seconds``, ``refine_seconds``, their sum, device, load; a total line."""
    lines = [
        (
            "| split | model | cell | KGE rounds (best) | KGE run (min) | SimSkip + downstream (min) | total (min)"
            " | device | load average |"
        ),
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    sums = [0.0, 0.0]
    for key in sorted(done, key=_cell_key):
        cell = done[key]["cell"]
        run, refine = cell.get("run_seconds"), cell.get("refine_seconds")
        sums[0] += run or 0.0
        sums[1] += refine or 0.0
        total = None if run is None and refine is None else (run or 0.0) + (refine or 0.0)
        times = f"{_minutes(run)} | {_minutes(refine)} | {_minutes(total)}"
        lines.append(
            f"| {' | '.join(key)} | {_rounds(cell)} | {times} | {cell.get('device') or DASH}"
            f" | {_load(cell.get('load_average'))} |"
        )
    times = f"{_minutes(sums[0])} | {_minutes(sums[1])} | {_minutes(sums[0] + sums[1])}"
    lines.append(f"| **total** | | {len(done)} cells | | {times} | | |")
    return lines


def build_table(grid_dir: Path) -> str:
    """The markdown (summary, main table, protocol table, wall time) of the grid under ``grid_dir``."""
    cells = load_cells(grid_dir)
    done = {k: v for k, v in cells.items() if _done(v)}
    if not done:
        return f"No cell of the grid has finished yet.\n\n{missing_cells(cells)}\n"
    out = [SUMMARY_CAPTION, "", *_summary_table(done), "", MAIN_CAPTION, "", *_main_table(done), ""]
    out += [missing_cells(cells), "", PROTOCOL_CAPTION, ""]
    out += [*_protocol_table(done), "", TIME_CAPTION, "", *_time_table(done)]
    return "\n".join(out) + "\n"


def build_summary(grid_dir: Path) -> str:
    """The at-a-glance part only (its caption and table), for the README."""
    cells = load_cells(grid_dir)
    done = {k: v for k, v in cells.items() if _done(v)}
    if not done:
        return f"No cell of the grid has finished yet.\n\n{missing_cells(cells)}\n"
    caption = SUMMARY_CAPTION.removesuffix(SUMMARY_BELOW).replace(SUMMARY_RULE, README_SUMMARY_RULE)
    caption += README_SUMMARY_MORE
    return "\n".join([caption, "", *_summary_table(done)]) + "\n"


def replace_block(text: str, table: str, start: str = START, end: str = END) -> str:
    """``text`` with everything between the markers ``start`` and ``end`` replaced by ``table``.

    :raises ValueError: when a marker is missing, repeated or the end marker comes first.
    """
    for marker in (start, end):
        if text.count(marker) != 1:
            raise ValueError(f"expected exactly one {marker!r} marker, found {text.count(marker)}")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"{end!r} comes before {start!r}")
    return text[:i] + "\n" + table.strip("\n") + "\n" + text[j:]


def rendered(grid_dir: Path = ROOT / "results" / "grid", readme: Path = README, page: Path = PAGE) -> dict:
    """The two files with a generated block: ``{path: (text on disk, text it should have)}``.

    :raises ValueError: naming the file when one of its markers is missing, repeated or out of order.
    """
    out = {}
    for path, table, markers in (
        (readme, build_summary(grid_dir), (SUMMARY_START, SUMMARY_END)),
        (page, build_table(grid_dir), (START, END)),
    ):
        text = Path(path).read_bytes().decode("utf-8")
        try:
            out[Path(path)] = (text, replace_block(text, table, *markers))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the tables, write both blocks, or check them (exit 1 when one is stale)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "results" / "grid", help="default: results/grid")
    parser.add_argument("--readme", type=Path, default=README, help="the at-a-glance block's file (README.md)")
    parser.add_argument("--page", type=Path, default=PAGE, help="every table's file (docs/results/grid.md)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", "--write-readme", action="store_true", help="replace both blocks atomically")
    mode.add_argument("--check", action="store_true", help="exit 1 when a block differs")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(build_table(args.grid))
        return 0
    try:
        pages = rendered(args.grid, args.readme, args.page)
    except ValueError as error:
        print(f"grid_table: {error}", file=sys.stderr)
        return 1
    stale = {path: texts for path, texts in pages.items() if texts[0] != texts[1]}
    if args.check:
        for path, (old, new) in stale.items():
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"{path} (committed)", "from JSON", lineterm=""
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print(
                f"grid_table: {path}'s grid table differs from what {args.grid} gives;"
                " run `python scripts/grid_table.py --write`",
                file=sys.stderr,
            )
        if stale:
            return 1
        print(f"grid_table: {args.readme} and {args.page} are up to date with {args.grid}")
        return 0
    from client.kge.run_folder import atomic_write_text  # the project's one atomic write

    for path, (_, new) in stale.items():
        atomic_write_text(path, new)
    print(f"grid_table: wrote the grid tables into {args.readme} and {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
