#!/usr/bin/env python
"""The refined-vs-unrefined experiment grid, resumable cell by cell, and its paper-style table.

Grid: models x datasets x settings (default {TransE, RotatE, DistMult, ComplEx} x
{../shared/data/FB15k-237-Fed3, ../shared/data/FB15k-237-R10-FedLU} x {isolation, fede,
collection}). Each cell is one run folder ``OUT/<dataset>/<model>/<setting>/``:

1. KGE training (``--engine flower``: ``simskip-sim`` in a subprocess, i.e. the Flower apps in
   simulation; ``--engine in-process``: the Flower-free reference runners of
   :mod:`client.kge.centralized`, same trainer and evaluator, no Ray start-up). The collection
   setting is always trained in-process (it has no federation).
2. SimSkip phase + downstream re-fit + report (:func:`server.downstream.refine_run_folder`),
   unless the run already wrote ``results.json``.
3. ``cell.json``: status, the seconds of each step (``run_seconds``: the KGE run, which with
   ``--engine flower`` includes the refinement phase it runs itself; ``refine_seconds``: step 2
   when it ran separately) and the overall numbers.

A cell whose ``cell.json`` says ``done`` is skipped; a cell with a finished KGE run
(``final_metrics.json``) but no results resumes at step 2. An interrupted cell restarts from
its last finished step; with ``--engine in-process`` (and always for collection) the KGE step
itself resumes after its last finished round (``<cell>/checkpoint/``, removed once the step is
done), and step 2 after its last finished unit (the SimSkip phase as a whole, then each client's
downstream record: ``<cell>/refine_checkpoint/``, removed with the report). At the end (and with
``--assemble-only``) the cells found are assembled into ``OUT/grid.{md,csv,json}``: one line per
cell, overall test metrics of every row (FedE as trained, unrefined, refined, refined-no-skip)
under both protocols, and the gain in points.

Example (one cell, FedE's defaults except the budget)::

    python scripts/run_experiments.py --out runs/grid --models TransE \\
        --datasets ../shared/data/FB15k-237-Fed3 --settings fede --rounds 20 \\
        --set simskip-rounds=10 --set refit-epochs=20
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from client.kge.config import PAPER_MODELS, add_set_option

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = PAPER_MODELS
DEFAULT_DATASETS = ("../shared/data/FB15k-237-Fed3", "../shared/data/FB15k-237-R10-FedLU")
DEFAULT_SETTINGS = ("isolation", "fede", "collection")
CELL_FILE = "cell.json"
#: Overall columns of the assembled table (protocol.metric of server.report).
GRID_COLUMNS = ("standard.mrr", "standard.hits@10", "fede.mrr", "fede.hits@10")


class GridError(RuntimeError):
    """A cell failed (its folder and log are named)."""


def cell_dir(out: Path, dataset: str, model: str, setting: str, variant: str | None = None) -> Path:
    """``OUT/<dataset folder name>/<model>/<setting>[-<variant>]``."""
    return out / Path(dataset).name / model / (f"{setting}-{variant}" if variant else setting)


def export_dir(export: Path, dataset: str, model: str, setting: str, variant: str | None = None) -> Path:
    """Where a finished cell's ``cell.json`` and ``results.json`` are committed: the plain FedE cell at
    ``EXPORT/<split>/<model>/``, any other at ``EXPORT/<split>/<model>/<variant or setting>/``."""
    base = export / Path(dataset).name / model
    if setting == "fede" and not variant:
        return base
    return base / (variant or setting)


#: What ``refine_run_folder`` writes into a run folder besides ``server.report``'s named files: left
#: out when a variant cell reuses the KGE run of the plain cell (everything else is hard-linked;
#: the atomic writes replace files, never modify them in place).
REFINE_OUTPUTS = ("refined", "results.json", "results.md", "results.csv")


def _reuse_kge_run(source: Path, folder: Path) -> bool:
    """Hard-link the finished KGE run ``source`` into the new cell ``folder`` (False if unfinished)."""
    import os

    if not (source / "final_metrics.json").is_file() or (folder / "final_metrics.json").is_file():
        return False
    from server.checkpoint import CHECKPOINT_DIR, REFINE_CHECKPOINT_DIR
    from server.report import DOWNSTREAM_FILE, RANKS_FILE, SIMSKIP_METRICS_FILE

    skip = {*REFINE_OUTPUTS, DOWNSTREAM_FILE, RANKS_FILE, SIMSKIP_METRICS_FILE, CELL_FILE, "cell.log"}
    skip |= {CHECKPOINT_DIR, REFINE_CHECKPOINT_DIR}
    shutil.copytree(
        source,
        folder,
        copy_function=os.link,
        ignore=lambda _dir, names: [n for n in names if n in skip],
        dirs_exist_ok=True,
    )
    return True


def machine_facts() -> dict[str, Any]:
    """The device and load a cell ran under (for the wall times it reports)."""
    import os

    import torch

    device = f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is missing or malformed (an unfinished write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON with sorted keys to ``path``, atomically."""
    from client.kge.run_folder import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- KGE step
