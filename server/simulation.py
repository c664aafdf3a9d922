"""``simskip-sim``: run every party on this machine with Flower's simulation runtime (Ray).

The dataset is partitioned with :func:`kg_datasets.load_federated` and each client's folder is
written under ``RUN_DIR/data/<k>``; each virtual client then loads only its own folder, by the
same code path as a deployed party. A SuperLink started with ``--simulation`` runs the app
(``flwr run``), so the ServerApp and ClientApp are exactly the deployed ones.

``--setting collection`` pools all triples and trains centrally without Flower
(:func:`client.kge.centralized.run_collection`), evaluated per client.

With ``simskip-rounds > 0`` (the default) the same run continues with the SimSkip phase, the
downstream evaluation and the results report (``results.{md,csv,json}`` and plots; see
:mod:`server.simskip_strategy`); for ``collection`` that phase runs in-process
(:func:`server.downstream.refine_run_folder`). ``simskip-sim --refine-only RUN_DIR [--set ...]``
runs only that phase on a finished run folder.

Exit status: 0 when the run finished and wrote ``final_metrics.json``; 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_run_config", "main", "parse_set_options", "run_command", "run_simulation"]

#: Rounds of the default simulation: the README's UMLS run should finish in a couple of minutes
#: (Kinships, FedE's defaults: ~35 s per round on 2 heavily loaded cores; less on a quiet machine).
DEFAULT_SIM_ROUNDS = 10


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """``["local-epochs=2", "model=RotatE"]`` -> ``{"local-epochs": 2, "model": "RotatE"}``.

    Values are read as TOML (numbers, booleans, quoted strings); anything else is a string.

    :raises ValueError: for an item without ``=``.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        values[key.strip()] = value
    return values


def default_run_dir() -> Path:
    """``runs/<UTC timestamp>`` under the current directory."""
    return Path("runs") / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def check_run_config(run_config: dict[str, Any]) -> None:
    """Fail before any process starts when a key is unknown (any phase) or a value is bad."""
    from client.kge.refinement import load_run_configs

    load_run_configs(run_config)


