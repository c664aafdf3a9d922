#!/usr/bin/env python
"""``results/baselines/summary.json`` from the committed baseline run folders, and the baselines page's tables.

Reads (whatever is present; a missing file or folder is an empty entry, never an error):

- ``<root>/central/<model>[-<variant>]/final_metrics.json`` (and a ``run.json`` beside it, if any): the
  centralized FB15k-237 run of each model (a variant: another recipe of it, its own row) (``scripts/run_central.py``: ``data``, ``test`` with the standard protocol's metrics,
  ``preset``, ``wall_seconds_all_attempts`` or ``wall_seconds``, ``peak_rss_mib``, ``rounds_trained``,
  ``best_round``, ``stop_reason``, ``command``);
- ``<root>/<split>/<model>[-<variant>]/<setting>/seed<k>/final_metrics.json`` + ``run.json``
  (``scripts/run_baselines.py``, ``--variant``): one federated-split run; a folder whose ``run.json`` is not ``done`` is left out.

Writes ``<root>/summary.json`` (sorted keys, no timestamps: the same runs give the same bytes):

- ``models.<model>.central``: ``test`` (standard protocol: ``mrr``, ``hits@1``, ``hits@3``, ``hits@10``),
  ``dataset``, ``test_triples`` and ``candidates`` (its ``data``), ``preset``, ``wall_seconds`` (every
  attempt's), ``peak_rss_mb`` (MiB), ``rounds_trained``, ``best_round``, ``stop_reason``,
  ``command`` (``null`` where the run does not record one), or ``null`` when no central run is committed;
- ``models.<model>.splits.<split>.<setting>``: ``seeds`` (per KGE seed: ``test_standard_mrr``,
  ``test_fede_mrr``, ``rounds_trained``, ``rounds_budget``, ``best_round``, ``stop_reason``,
  ``party_best_rounds`` under per-party stopping, ``preset``, ``wall_seconds``, ``peak_rss_mb``), ``n``,
  ``mean`` and ``std`` (sample std, ddof 1; ``null`` below 2 seeds) of the test MRRs, rounds trained and
  best rounds, ``presets`` and ``stop_reasons`` (the distinct values over seeds);
- ``commands``: every distinct command recorded by the runs.

The stop reason is the run's record (``stop_reason``, or ``stopping.ended_by``), else derived: ``patience``
when it trained fewer rounds than its budget, ``round budget`` otherwise.

    python scripts/baselines_summary.py           # write summary.json (atomically)
    python scripts/baselines_summary.py --check   # exit 1 when summary.json is stale (tests/test_baselines_summary.py)

``scripts/gen_docs.py`` renders ``docs/results/baselines.md``'s tables with :func:`central_table`,
:func:`federated_table` and :func:`commands_block`.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "results" / "baselines"
GRID = ROOT / "results" / "grid"
SUMMARY_FILE = "summary.json"
CENTRAL_DIR = "central"
SETTINGS = ("isolation", "fede", "collection")
#: Splits in the order of the grid's tables (``scripts/grid_table.py``); others after them, by name.
SPLITS = ("FB15k-237-Fed3", "FB15k-237-Fed5", "FB15k-237-Fed10", "FB15k-237-R10-FedLU")
#: The paper's four models in FedE's order (``client.kge.config.PAPER_MODELS``; not imported: that
#: module loads torch, this script reads JSON).
MODELS = ("TransE", "RotatE", "DistMult", "ComplEx")
#: Per-seed values averaged over seeds.
STAT_KEYS = ("test_standard_mrr", "test_fede_mrr", "rounds_trained", "best_round")
CENTRAL_METRICS = ("mrr", "hits@1", "hits@3", "hits@10")
#: LibKGE's published centralized FB15k-237 test MRRs (filtered, both directions).
PUBLISHED_MRR = {"TransE": 0.313, "RotatE": 0.333, "DistMult": 0.343, "ComplEx": 0.348}
PUBLISHED_SOURCE = "https://github.com/uma-pi1/kge#results-and-pretrained-models"
NO_RUNS = "no runs committed yet"
DASH = "–"
DIGITS = 6


class SummaryError(ValueError):
    """A committed run file is not readable JSON (the file is named)."""


# ----------------------------------------------------------------------------- reading runs
def _json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, ``None`` when the file is absent.

    :raises SummaryError: naming the file when it is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SummaryError(f"{path}: {error}") from error
    if not isinstance(data, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _round(value: Any) -> Any:
    return round(float(value), DIGITS) if isinstance(value, float) else value


def stop_reason(final: Mapping[str, Any]) -> str | None:
    """Why a run stopped: its recorded ``stop_reason`` or ``stopping.ended_by``, else ``patience`` when
    it trained fewer rounds than its budget and ``round budget`` otherwise; ``None`` when ``final``
    records neither count."""
    recorded = final.get("stop_reason") or (final.get("stopping") or {}).get("ended_by")
    if recorded:
        return str(recorded)
    trained = final.get("rounds_trained", final.get("rounds_run"))
    budget = final.get("rounds_budget")
    if trained is None or budget is None:
        return None
    return "patience" if int(trained) < int(budget) else "round budget"


def protocol_test(final: Mapping[str, Any], protocol: str) -> dict[str, Any] | None:
    """A run's overall test metrics under ``protocol`` (``standard`` / ``fede``), or ``None``.

    Read from ``test_protocols.<protocol>.overall`` (``scripts/run_baselines.py``), ``test.<protocol>``
    (a test keyed by protocol), or, for the run's own ``eval_protocol`` (``config.eval-protocol``,
    default ``standard``), ``test_overall`` (the Flower run folder), ``test.overall`` (the in-process
    runners) or ``test`` itself when it holds ``mrr``.
    """
    by_protocol = (final.get("test_protocols") or {}).get(protocol)
    if isinstance(by_protocol, Mapping) and "overall" in by_protocol:
        return dict(by_protocol["overall"])
    test = final.get("test")
    if isinstance(test, Mapping) and isinstance(test.get(protocol), Mapping) and "mrr" in test[protocol]:
        return dict(test[protocol])
    own = final.get("eval_protocol") or (final.get("config") or {}).get("eval-protocol") or "standard"
    if own != protocol:
        return None
    for candidate in (final.get("test_overall"), (test or {}).get("overall") if isinstance(test, Mapping) else None):
        if isinstance(candidate, Mapping) and "mrr" in candidate:
            return dict(candidate)
    if isinstance(test, Mapping) and "mrr" in test:
        return dict(test)
    return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def central_record(folder: Path) -> dict[str, Any] | None:
    """The ``central`` entry of one model, with its ``model`` (``config.model``; ``None`` when not recorded),
    or ``None`` without a ``final_metrics.json``."""
    final = _json(folder / "final_metrics.json")
    if final is None:
        return None
    run = _json(folder / "run.json") or {}
    test = protocol_test(final, "standard") or {}
    return {
        "model": (final.get("config") or {}).get("model"),  # the folder's name where the run does not say
        "dataset": (final.get("data") or {}).get("name"),
        "test_triples": (final.get("data") or {}).get("test"),
        "candidates": (final.get("data") or {}).get("entities"),
        "test": {metric: _round(test.get(metric)) for metric in CENTRAL_METRICS},
        "preset": _first(final.get("preset"), run.get("preset")),
        "wall_seconds": _round(
            _first(
                final.get("wall_seconds_all_attempts"),
                final.get("wall_seconds"),
                run.get("wall_seconds"),
                (final.get("timing") or {}).get("seconds"),
            )
        ),
        "peak_rss_mb": _round(
            _first(*(source.get(key) for source in (final, run) for key in ("peak_rss_mb", "peak_rss_mib", "peak_rss")))
        ),
        "rounds_trained": final.get("rounds_trained", final.get("rounds_run")),
        "best_round": final.get("best_round"),
        "stop_reason": stop_reason(final),
        "command": _first(final.get("command"), run.get("command")),
    }


def central_row(model: str | None, folder: str) -> str:
    """The row of a central run: its model (``DistMult`` from folder ``distmult``), with the folder's variant
    (``DistMult-reciprocal`` from ``distmult-reciprocal``: another recipe, its own row, as
    ``scripts/run_baselines.py --variant`` names its folders); the folder's name where the run names no model."""
    if model is None:
        return folder
    if folder.lower() == model.lower():
        return model
    variant = folder[len(model) + 1 :] if folder.lower().startswith(model.lower() + "-") else folder
    return f"{model}-{variant}"