def kge_in_process(
    folder: Path, dataset: str, model: str, setting: str, rounds: int, sets: Mapping[str, Any], num_clients: int | None
) -> None:
    """Train with the Flower-free runners and write the run-folder files refine-only reads (``config.json``,
    ``data/``, ``clients/``, the embeddings, ``metrics.jsonl``, and ``final_metrics.json``: the runner's
    result); resumes after the last round of ``folder/checkpoint/``, which the caller removes once done.
    Also the KGE step of ``scripts/run_baselines.py``."""
    from client.kge import centralized
    from client.kge.config import KGEConfig
    from client.kge.refinement import REFINEMENT_KEYS
    from client.kge.run_folder import METRICS_CSV, METRICS_JSONL, RunFolder
    from client.kge.settings import KNOWN_NON_KGE_KEYS
    from kg_datasets import load_federated
    from kg_datasets.triples import labels_in_id_order
    from server.checkpoint import FolderCheckpoint, has_checkpoint

    kg = load_federated(dataset, num_clients=num_clients if not Path(dataset).is_dir() else None)
    run_config = {
        **sets,
        "model": model,
        "setting": setting,
        "num-server-rounds": rounds,
        "num-clients": len(kg.clients),
        "client-data-root": str(folder / "data"),
        "client-output-root": str(folder / "clients"),
    }
    kge_config = KGEConfig.from_run_config(run_config, extra_known_keys=KNOWN_NON_KGE_KEYS | set(REFINEMENT_KEYS))
    dp = in_process_dp(run_config, setting)
    if not (folder / "data").exists():
        kg.write(folder / "data")
    runner = {
        "isolation": centralized.run_isolation,
        "fede": centralized.run_fede_in_process,
        "collection": centralized.run_collection,
    }[setting]
    if not has_checkpoint(folder):  # a fresh start: rows of an earlier attempt describe another run
        for name in (METRICS_JSONL, METRICS_CSV):
            (folder / name).unlink(missing_ok=True)
    run = RunFolder(folder)
    run.write_config(
        {
            "run_config": run_config,
            "kge": kge_config.to_run_config(),
            "dataset": dataset,
            "engine": "in-process",
            "num_entities": kg.num_entities,
        }
    )
    # saved after every round: an interrupted cell resumes after its last finished round
    checkpoint = FolderCheckpoint(folder, run_config, labels_in_id_order(kg.entity_to_id))
    extra = {"dp": dp} if dp is not None else {}  # only fede honours dp (in_process_dp refuses it elsewhere)
    result = runner(
        kg,
        kge_config,
        rounds,
        out_dir=folder,
        progress=lambda line: print(line, flush=True),
        checkpoint=checkpoint,
        **extra,
    )
    written = {row.get("round") for row in run.metrics_rows}  # rows an attempt killed after the runner wrote
    for entry in result["history"]:
        if entry["round"] in written:
            continue
        row = {"round": entry["round"], "train": {k: {"train-loss": v[-1]} for k, v in entry["losses"].items() if v}}
        if "valid" in entry:
            row["valid"], row["valid_overall"] = entry["valid"]["clients"], entry["valid"]["overall"]
        if "parties" in entry:  # stopping = per-party: each party's tracker after this round
            row["parties"] = entry["parties"]
        run.append_metrics(row)
    run.write_final_metrics(result)  # the checkpoint is removed by run_cell from now on


