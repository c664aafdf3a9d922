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

``simskip-sim --resume RUN_DIR [--rounds N] [--set key=value ...]`` continues an interrupted run
after its last checkpointed round (``RUN_DIR/checkpoint/``, :mod:`server.checkpoint`), with the
run config the ServerApp recorded in ``RUN_DIR/config.json`` and the same client data folders.
A missing, truncated or corrupt checkpoint, or a changed model-defining setting, is an error
naming the file or the setting: never a silent fresh start.

A fresh start that fails before any round completed (no ``metrics.jsonl`` row, no checkpoint, no
``final_metrics.json``; e.g. the SuperLink does not start, or the ServerApp fails at once) removes
what it wrote into the run folder (:func:`client.kge.run_folder.undone_on_failure`), so the same ``--run-dir`` may be
given again: only the entries it created are removed, never one the folder held before; ``logs/``
stays when the error message names a log in it (the folder then holds only ``logs/``, which is no
earlier run: :data:`client.kge.run_folder.RUN_RECORDS`); a run folder (and its parents) that this
start created is removed when nothing is left in it. A failed ``--resume`` removes nothing.

Exit status: 0 when the run finished and wrote ``final_metrics.json``; 130 on Ctrl-C, 143 on
SIGTERM (the SuperLink is stopped first); 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client import launcher, pids
from client.kge.config import add_set_option, parse_set_options
from client.kge.run_folder import RunFolder, undone_on_failure
from kg_datasets.errors import PARAMETER_FLAGS
from server import signals
from server.partial_results import write_partial_results
from server.run_options import (
    add_preset_option,
    check_new_run_dir,
    check_run_config,
    default_run_dir,
    run_command,
    run_config_overrides,
)
from server.sim_resources import auto_gpus_per_client, cuda_gpu_visible, numerics_env, ray_num_cpus
from simskip_core.cli_common import INPUT_ERRORS, RUN_CONFIG_FLAGS, CommandParser, add_version, integer, number
from simskip_core.cli_common import path as path_arg

__all__ = [
    "ResumeError",
    "main",
    "parse_and_validate",
    "resume_run_config",
    "resume_simulation",
    "run_simulation",
]

#: Round budget of the default simulation; early stopping (patience 3 checks, one per round) ends
#: the README's UMLS run well before it (round 12).
DEFAULT_SIM_ROUNDS = 30