def base_model(row: str) -> str:
    """The model of a table row (``DistMult`` for ``DistMult-reciprocal``): LibKGE's number and the order."""
    return row.split("-", 1)[0]


def _row_order(row: str) -> tuple[int, str, str]:
    return (*_order(base_model(row), MODELS), row)


def seed_record(folder: Path) -> dict[str, Any] | None:
    """One federated-split run's entry (``None`` when it has no ``final_metrics.json`` or its
    ``run.json`` is not ``done``)."""
    final = _json(folder / "final_metrics.json")
    run = _json(folder / "run.json")
    if final is None or (run is not None and run.get("status") != "done"):
        return None
    run = run or {}
    record = {
        "test_standard_mrr": _round((protocol_test(final, "standard") or {}).get("mrr")),
        "test_fede_mrr": _round((protocol_test(final, "fede") or {}).get("mrr")),
        "rounds_trained": final.get("rounds_trained", final.get("rounds_run")),
        "rounds_budget": final.get("rounds_budget", run.get("rounds_budget")),
        "best_round": final.get("best_round"),
        "stop_reason": stop_reason(final),
        "preset": run.get("preset"),
        "wall_seconds": _round(run.get("wall_seconds")),
        "peak_rss_mb": _round(run.get("peak_rss_mb")),
    }
    parties = (final.get("stopping") or {}).get("parties")
    if isinstance(parties, Mapping):
        record["party_best_rounds"] = {name: party.get("best_round") for name, party in parties.items()}
    return record