#: The in-process runners that honour ``dp = local`` (``run_fede_in_process``'s ``dp=``); none has SecAgg+.
IN_PROCESS_DP_SETTINGS = frozenset({"fede"})


def in_process_dp(run_config: Mapping[str, Any], setting: str) -> Any:
    """``dp = local``'s parameters for the in-process runner of ``setting`` (``None`` under ``dp = none``),
    by the Flower-free commands' one rule (:func:`client.kge.settings.in_process_local_dp`): refused, with
    :class:`client.kge.settings.UnhonouredKeyError`, for ``secure-aggregation = true`` and for ``dp = local``
    in the isolation and collection runners. With ``dp-target-epsilon``, ``z`` is calibrated over the KGE
    rounds and the federated SimSkip phase's releases, as the Flower apps do.

    :raises client.kge.settings.SettingsError: / :class:`client.kge.config.ConfigError`: a bad value.
    """
    from client.kge.run_config import load_run_configs, simskip_releases
    from client.kge.settings import FederationSettings, in_process_local_dp

    honours = setting in IN_PROCESS_DP_SETTINGS
    releases = 0
    if honours and FederationSettings.from_run_config(run_config).dp == "local":
        settings, _, refinement = load_run_configs(run_config)  # also: dp-clip-encoder for a federated SimSkip
        releases = simskip_releases(settings, refinement)
    return in_process_local_dp(
        run_config,
        command=f"the in-process {setting} runner (run_experiments.py --engine in-process)",
        honours_dp=honours,
        simskip_releases=releases,
    )


def _kge_flower(
    folder: Path,
    dataset: str,
    model: str,
    setting: str,
    rounds: int,
    sets: Mapping[str, Any],
    num_clients: int | None,
    timeout: float | None,
) -> None:
    """``simskip-sim`` in a subprocess (stopped by PID on interrupt or timeout)."""
    command = [
        sys.executable,
        "-m",
        "server.simulation",
        "--dataset",
        dataset,
        "--setting",
        setting,
        "--rounds",
        str(rounds),
        "--run-dir",
        str(folder),
        "--set",
        f"model={model}",
    ]
    if num_clients is not None and not Path(dataset).is_dir():
        command += ["--clients", str(num_clients)]
    for key, value in sets.items():
        command += [
            "--set",
            f"{key}={json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value}",
        ]
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "cell.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=timeout)
        except BaseException:
            process.kill()  # this cell's own child, by its handle (PID)
            process.wait()
            raise
    if code != 0:
        raise GridError(f"simskip-sim failed with exit status {code} for {folder} (see {log_path})")


def kge_run_seconds(final: Mapping[str, Any], attempt_seconds: float) -> float:
    """The KGE step's seconds: this attempt's, plus for a resumed run the recorded seconds of the rounds an
    interrupted attempt ran (``final``: the in-process runner's ``final_metrics.json``)."""
    resumed = final.get("resumed_after_round")
    if resumed is None:
        return attempt_seconds
    earlier = final.get("history", [])
    return attempt_seconds + sum(entry.get("seconds", 0.0) for entry in earlier if entry["round"] <= resumed)