def run_collection_setting(dataset: str, run_dir: Path, run_config: dict[str, Any], kg: Any) -> Path:
    """Centralized training on the pooled triples (no Flower), evaluated per client.

    Writes the same run-folder files as a federated run: ``config.json``, ``metrics.jsonl`` /
    ``metrics.csv`` (one row per round), ``final_metrics.json`` (per-client and overall test
    metrics of the best round), and the embeddings written by
    :func:`client.kge.centralized.run_collection`.
    """
    from client.kge.centralized import run_collection as train_pooled  # heavy (torch, pykeen): collection runs only
    from client.kge.refinement import load_run_configs  # heavy (torch, pykeen), as above

    settings, kge_config, refinement = load_run_configs(run_config)
    folder = RunFolder(run_dir)
    folder.write_config(
        {
            "federation": dataclasses.asdict(settings),
            "kge": kge_config.to_run_config(),
            "run_config": run_config,
            "dataset": dataset,
            "num_entities": kg.num_entities,
            "clients": {str(c.client_id): {"num_entities": c.num_entities} for c in kg.clients},
        }
    )
    results = train_pooled(
        kg, kge_config, settings.num_server_rounds, out_dir=run_dir, progress=lambda line: print(line, flush=True)
    )
    for entry in results["history"]:
        row = {"round": entry["round"], "train": {"pooled": {"train-loss": entry["losses"]["pooled"][-1]}}}
        if "valid" in entry:
            row["valid"] = entry["valid"]["clients"]
            row["valid_overall"] = entry["valid"]["overall"]
        folder.append_metrics(row)
    clients = sorted(results["test"]["clients"])
    folder.write_final_metrics(
        {
            "setting": "collection",
            "best_round": results["best_round"],
            "rounds_run": results["rounds_trained"],
            "stopped_early": results["rounds_trained"] < results["rounds_budget"],
            "stopping": results["stopping"],  # the runner's record, as the federated settings write it
            "best_valid_overall": {"mrr": results["best_valid_mrr"]},
            "test": results["test"]["clients"],
            "test_overall": results["test"]["overall"],
            "clients": clients,
            "missing_clients": [],
            "train_seconds": results["train_seconds"],
        }
    )
    if refinement.enabled:
        # no federation to run it through: the same phase in-process, from the folder just written
        from server.downstream import refine_run_folder  # heavy (torch, pykeen): refinement runs only

        if not (run_dir / "data").exists():
            kg.write(run_dir / "data", inputs=[dataset], command="simskip-sim")
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
    num_gpus_per_client: float | None = None,
    concurrent_clients: int | None = None,
    timeout: float | None = None,
    quiet: bool = False,
) -> Path:
    """Partition ``dataset``, run the federation in simulation, return the run folder.

    :param dataset: a PyKEEN dataset name (``UMLS``, ``Kinships``, ``Nations``) or a folder
        (labelled, OpenKE, or client folders ``0/ 1/ ...``), as :func:`kg_datasets.load_federated`.
    :param num_clients: parties (ignored for an already federated folder's own count check).
    :param run_dir: output folder (default ``runs/<timestamp>``).
    :param rounds: ``num-server-rounds``.
    :param setting: ``fede``, ``isolation`` or ``collection``.
    :param overrides: further run-config values (kebab-case keys).
    :param num_cpus_per_client: / num_gpus_per_client: Ray resources of one virtual client
        (GPUs: ``None`` shares a visible CUDA GPU among the clients, see :func:`auto_gpus_per_client`).
    :param concurrent_clients: virtual clients that train at the same time (see
        :func:`ray_num_cpus`; ``None``: all of them).
    :param quiet: print only problems and summary lines (the run log keeps everything).
    :raises client.pids.FlowerProcessError: when the run did not complete; a start that failed
        before any round completed first removes what it wrote into ``run_dir``
        (:func:`client.kge.run_folder.undone_on_failure`), so the same ``run_dir`` may be given again.
    """
    run_dir = (run_dir or default_run_dir()).resolve()
    run_config: dict[str, Any] = {
        "setting": setting,
        "num-server-rounds": int(rounds),
        "run-dir": str(run_dir),
        **(overrides or {}),
    }
    check_run_config(run_config)  # before anything is written: a bad value leaves no empty run folder
    # the output rule (simskip_core.outputs): not the dataset folder, nor inside or around it, not
    # the current folder, no earlier run; the folder itself is made by the first write below, after
    # the data was read, and a start that fails before a round completed removes what it wrote
    check_new_run_dir(run_dir, inputs=[dataset])
    with undone_on_failure(run_dir):
        return _start(
            dataset,
            run_dir,
            run_config,
            num_clients=num_clients,
            partition=partition,
            partition_seed=partition_seed,
            num_cpus_per_client=num_cpus_per_client,
            num_gpus_per_client=num_gpus_per_client,
            concurrent_clients=concurrent_clients,
            quiet=quiet,
        )


def _start(
    dataset: str,
    run_dir: Path,
    run_config: dict[str, Any],
    *,
    num_clients: int,
    partition: str,
    partition_seed: int,
    num_cpus_per_client: int,
    num_gpus_per_client: float | None,
    concurrent_clients: int | None,
    quiet: bool,
) -> Path:
    """:func:`run_simulation` after its checks: read and partition the data, write it, run the federation."""
    from kg_datasets import load_federated  # heavy (torch, pykeen): simskip-sim --help runs without it

    kg = load_federated(dataset, num_clients=num_clients, partition=partition, seed=partition_seed)
    print(
        f"[simskip-sim] {kg.name}: {kg.num_clients} clients, {kg.num_entities} entities, "
        f"{kg.num_relations} relations -> {run_dir}",
        flush=True,
    )
    if run_config["setting"] == "collection":
        return run_collection_setting(str(dataset), run_dir, run_config, kg)

    data_root = run_dir / "data"
    run_config.update(
        {
            "client-data-root": str(data_root),
            "client-output-root": str(run_dir / "clients"),
            "min-clients": kg.num_clients,
        }
    )
    check_run_config(run_config)
    if not data_root.exists():
        kg.write(data_root, inputs=[dataset], command="simskip-sim")
    return _run_flower(
        run_dir,
        run_config,
        num_clients=kg.num_clients,
        num_cpus_per_client=num_cpus_per_client,
        num_gpus_per_client=num_gpus_per_client,
        concurrent_clients=concurrent_clients,
        quiet=quiet,
    )