def aggregate(seeds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``n``, ``mean`` and ``std`` (ddof 1, ``None`` below 2 seeds) of :data:`STAT_KEYS` over the seeds
    that record each, and the distinct ``presets`` and ``stop_reasons``."""
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in STAT_KEYS:
        values = [float(record[key]) for record in seeds.values() if record.get(key) is not None]
        mean[key] = _round(statistics.fmean(values)) if values else None
        std[key] = _round(statistics.stdev(values)) if len(values) >= 2 else None
    return {
        "seeds": {name: dict(record) for name, record in seeds.items()},
        "n": len(seeds),
        "mean": mean,
        "std": std,
        "presets": sorted({str(r["preset"]) for r in seeds.values() if r.get("preset") is not None}),
        "stop_reasons": sorted({str(r["stop_reason"]) for r in seeds.values() if r.get("stop_reason") is not None}),
    }


def _seed_of(folder: Path) -> str | None:
    """``"3"`` for a folder named ``seed3``, else ``None``."""
    suffix = folder.name.removeprefix("seed")
    return suffix if folder.name.startswith("seed") and suffix.isdigit() else None


def build_summary(root: Path = BASELINES) -> dict[str, Any]:
    """The content of ``summary.json`` for the runs under ``root`` (empty tables when there are none)."""
    models: dict[str, dict[str, Any]] = {}
    commands: set[str] = set()
    root = Path(root)
    central_root = root / CENTRAL_DIR
    if central_root.is_dir():
        for folder in sorted(p for p in central_root.iterdir() if p.is_dir()):
            record = central_record(folder)
            if record is not None:
                model = central_row(record.pop("model"), folder.name)
                models.setdefault(model, {"central": None, "splits": {}})["central"] = record
                if record["command"]:
                    commands.add(str(record["command"]))
    runs: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    if root.is_dir():
        for folder in sorted(root.glob("*/*/*/seed*")):
            split = folder.parents[2].name
            seed = _seed_of(folder)
            if split == CENTRAL_DIR or seed is None or not folder.is_dir():
                continue
            record = seed_record(folder)
            if record is None:
                continue
            key = (split, folder.parents[1].name, folder.parent.name)
            runs.setdefault(key, {})[seed] = record
            command = (_json(folder / "run.json") or {}).get("command")
            if command:
                commands.add(str(command))
    for (split, model, setting), seeds in runs.items():
        entry = models.setdefault(model, {"central": None, "splits": {}})
        entry["splits"].setdefault(split, {})[setting] = aggregate(seeds)
    return {
        "about": "generated by scripts/baselines_summary.py from the run folders beside it; do not edit",
        "models": models,
        "commands": sorted(commands),
    }


def render(summary: Mapping[str, Any]) -> str:
    """``summary.json``'s text: indented JSON with sorted keys and a final newline."""
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------- the page's tables
#: Table 1's columns (``r``: right-aligned).
CENTRAL_HEADER = (
    ("model", "l"),
    ("data (test triples, candidates)", "l"),
    ("LibKGE test MRR", "r"),
    ("test MRR", "r"),
    ("difference (points)", "r"),
    ("H@1", "r"),
    ("H@3", "r"),
    ("H@10", "r"),
    ("preset", "l"),
    ("rounds (best)", "r"),
    ("stop", "l"),
    ("wall time (h)", "r"),
    ("peak memory (GiB)", "r"),
)
#: Table 2's columns.
FEDERATED_HEADER = (
    ("split", "l"),
    ("model", "l"),
    ("setting", "l"),
    ("seeds", "r"),
    ("standard MRR", "r"),
    ("FedE-protocol MRR", "r"),
    ("stopped: seed: rounds (best, why)", "l"),
    ("old grid: standard MRR", "r"),
    ("old grid: FedE-protocol MRR", "r"),
    ("old grid: rounds (best)", "r"),
)


def _header(columns: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table's header and rule lines."""
    return [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "|".join("---:" if align == "r" else "---" for _, align in columns) + "|",
    ]


def _order(value: str, known: Sequence[str]) -> tuple[int, str]:
    return (known.index(value), "") if value in known else (len(known), value)


def _points(value: Any, digits: int = 1) -> str:
    return DASH if value is None else f"{100 * float(value):.{digits}f}"


def _mean_std(entry: Mapping[str, Any], key: str) -> str:
    mean, std = entry["mean"].get(key), entry["std"].get(key)
    if mean is None:
        return DASH
    return _points(mean) + ("" if std is None else f" ± {_points(std)}")


def _hours(seconds: Any) -> str:
    return DASH if seconds is None else f"{float(seconds) / 3600:.2f}"


def _gib(mib: Any) -> str:
    return DASH if mib is None else f"{float(mib) / 1024:.1f}"


def central_table(summary: Mapping[str, Any]) -> str:
    """Table 1: per model, the centralized FB15k-237 test metrics (x100) beside LibKGE's test MRR."""
    models = summary.get("models", {})
    names = sorted(set(PUBLISHED_MRR) | set(models), key=_row_order)
    lines = []
    if not any((models.get(m) or {}).get("central") for m in names):
        lines += [f"_Centralized runs (`results/baselines/{CENTRAL_DIR}/`): {NO_RUNS}._", ""]
    lines += _header(CENTRAL_HEADER)
    for model in names:
        central = (models.get(model) or {}).get("central") or {}
        test = central.get("test") or {}
        published = PUBLISHED_MRR.get(base_model(model))
        ours = test.get("mrr")
        difference = DASH if ours is None or published is None else f"{100 * (ours - published):+.1f}"
        rounds = central.get("rounds_trained")
        best = central.get("best_round")
        data = central.get("dataset")
        counts = ", ".join(str(central[k]) for k in ("test_triples", "candidates") if central.get(k) is not None)
        values = [
            model,
            DASH if data is None else f"{data}" + (f" ({counts})" if counts else ""),
            _points(published),
            _points(ours),
            difference,
            *(_points(test.get(m)) for m in CENTRAL_METRICS[1:]),
            f"`{central['preset']}`" if central.get("preset") else DASH,
            DASH if rounds is None else f"{rounds} ({DASH if best is None else best})",
            central.get("stop_reason") or DASH,
            _hours(central.get("wall_seconds")),
            _gib(central.get("peak_rss_mb")),
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


@functools.cache
def _grid_table() -> ModuleType:
    """``scripts/grid_table.py`` as a module (``scripts/`` is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location("grid_table", Path(__file__).resolve().parent / "grid_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_grid_numbers(grid_dir: Path = GRID) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The old grid's fixed-default bases: per ``(split, model, setting)`` the overall test MRRs of the
    KGE model as trained (protocol ``as-trained``, row ``unrefined``; FedE's from its SimSkip cell) and
    its KGE rounds run and best round, from ``scripts/grid_table.py``'s reading of ``grid_dir``."""
    gt = _grid_table()
    done = {key: entry for key, entry in gt.load_cells(grid_dir).items() if gt._done(entry)}
    numbers: dict[tuple[str, str, str], dict[str, Any]] = {}
    for split, model in sorted({key[:2] for key in done}):
        for setting, variants in (
            ("fede", ("simskip", "structure")),
            ("isolation", ("isolation",)),
            ("collection", ("collection",)),
        ):
            entry = next((done[(split, model, v)] for v in variants if (split, model, v) in done), None)
            if entry is None:
                continue
            rows = entry["results"]["protocols"].get("as-trained", {}).get("rows", {}).get("unrefined", {})
            overall = rows.get("overall", {})
            numbers[(split, model, setting)] = {
                "standard": (overall.get("standard.mrr") or {}).get("mean"),
                "fede": (overall.get("fede.mrr") or {}).get("mean"),
                "rounds_run": entry["cell"].get("kge_rounds_run"),
                "best_round": entry["cell"].get("kge_best_round"),
            }
    return numbers


def _stops(entry: Mapping[str, Any]) -> str:
    """Per seed: ``seed: rounds trained (best round, stop reason)``."""
    parts = []
    for seed in sorted(entry["seeds"], key=int):
        record = entry["seeds"][seed]
        parts.append(
            f"{seed}: {_first(record.get('rounds_trained'), DASH)} ({_first(record.get('best_round'), DASH)}, "
            f"{record.get('stop_reason') or DASH})"
        )
    return "; ".join(parts)


def federated_table(summary: Mapping[str, Any], old: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> str:
    """Table 2: per split, model and setting, the new runs' test MRRs (x100, mean ± std over seeds, both
    protocols), seeds, and where each stopped, beside the old grid's fixed-default bases."""
    new: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for model, entry in summary.get("models", {}).items():
        for split, settings in entry.get("splits", {}).items():
            for setting, aggregated in settings.items():
                new[(split, model, setting)] = aggregated
    keys = sorted(
        set(new) | set(old),
        key=lambda k: (_order(k[0], SPLITS), _row_order(k[1]), _order(k[2], SETTINGS)),
    )
    lines = []
    if not new:
        lines += [
            f"_Federated runs (`results/baselines/<split>/`): {NO_RUNS}; the columns of the new runs are empty ({DASH})._",
            "",
        ]
    lines += _header(FEDERATED_HEADER)
    for key in keys:
        entry, base = new.get(key), old.get(key) or {}
        rounds = base.get("rounds_run")
        values = [
            *key,
            str(entry["n"]) if entry else DASH,
            _mean_std(entry, "test_standard_mrr") if entry else DASH,
            _mean_std(entry, "test_fede_mrr") if entry else DASH,
            _stops(entry) if entry else DASH,
            _points(base.get("standard")),
            _points(base.get("fede")),
            DASH if rounds is None else f"{rounds} ({_first(base.get('best_round'), DASH)})",
        ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def commands_block(summary: Mapping[str, Any]) -> str:
    """The commands the committed runs record, one shell block (or :data:`NO_RUNS`)."""
    commands = summary.get("commands") or []
    if not commands:
        return f"_{NO_RUNS.capitalize()}._"
    return "\n".join(["```bash", *commands, "```"])


# ----------------------------------------------------------------------------- the command
def check(root: Path, path: Path) -> list[str]:
    """The diff between ``path`` and the summary of ``root`` (``[]``: up to date; a missing file is up
    to date only while there is nothing to summarize)."""
    summary = build_summary(root)
    expected = render(summary)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not summary["models"]:
            return []
        current = ""
    if current == expected:
        return []
    diff = difflib.unified_diff(
        current.splitlines(), expected.splitlines(), f"{path} (committed)", "generated", lineterm=""
    )
    return list(diff) or [f"{path}: differs only in line endings"]


def _write(path: Path, text: str) -> None:
    """Atomic write with the project's rule (loaded here: it is the only heavy import)."""
    from client.kge.run_folder import atomic_write_text

    atomic_write_text(path, text)


def main(argv: Iterable[str] | None = None) -> int:
    """Write ``summary.json``, or with ``--check`` exit 1 when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=BASELINES, help="the baselines folder (default results/baselines)")
    parser.add_argument("--out", type=Path, default=None, help="the summary file (default <root>/summary.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 (printing a diff) when the summary is stale")
    args = parser.parse_args(None if argv is None else list(argv))
    path = args.out or args.root / SUMMARY_FILE
    try:
        if args.check:
            diff = check(args.root, path)
            if diff:
                print("\n".join(diff[:80]), file=sys.stderr)
                print(f"baselines_summary: {path} is stale; run `python scripts/baselines_summary.py`", file=sys.stderr)
                return 1
            print(f"baselines_summary: {path} up to date")
            return 0
        text = render(build_summary(args.root))
    except SummaryError as error:
        print(f"baselines_summary: {error}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, text)
    print(f"baselines_summary: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