# ----------------------------------------------------------------------------- cells
def run_cell(
    out: Path,
    dataset: str,
    model: str,
    setting: str,
    *,
    rounds: int,
    sets: Mapping[str, Any],
    engine: str = "flower",
    num_clients: int | None = 3,
    timeout: float | None = None,
    variant: str | None = None,
    export: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) one cell; returns its ``cell.json`` content.

    :param variant: a name for a cell with other ``sets`` than the plain one (folder
        ``<setting>-<variant>``); it reuses the plain cell's finished KGE run when there is one,
        so both compare SimSkip settings on the same federated rows.
    :param export: copy the finished cell's ``cell.json`` and ``results.json`` to
        :func:`export_dir` under this folder (the committed ``results/grid``).
    """
    folder = cell_dir(out, dataset, model, setting, variant)
    state = read_json(folder / CELL_FILE) or {}
    if state.get("status") == "done":
        print(f"[grid] {folder}: done, skipped", flush=True)
        _export(folder, export, dataset, model, setting, variant)
        return state
    if variant and _reuse_kge_run(cell_dir(out, dataset, model, setting), folder):
        plain = read_json(cell_dir(out, dataset, model, setting) / CELL_FILE) or {}
        # the KGE run is the plain cell's: counted there, not again in this cell's wall time
        state["run_seconds"] = 0.0
        state["reused_run_seconds"] = plain.get("run_seconds")
        state["kge_run_of"] = str(cell_dir(out, dataset, model, setting).relative_to(out))
    folder.mkdir(parents=True, exist_ok=True)
    state.update(
        {
            "dataset": dataset,
            "model": model,
            "setting": setting,
            "variant": variant or ("simskip" if setting == "fede" else setting),
            "rounds": rounds,
            "set": dict(sets),
            "engine": "in-process" if setting == "collection" else engine,
            "status": "running",
        }
    )
    # a resumed cell keeps its first start's machine facts and records each resume beside them
    if "machine_at_start" in state:
        state.setdefault("machine_at_resume", []).append(machine_facts())
    else:
        state["machine_at_start"] = machine_facts()
    write_json(folder / CELL_FILE, state)
    kge_seconds = None
    if not (folder / "final_metrics.json").is_file():
        started = time.perf_counter()
        if state["engine"] == "in-process":
            kge_in_process(folder, dataset, model, setting, rounds, sets, num_clients)
        else:
            _kge_flower(folder, dataset, model, setting, rounds, sets, num_clients, timeout)
        kge_seconds = time.perf_counter() - started
    final = read_json(folder / "final_metrics.json") or {}
    if kge_seconds is not None:
        if final.get("resumed_after_round") is not None:
            state["kge_resumed_after_round"] = final["resumed_after_round"]
        state["run_seconds"] = round(kge_run_seconds(final, kge_seconds), 1)
        state["machine_after_kge"] = machine_facts()
        write_json(folder / CELL_FILE, state)
    if state["engine"] == "in-process":
        from server.checkpoint import remove_checkpoint

        # final_metrics.json and the embeddings hold what the cell needs now; here, not in the KGE
        # step, so that a checkpoint left by an attempt killed just after that file goes too
        remove_checkpoint(folder)
    if (folder / "results.json").is_file():
        from server.checkpoint import REFINE_CHECKPOINT_DIR

        # the refine step removes its checkpoint after the report; one left by a failure after
        # results.json (while plotting) would otherwise stay, as the step is not run again
        shutil.rmtree(folder / REFINE_CHECKPOINT_DIR, ignore_errors=True)
    else:
        from server.downstream import refine_run_folder
        from server.report import DOWNSTREAM_FILE

        started = time.perf_counter()
        refine_run_folder(folder, sets)
        seconds = time.perf_counter() - started
        # a resumed refine step restores what an interrupted attempt finished: add its seconds
        restored = (read_json(folder / DOWNSTREAM_FILE) or {}).get("restored_from_checkpoint", {})
        state["refine_seconds"] = round(seconds + restored.get("seconds", 0.0), 1)
    state["machine_at_end"] = machine_facts()
    state["device"] = state["machine_at_end"]["device"]
    state["load_average"] = state["machine_at_start"]["load_average"]
    # the in-process runners write ``rounds_trained``, the Flower ServerApp ``rounds_run``
    state["kge_rounds_run"] = final.get("rounds_trained", final.get("rounds_run"))
    state["kge_best_round"] = final.get("best_round")
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    # per downstream protocol: the overall mean over seeds of every row and gain
    state["overall"] = {
        label: {
            row: {c: v["mean"] for c, v in per_client["overall"].items()} for row, per_client in entry["rows"].items()
        }
        for label, entry in results["protocols"].items()
    }
    state["gain_points"] = {
        label: {
            row: {c: v["mean"] for c, v in per_client["overall"].items()}
            for row, per_client in entry["gain_points"].items()
        }
        for label, entry in results["protocols"].items()
    }
    state["verdict"] = {label: entry["verdict"].get("overall", {}) for label, entry in results["protocols"].items()}
    state["status"] = "done"
    write_json(folder / CELL_FILE, state)
    _export(folder, export, dataset, model, setting, variant)
    print(
        f"[grid] {folder}: done ({state.get('run_seconds', 0)} s run, {state.get('refine_seconds', 0)} s separate refine)",
        flush=True,
    )
    return state


def _export(folder: Path, export: Path | None, dataset: str, model: str, setting: str, variant: str | None) -> None:
    """Copy a finished cell's ``cell.json`` and ``results.json`` to :func:`export_dir`."""
    if export is None:
        return
    from client.kge.run_folder import atomic_write_text

    target = export_dir(export, dataset, model, setting, variant)
    target.mkdir(parents=True, exist_ok=True)
    for name in (CELL_FILE, "results.json"):
        atomic_write_text(target / name, (folder / name).read_text(encoding="utf-8"))