def _run_flower(
    run_dir: Path,
    run_config: dict[str, Any],
    *,
    num_clients: int,
    num_cpus_per_client: int,
    num_gpus_per_client: float | None,
    concurrent_clients: int | None = None,
    quiet: bool = False,
) -> Path:
    """Start a simulation SuperLink, run the app with ``run_config`` on ``num_clients`` virtual
    nodes, stop the SuperLink by PID; return ``run_dir``.

    :raises client.pids.FlowerProcessError: when the run did not complete.
    """
    if num_gpus_per_client is None:
        num_gpus_per_client = auto_gpus_per_client(num_clients, concurrent_clients)
        if num_gpus_per_client:
            print(
                f"[simskip-sim] CUDA GPU found: each client gets {num_gpus_per_client:.3g} of it "
                "(--num-gpus-per-client to change, 0 for CPU only)",
                flush=True,
            )
    flwr_home = run_dir / ".flwr"
    port = pids.free_port()
    superlink = None
    try:
        with signals.deferred():  # a signal now is raised once `superlink` is set, inside this try
            superlink = launcher.start_superlink(
                flwr_home,
                port=port,
                insecure=True,
                simulation=True,
                log_path=run_dir / "logs" / "superlink.log",
                extra_env=numerics_env(num_cpus_per_client),
            )
        launcher.wait_until_listening("127.0.0.1", port, superlink)
        launcher.write_connection(flwr_home, f"127.0.0.1:{port}", insecure=True)
        federation_config = {
            "num-supernodes": int(num_clients),
            "client-resources-num-cpus": int(num_cpus_per_client),
            "client-resources-num-gpus": float(num_gpus_per_client),
            "init-args-num-cpus": ray_num_cpus(num_clients, num_cpus_per_client, concurrent_clients),
        }
        run_id, status = launcher.run_app(
            flwr_home,
            run_config,
            federation_config=federation_config,
            superlink=superlink,
            log_path=run_dir / "logs" / "run.log",
            quiet=quiet,
        )
    finally:
        pids.stop_process(superlink)
    launcher.check_run_completed(run_id, status, run_dir)
    return run_dir


class ResumeError(RuntimeError):
    """A run folder cannot be resumed: no readable ``config.json``, no data folders, wrong setting."""