def run_command(prog: str, run: Callable[[], Path]) -> int:
    """The boundary of a command that runs ``run()`` (returning the run folder); returns the exit status.

    0 after printing ``[prog] done in N s: RUN_DIR``; 130 on Ctrl-C; 1 on any other exception,
    reported as ``[prog] error: Type: message`` on stderr. ``SystemExit`` passes through.
    """
    started = time.time()
    try:
        run_dir = run()
    except KeyboardInterrupt:
        print(f"[{prog}] interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command's boundary: report and exit non-zero
        print(f"[{prog}] error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"[{prog}] done in {time.time() - started:.1f} s: {run_dir}", flush=True)
    return 0


def run_collection(dataset: str, run_dir: Path, run_config: dict[str, Any], kg: Any) -> Path:
    """Centralized training on the pooled triples (no Flower), evaluated per client.

    Writes the same run-folder files as a federated run: ``config.json``, ``metrics.jsonl`` /
    ``metrics.csv`` (one row per round), ``final_metrics.json`` (per-client and overall test
    metrics of the best round), and the embeddings written by
    :func:`client.kge.centralized.run_collection`.
    """
    from client.kge.centralized import run_collection as train_pooled
    from server.run_folder import RunFolder
    from client.kge.refinement import load_run_configs

    settings, kge_config, refinement = load_run_configs(run_config)
    folder = RunFolder(run_dir)
    folder.write_config({"federation": dataclasses.asdict(settings), "kge": kge_config.to_run_config(),
                         "run_config": run_config, "dataset": dataset, "num_entities": kg.num_entities,
                         "clients": {str(c.client_id): {"num_entities": c.num_entities} for c in kg.clients}})
    results = train_pooled(kg, kge_config, settings.num_server_rounds, out_dir=run_dir,
                           progress=lambda line: print(line, flush=True))
    for entry in results["history"]:
        row = {"round": entry["round"], "train": {"pooled": {"train-loss": entry["losses"]["pooled"][-1]}}}
        if "valid" in entry:
            row["valid"] = entry["valid"]["clients"]
            row["valid_overall"] = entry["valid"]["overall"]
        folder.append_metrics(row)
    clients = sorted(results["test"]["clients"])
    folder.write_final_metrics({
        "setting": "collection",
        "best_round": results["best_round"],
        "rounds_run": results["rounds_trained"],
        "stopped_early": results["rounds_trained"] < results["rounds_budget"],
        "best_valid_overall": {"mrr": results["best_valid_mrr"]},
        "test": results["test"]["clients"],
        "test_overall": results["test"]["overall"],
        "clients": clients,
        "missing_clients": [],
        "train_seconds": results["train_seconds"],
    })
    if refinement.enabled:
        # no federation to run it through: the same phase in-process, from the folder just written
        from server.downstream import refine_run_folder

        if not (run_dir / "data").exists():
            kg.write(run_dir / "data")
        refine_run_folder(run_dir)
    return run_dir


def run_simulation(
    dataset: str,
    *,
    num_clients: int = 3,
    run_dir: Path | None = None,
    rounds: int = DEFAULT_SIM_ROUNDS,
    setting: str = "fede",
    overrides: dict[str, Any] | None = None,
    partition: str = "relation",
    partition_seed: int = 0,
    num_cpus_per_client: int = 1,
    num_gpus_per_client: float = 0.0,
    timeout: float | None = None,
) -> Path:
    """Partition ``dataset``, run the federation in simulation, return the run folder.

    :param dataset: a PyKEEN dataset name (``UMLS``, ``Kinships``, ``Nations``) or a folder
        (labelled, OpenKE, or client folders ``0/ 1/ ...``), as :func:`kg_datasets.load_federated`.
    :param num_clients: parties (ignored for an already federated folder's own count check).
    :param run_dir: output folder (default ``runs/<timestamp>``).
    :param rounds: ``num-server-rounds``.
    :param setting: ``fede``, ``isolation`` or ``collection``.
    :param overrides: further run-config values (kebab-case keys).
    :param num_cpus_per_client: / num_gpus_per_client: Ray resources of one virtual client.
    :raises server.launcher.FlowerProcessError: when the run did not complete.
    """
    from kg_datasets import load_federated
    from server import launcher

    run_dir = (run_dir or default_run_dir()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config: dict[str, Any] = {
        "setting": setting,
        "num-server-rounds": int(rounds),
        "run-dir": str(run_dir),
        **(overrides or {}),
    }
    check_run_config(run_config)

    kg = load_federated(dataset, num_clients=num_clients, partition=partition, seed=partition_seed)
    print(f"[simskip-sim] {kg.name}: {kg.num_clients} clients, {kg.num_entities} entities, "
          f"{kg.num_relations} relations -> {run_dir}", flush=True)
    if setting == "collection":
        return run_collection(str(dataset), run_dir, run_config, kg)

    data_root = run_dir / "data"
    if not data_root.exists():
        kg.write(data_root)
    run_config.update({
        "client-data-root": str(data_root),
        "client-output-root": str(run_dir / "clients"),
        "min-clients": kg.num_clients,
    })
    check_run_config(run_config)

    flwr_home = run_dir / ".flwr"
    port = launcher.free_port()
    superlink = launcher.start_superlink(
        flwr_home, port=port, insecure=True, simulation=True, log_path=run_dir / "logs" / "superlink.log"
    )
    try:
        launcher.wait_for_health("127.0.0.1", port, superlink)
        launcher.write_connection(flwr_home, f"127.0.0.1:{port}", insecure=True)
        federation_config = {
            "num-supernodes": kg.num_clients,
            "client-resources-num-cpus": int(num_cpus_per_client),
            "client-resources-num-gpus": float(num_gpus_per_client),
        }
        run_id, status = launcher.run_app(
            flwr_home, run_config, federation_config=federation_config, superlink=superlink,
            log_path=run_dir / "logs" / "run.log",
        )
    finally:
        launcher.stop_process(superlink)
    launcher.check_run_completed(run_id, status, run_dir)
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-sim`` argument parser."""
    parser = argparse.ArgumentParser(prog="simskip-sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="UMLS", help="PyKEEN dataset name or data folder (default UMLS)")
    parser.add_argument("--clients", type=int, default=3, help="number of parties (default 3)")
    parser.add_argument("--partition", default="relation", choices=["relation", "triple"])
    parser.add_argument("--partition-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=DEFAULT_SIM_ROUNDS,
                        help=f"num-server-rounds (default {DEFAULT_SIM_ROUNDS})")
    parser.add_argument("--setting", default="fede", choices=["fede", "isolation", "collection"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override, e.g. --set model=RotatE (repeatable)")
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (default runs/<timestamp>)")
    parser.add_argument("--num-cpus-per-client", type=int, default=1)
    parser.add_argument("--num-gpus-per-client", type=float, default=0.0)
    parser.add_argument("--refine-only", type=Path, default=None, metavar="RUN_DIR",
                        help="run only the SimSkip phase + downstream evaluation + report on a finished run "
                             "folder (in-process; --set overrides simskip-*/refit-* values)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-sim``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.refine_only is not None:
        from server.downstream import main as refine_main

        return refine_main([str(args.refine_only), *(item for s in args.sets for item in ("--set", s))])
    return run_command("simskip-sim", lambda: run_simulation(
        args.dataset,
        num_clients=args.clients,
        run_dir=args.run_dir,
        rounds=args.rounds,
        setting=args.setting,
        overrides=parse_set_options(args.sets),
        partition=args.partition,
        partition_seed=args.partition_seed,
        num_cpus_per_client=args.num_cpus_per_client,
        num_gpus_per_client=args.num_gpus_per_client,
    ))


if __name__ == "__main__":
    sys.exit(main())