def assemble(out: Path) -> dict[str, Path]:
    """Collect every finished cell under ``out`` into ``grid.{json,csv,md}``."""
    from client.kge.comparison import ROWS
    from client.kge.run_folder import atomic_write_text

    cells = sorted(
        (c for c in (read_json(p) for p in out.glob(f"*/*/*/{CELL_FILE}")) if c and c.get("status") == "done"),
        key=lambda c: (
            c["dataset"],
            DEFAULT_MODELS.index(c["model"]) if c["model"] in DEFAULT_MODELS else 99,
            DEFAULT_SETTINGS.index(c["setting"]) if c["setting"] in DEFAULT_SETTINGS else 99,
        ),
    )
    columns = ["dataset", "model", "setting", "protocol", "row", *GRID_COLUMNS, "run_seconds", "refine_seconds"]
    records = []
    for cell in cells:
        base = {
            "dataset": Path(cell["dataset"]).name,
            "model": cell["model"],
            "setting": cell["setting"]
            if cell.get("variant") in (None, "simskip", cell["setting"])
            else f"{cell['setting']}-{cell['variant']}",
            "run_seconds": cell.get("run_seconds", ""),
            "refine_seconds": cell.get("refine_seconds", ""),
        }
        for label, overall in cell["overall"].items():
            for row in ROWS:
                if row in overall:
                    records.append(
                        {**base, "protocol": label, "row": row, **{c: overall[row][c] for c in GRID_COLUMNS}}
                    )
            gains_of = cell["gain_points"][label]
            for row, gains in ((row, gains_of[row]) for row in ROWS if row in gains_of):
                records.append(
                    {**base, "protocol": label, "row": f"gain {row} (pts)", **{c: gains[c] for c in GRID_COLUMNS}}
                )
    paths = {"json": out / "grid.json", "csv": out / "grid.csv", "md": out / "grid.md"}
    atomic_write_text(
        paths["json"], json.dumps({"columns": columns, "records": records, "cells": cells}, indent=2) + "\n"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(paths["csv"], buffer.getvalue())
    lines = [
        "# Refined vs unrefined federated entity embeddings (overall test, weighted by test triples)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for record in records:
        points = record["row"].startswith("gain")
        cells_text = [f"{record[c]:+.2f}" if points else f"{record[c]:.4f}" for c in GRID_COLUMNS]
        lines.append(
            "| "
            + " | ".join(
                [
                    record["dataset"],
                    record["model"],
                    record["setting"],
                    record["protocol"],
                    record["row"],
                    *cells_text,
                    str(record["run_seconds"]),
                    str(record["refine_seconds"]),
                ]
            )
            + " |"
        )
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    return paths


def resolve_dataset(dataset: str) -> str:
    """A data folder as given (relative to the working directory) or relative to the project root;
    anything else (a PyKEEN dataset name) unchanged."""
    if Path(dataset).exists():
        return str(Path(dataset).resolve())
    if (PROJECT_ROOT / dataset).exists():
        return str((PROJECT_ROOT / dataset).resolve())
    return dataset


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from server.run_options import add_preset_option

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="grid folder (one sub-folder per cell)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        help="data folders (relative to the project root) or PyKEEN names (Nations, UMLS, Kinships)",
    )
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(DEFAULT_SETTINGS))
    parser.add_argument("--rounds", type=int, default=100, help="num-server-rounds of KGE training (default 100)")
    parser.add_argument("--clients", type=int, default=3, help="clients for a PyKEEN dataset name (default 3)")
    parser.add_argument("--engine", choices=["flower", "in-process"], default="flower")
    add_preset_option(parser)
    add_set_option(parser, dest="sets", help="run-config value for every cell (KGE, simskip-*, refit-*), repeatable")
    parser.add_argument(
        "--variant",
        default=None,
        help="name of these --set values' cells (folder <setting>-<variant>); a fede variant reuses the plain cell's KGE run",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        help="copy each finished cell's cell.json and results.json here (e.g. results/grid: <split>/<model>/[<variant>/])",
    )
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds one flower cell may run")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild grid.{md,csv,json}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid; returns the exit status (1 when a cell failed; the others still ran)."""
    from server.run_options import run_config_overrides

    parser = build_parser()
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(  # the grid folder and the export may hold earlier cells, never the data
        parser,
        inputs=[resolve_dataset(d) for d in args.datasets],
        folders={"--out": args.out, "--export": args.export},
    )
    out = args.out.resolve()
    sets = run_config_overrides(args.preset, args.sets)
    failed = []
    if not args.assemble_only:
        # Every step's code is loaded now, once: a grid runs for hours, and a module edited under it
        # must not be imported half-way (a cell once failed so: the KGE step's refinement module
        # was the old one, the refine step's downstream module the new one).
        import client.kge.centralized  # noqa: F401
        import server.checkpoint
        import server.downstream  # noqa: F401

        for dataset in args.datasets:
            dataset = resolve_dataset(dataset)
            for model in args.models:
                for setting in args.settings:
                    try:
                        run_cell(
                            out,
                            dataset,
                            model,
                            setting,
                            rounds=args.rounds,
                            sets=sets,
                            engine=args.engine,
                            num_clients=args.clients,
                            timeout=args.cell_timeout,
                            variant=args.variant,
                            export=args.export.resolve() if args.export else None,
                        )
                    except KeyboardInterrupt:
                        print("[grid] interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
                        return 130
                    except Exception as error:  # noqa: BLE001 - one failed cell must not stop the grid
                        failed.append(f"{dataset} {model} {setting}: {type(error).__name__}: {error}")
                        print(f"[grid] FAILED {failed[-1]}", file=sys.stderr, flush=True)
    paths = assemble(out)
    print(f"[grid] table: {paths['md']}", flush=True)
    for line in failed:
        print(f"[grid] failed cell: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