def _client_data_folders(data_root: Path) -> list[Path]:
    """The per-client folders ``<data_root>/0, 1, ...`` (as :meth:`kg_datasets.FederatedKG.write` makes them)."""
    return sorted((p for p in data_root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def resume_run_config(
    run_dir: Path, *, rounds: int | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run config of a resumed run: ``RUN_DIR/config.json``'s ``run_config``, then
    ``overrides``, then ``rounds``, with ``resume = true`` and ``run-dir = RUN_DIR``.

    :raises ResumeError: when ``config.json`` is missing, not JSON, or has no ``run_config``.
    """
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ResumeError(f"{config_path} does not exist: {run_dir} is not a started run folder")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(f"cannot read {config_path}: {err}") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("run_config"), dict):
        raise ResumeError(f"{config_path} has no 'run_config' object")
    run_config = {**saved["run_config"], **(overrides or {})}
    if rounds is not None:
        run_config["num-server-rounds"] = int(rounds)
    run_config.update({"resume": True, "run-dir": str(run_dir)})
    return run_config


def resume_simulation(
    run_dir: Path,
    *,
    rounds: int | None = None,
    overrides: dict[str, Any] | None = None,
    num_cpus_per_client: int = 1,
    num_gpus_per_client: float | None = None,
    concurrent_clients: int | None = None,
    quiet: bool = False,
) -> Path:
    """Continue an interrupted simulation after its last checkpointed round; return the run folder.

    The run config is the one the ServerApp recorded in ``RUN_DIR/config.json`` (see
    :func:`resume_run_config`); the clients read the same data folders
    (``client-data-root``, i.e. ``RUN_DIR/data/<k>``). The checkpoint is checked here, before
    any process starts, and again by the ServerApp once the clients' vocabulary is known.

    :param rounds: a new ``num-server-rounds`` (a resume may raise the budget).
    :param overrides: run-config changes; a model-defining one is refused
        (:data:`server.checkpoint.MODEL_DEFINING_KEYS`).
    :raises ResumeError: the folder has no readable config, no data folders, or is a ``collection`` run.
    :raises server.checkpoint.CheckpointError: no checkpoint, a corrupt one (naming the file),
        or a changed model-defining setting (naming it).
    :raises client.pids.FlowerProcessError: when the resumed run did not complete.
    """
    from server.checkpoint import load_checkpoint  # heavy (torch, pykeen via client.kge.run_config): --resume only

    run_dir = Path(run_dir).resolve()
    run_config = resume_run_config(run_dir, rounds=rounds, overrides=overrides)
    if run_config.get("setting") == "collection":
        raise ResumeError("setting 'collection' trains centrally in one process and writes no checkpoint")
    data_root = Path(str(run_config.get("client-data-root") or ""))
    if not str(run_config.get("client-data-root") or "") or not data_root.is_dir():
        raise ResumeError(
            f"client-data-root {str(data_root)!r} of {run_dir / 'config.json'} is not a folder: "
            "the clients' data must stay where the run put it"
        )
    clients = _client_data_folders(data_root)
    if not clients:
        raise ResumeError(f"no client data folders 0/ 1/ ... under {data_root}")
    check_run_config(run_config)
    round_done, _, _ = load_checkpoint(run_dir, run_config=run_config)  # fail before start-up, not after
    print(
        f"[simskip-sim] resuming {run_dir} after round {round_done} of {run_config.get('num-server-rounds')}, "
        f"{len(clients)} clients",
        flush=True,
    )
    return _run_flower(
        run_dir,
        run_config,
        num_clients=len(clients),
        num_cpus_per_client=num_cpus_per_client,
        num_gpus_per_client=num_gpus_per_client,
        concurrent_clients=concurrent_clients,
        quiet=quiet,
    )


EXAMPLES = """examples:
  simskip-sim --dataset UMLS --clients 3 --rounds 5 --run-dir runs/umls
  simskip-sim --dataset ../shared/data/FB15k-237-Fed3 --preset fede-paper --set model=RotatE
  simskip-sim --resume runs/umls --rounds 10
  simskip-sim --refine-only runs/umls --set simskip-rounds=2
"""
#: ``numpy.random.RandomState`` (the partitioners) takes seeds in 0..2**32 - 1.
MAX_SEED = 2**32 - 1


def build_parser() -> argparse.ArgumentParser:
    """The ``simskip-sim`` argument parser."""
    parser = CommandParser(prog="simskip-sim", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add_version(parser)
    # None defaults: --resume refuses the options that would change the run's data or setting
    parser.add_argument("--dataset", default=None, help="PyKEEN dataset name or data folder (default UMLS)")
    parser.add_argument("--clients", type=integer(1), default=None, help="number of parties, >= 1 (default 3)")
    parser.add_argument("--partition", default=None, choices=["relation", "triple"], help="(default relation)")
    parser.add_argument("--partition-seed", type=integer(0, MAX_SEED), default=None, help="(default 0)")
    parser.add_argument(
        "--rounds",
        type=integer(1),
        default=None,
        help=f"num-server-rounds (default {DEFAULT_SIM_ROUNDS}; with --resume: the run's own)",
    )
    parser.add_argument("--setting", default=None, choices=["fede", "isolation", "collection"], help="(default fede)")
    add_preset_option(parser)
    add_set_option(parser, dest="sets", help="run-config override, e.g. --set model=RotatE (repeatable)")
    parser.add_argument("--run-dir", type=path_arg, default=None, help="output folder (default runs/<timestamp>)")
    parser.add_argument("--num-cpus-per-client", type=integer(1), default=1, help="Ray CPUs of each client (default 1)")
    parser.add_argument(
        "--num-gpus-per-client",
        type=number(0.0),
        default=None,
        help="Ray GPUs per client, fractional (default: a visible CUDA GPU shared by the clients "
        "that train at once, else 0)",
    )
    parser.add_argument(
        "--concurrent-clients",
        type=integer(1),
        default=None,
        metavar="N",
        help="virtual clients training at the same time (default: all; each holds its model in memory)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings, errors and summary lines (logs/run.log keeps every line)",
    )
    parser.add_argument(
        "--refine-only",
        type=path_arg,
        default=None,
        metavar="RUN_DIR",
        help="run only the SimSkip phase + downstream evaluation + report on a finished run "
        "folder (in-process; --set overrides simskip-*/refit-* values)",
    )
    parser.add_argument(
        "--resume",
        type=path_arg,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run after its last checkpointed round, with its own "
        "config.json and data (--rounds raises the budget; --set may change harmless keys "
        "only, a model-defining change is refused)",
    )
    return parser


#: Options that would change a resumed run's data or setting (its config.json decides them).
_NOT_WITH_RESUME = ("dataset", "clients", "partition", "partition_seed", "setting", "run_dir", "refine_only")


def _interrupt(signum: int) -> SystemExit:
    """SIGINT / SIGTERM: unwind once through _run_flower's ``finally`` (the SuperLink, its own
    process group, is stopped by PID) and exit 128 + signum (:mod:`server.signals`)."""
    return SystemExit(128 + signum)


#: Options --refine-only does not use (it reads the finished run folder's own config).
_NOT_WITH_REFINE_ONLY = (
    "dataset",
    "clients",
    "partition",
    "partition_seed",
    "rounds",
    "setting",
    "preset",
    "run_dir",
    "num_gpus_per_client",
    "concurrent_clients",
    "resume",
)


def _flags(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The flags among ``names`` (attribute names) that were given."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]


def parse_and_validate(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every option of ``simskip-sim`` before anything is written or started:
    ranges, exclusive options, the folders named, the GPU share, and the run config the options and
    ``--preset`` / ``--set`` make (:func:`server.run_options.check_run_config`).

    :raises SystemExit: 2 with one line ``simskip-sim: error: ...`` naming the option; 0 after
        ``--help`` / ``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.refine_only is not None:
        given = _flags(args, _NOT_WITH_REFINE_ONLY)
        if given:
            parser.error(f"--refine-only uses the run folder's own config: drop {', '.join(given)}")
        if not args.refine_only.is_dir():
            parser.error(f"--refine-only: {args.refine_only} is not a folder")
    if args.resume is not None:
        given = _flags(args, _NOT_WITH_RESUME)
        if given:
            parser.error(f"--resume continues the run folder's own data and setting: drop {', '.join(given)}")
        try:  # its config.json is read again when the run resumes; the checkpoint is checked there
            resume_run_config(args.resume.expanduser().resolve())
        except ResumeError as err:
            parser.error(f"--resume: {err}")
    if args.run_dir is not None and args.run_dir.exists() and not args.run_dir.is_dir():
        parser.error(f"--run-dir: {args.run_dir} is a file, not a folder")
    if args.dataset is not None and not args.dataset.strip():
        parser.error("--dataset must not be empty (a PyKEEN dataset name or a data folder)")
    if (
        args.dataset is not None
        and any(c in args.dataset for c in "/\\~")
        and not Path(args.dataset).expanduser().exists()
    ):
        parser.error(f"--dataset: {args.dataset} does not exist (a path; a PyKEEN dataset name has no '/')")
    gpus = args.num_gpus_per_client
    if gpus is not None and gpus > 1 and not gpus.is_integer():
        parser.error(f"--num-gpus-per-client must be a fraction <= 1 or a whole number (Ray's rule), got {gpus:g}")
    if gpus and args.setting != "collection" and not cuda_gpu_visible():
        parser.error(f"--num-gpus-per-client {gpus:g} asks for a GPU, but no CUDA GPU is visible (0 for CPU only)")
    try:
        overrides = run_config_overrides(args.preset, args.sets)
    except ValueError as err:
        parser.error(str(err))
    if args.refine_only is None and args.resume is None:
        run_config = {
            "setting": args.setting or "fede",
            "num-server-rounds": DEFAULT_SIM_ROUNDS if args.rounds is None else args.rounds,
            **overrides,
            "min-clients": 3 if args.clients is None else args.clients,
        }
        try:
            check_run_config(run_config)
        except ValueError as err:
            parser.error(f"{RUN_CONFIG_FLAGS}: {err}")
    return args


def _input_errors() -> tuple[type[BaseException], ...]:
    """What ``simskip-sim`` reports as bad input (exit 2): a bad value or file, a run folder that
    cannot be resumed, a missing or corrupt checkpoint."""
    from server.checkpoint import CheckpointError  # heavy (torch): after the options are checked

    return (*INPUT_ERRORS, ResumeError, CheckpointError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``simskip-sim``; returns the exit status (0 done, 2 bad option or input, 1 any
    other error, 130/143 on SIGINT/SIGTERM)."""
    args = parse_and_validate(argv)
    if args.refine_only is not None:

        def refine() -> Path:
            from server.downstream import refine_run_folder  # heavy (torch, pykeen): --refine-only only

            written = refine_run_folder(args.refine_only, parse_set_options(args.sets))
            print(f"[simskip-sim] wrote {', '.join(str(p) for p in written.values())}", flush=True)
            return args.refine_only

        return _summarised(run_command("simskip-sim", refine, input_errors=_input_errors()), args.refine_only)

    run_dir = (args.resume or args.run_dir or default_run_dir()).expanduser().resolve()

    def run() -> Path:
        if args.resume is not None:
            return resume_simulation(
                run_dir,
                rounds=args.rounds,
                overrides=run_config_overrides(args.preset, args.sets),
                num_cpus_per_client=args.num_cpus_per_client,
                num_gpus_per_client=args.num_gpus_per_client,
                concurrent_clients=args.concurrent_clients,
                quiet=args.quiet,
            )
        return run_simulation(
            args.dataset or "UMLS",
            num_clients=3 if args.clients is None else args.clients,
            run_dir=run_dir,
            rounds=DEFAULT_SIM_ROUNDS if args.rounds is None else args.rounds,
            setting=args.setting or "fede",
            overrides=run_config_overrides(args.preset, args.sets),
            partition=args.partition or "relation",
            partition_seed=0 if args.partition_seed is None else args.partition_seed,
            num_cpus_per_client=args.num_cpus_per_client,
            num_gpus_per_client=args.num_gpus_per_client,
            concurrent_clients=args.concurrent_clients,
            quiet=args.quiet,
        )

    with signals.installed("simskip-sim", _interrupt):  # until the partial results are written
        try:
            return _summarised(
                run_command("simskip-sim", run, input_errors=_input_errors(), parameters=PARAMETER_FLAGS), run_dir
            )
        except SystemExit as stop:  # SIGINT / SIGTERM: the SuperLink was stopped on the way out
            if not (isinstance(stop.code, int) and stop.code > 128):
                raise
            _report_interrupted(run_dir, stop.code - 128)
            return stop.code


def _summarised(status: int, run_dir: Path) -> int:
    """After a run that ended well (``status`` 0): print what it found (:func:`server.report.console_summary`)
    as the console's last lines, under ``--quiet`` too; return ``status``."""
    if status == 0:
        from server.report import console_summary  # heavy (torch, pykeen); loaded by the run already

        print(console_summary(run_dir), end="", flush=True)
    return status


def _report_interrupted(run_dir: Path, signum: int) -> None:
    """Write ``RUN_DIR/partial_results.json`` (as simskip-server does) and say how to resume."""
    resume = ["simskip-sim", "--resume", str(run_dir)]
    name = signal.Signals(signum).name
    if not (run_dir / "config.json").is_file():
        print(f"[simskip-sim] {name}: stopped before the run started; nothing to resume", file=sys.stderr, flush=True)
        return
    try:
        path = write_partial_results(run_dir, signum, resume)
        rounds = json.loads(path.read_text()).get("last_completed_round")
    except Exception as err:  # noqa: BLE001 - the run is stopped already; report, do not mask the exit status
        print(f"[simskip-sim] {name}: could not write partial results: {err}", file=sys.stderr, flush=True)
        return
    print(
        f"[simskip-sim] {name}: stopped after round {rounds}; {path}; resume with: {' '.join(resume)}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
