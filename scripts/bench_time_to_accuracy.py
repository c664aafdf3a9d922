#!/usr/bin/env python
"""Time to accuracy of FedE on a federated KG: valid/test MRR per round with timestamps (JSON).

Mode ``simulation`` (the default): the real system, framework included. ``simskip-sim`` (Flower
simulation on Ray, the deployed ServerApp/ClientApp) runs as a subprocess in its own process
group with ``track-test=true`` (clients also rank their test split whenever they validate;
logged, never used for a choice) and ``simskip-rounds=0`` (no SimSkip phase). The launch time is
t0, so Ray's start-up and the data partitioning count. The run folder's ``metrics.jsonl`` is
followed while it runs; for every validated round the report holds the elapsed wall seconds
since t0 (from the row's ``finished_at``), the overall valid MRR, the overall test MRR (the
clients' configured ``eval-protocol``, weighted by each client's test size from the run folder's
``config.json``) and the seconds per phase (local training: slowest client and sum; framework
overhead; aggregation; evaluation). ``time_to_target`` is the elapsed time of the first validated
round whose test MRR reaches ``--target``; ``time_to_best_valid`` that of the best valid MRR so
far. The simulation is stopped (its whole process tree, by PID) once ``--time-budget`` seconds
have passed, or at the target with ``--stop-at-target``.

Mode ``in-process``: FedE without Flower, in one process. Every round
each client loads the server's rows of its entities, trains ``local-epochs`` epochs with its
:class:`client.kge.training.LocalTrainer` (any registered ``training-loop``), returns its rows,
and the server averages each row over its holders (:func:`client.kge.aggregation.aggregate_rows`);
relations and optimizer state stay private. Clients run one after another, so on a machine with
C cores the wall time of a round's training is the *sum* over clients, not the maximum a
simulation with parallel clients would see; both figures are reported. There is no framework
overhead in this mode (``framework_seconds`` is 0 by construction): label figures "in-process".

Every ``--eval-every`` rounds the valid split is evaluated; test is evaluated at the same times
(reported, never used for choices). Overall metrics are weighted by each client's triples
(FedE's protocol). Elapsed seconds count from the start of round 1, evaluations included.
Stops at ``--rounds``, at ``--time-budget`` seconds, or (``--stop-at-target``) once ``--target`` is
reached on test.

Examples (from the project root)::

    python scripts/bench_time_to_accuracy.py --rounds 30 --time-budget 1500 --stop-at-target \\
        --set training-loop=sharednegatives --set corruption-scheme=tail --set eval-protocol=fede \\
        --set eval-every=2 --out tta.json
    python scripts/bench_time_to_accuracy.py --mode in-process --rounds 10 \\
        --set training-loop=sharednegatives --set eval-protocol=fede --out tta-inprocess.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from client.kge.config import add_set_option
from server.time_to_accuracy import (
    MetricsFormatError,
    client_test_sizes,
    read_metrics_rows,
    summarize_rounds,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "FB15k-237-Fed3"


def run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Run FedE rounds in this process (:class:`client.kge.round_engine.RoundEngine`, no early
    stopping: the budget is ``--rounds`` / ``--time-budget`` / ``--target``) and return the report."""
    # torch and the KGE library load only in this mode (simulation mode runs them in a subprocess)
    import numpy as np
    import torch

    from client.kge.aggregation import aggregate_rows
    from client.kge.config import KGEConfig, parse_set_options
    from client.kge.evaluation import weighted_overall
    from client.kge.models import initial_entity_table
    from client.kge.presets import preset
    from client.kge.round_engine import RoundEngine
    from client.kge.training import LocalTrainer
    from kg_datasets import load_federated

    torch.set_num_threads(args.threads)
    config = KGEConfig.from_run_config({**preset(args.preset), **parse_set_options(args.set)})
    started = time.perf_counter()
    kg = load_federated(args.data, num_clients=args.num_clients)
    trainers = [LocalTrainer(client, config, device=args.device) for client in kg.clients]
    holders = [np.asarray(client.entity_ids, dtype=np.int64) for client in kg.clients]
    setup_seconds = time.perf_counter() - started

    class Steps:
        """The in-process round's steps; one ``record`` per round."""

        def __init__(self) -> None:
            self.table = initial_entity_table(config, kg.num_entities, seed=config.seed)
            self.rounds: list[dict[str, Any]] = []
            self.reached_at: float | None = None
            self.record: dict[str, Any] = {}
            self.clock, self.cpu_clock = time.perf_counter(), time.process_time()

        def train(self, server_round: int) -> None:
            self.record = {"round": server_round}
            client_seconds, losses = [], {}
            for trainer, ids in zip(trainers, holders):
                trainer.set_entity_embeddings(self.table[ids])
                begin = time.perf_counter()
                losses[str(trainer.graph.client_id)] = trainer.train(config.local_epochs)
                client_seconds.append(time.perf_counter() - begin)
            self.record.update(
                local_training_seconds=sum(client_seconds),
                local_training_seconds_per_client=client_seconds,
                local_training_seconds_max_client=max(client_seconds),
                framework_seconds=0.0,
                losses=losses,
            )

        def aggregate(self, server_round: int, updates: None) -> None:
            begin = time.perf_counter()
            self.table = aggregate_rows(
                self.table, [(ids, t.get_entity_embeddings()) for t, ids in zip(trainers, holders)]
            )
            for trainer, ids in zip(trainers, holders):
                trainer.set_entity_embeddings(self.table[ids])
            self.record["aggregation_seconds"] = time.perf_counter() - begin

        def validate(self, server_round: int) -> float:
            begin = time.perf_counter()
            for split in ("valid", "test"):
                per_client = [t.evaluate(split, config.eval_protocol) for t in trainers]
                self.record[split] = {"overall": weighted_overall(per_client), "per_client": per_client}
            self.record["evaluation_seconds"] = time.perf_counter() - begin
            return self.record["valid"]["overall"]["mrr"]

        def keep_best(self, server_round: int) -> None:  # never called: no early stopping here
            pass

        def end_round(self, server_round: int, validated: bool, stop: bool) -> bool:
            record = self.record
            # The old order of the record's keys is kept (the committed JSON files are read by key).
            record = {
                key: record[key]
                for key in (
                    "round",
                    "aggregation_seconds",
                    "local_training_seconds",
                    "local_training_seconds_per_client",
                    "local_training_seconds_max_client",
                    "framework_seconds",
                    "losses",
                    "valid",
                    "test",
                    "evaluation_seconds",
                )
                if key in record
            }
            record["elapsed_seconds"] = time.perf_counter() - self.clock
            # CPU seconds of this process (all threads): comparable across machine load, unlike wall time
            record["cpu_seconds"] = time.process_time() - self.cpu_clock
            record["timestamp"] = time.time()
            record["load_average_1min"] = os.getloadavg()[0]
            self.rounds.append(record)
            if args.out is not None:  # keep what is measured if the run is stopped early
                _write_json(
                    args.out,
                    {
                        "mode": "in-process",
                        "partial": True,
                        "config": config.to_run_config(),
                        "setup_seconds": setup_seconds,
                        "rounds": self.rounds,
                    },
                )
            print(
                json.dumps(
                    {k: record[k] for k in ("round", "elapsed_seconds")}
                    | {s: record[s]["overall"]["mrr"] for s in ("valid", "test") if s in record}
                ),
                file=sys.stderr,
                flush=True,
            )
            if (
                "test" in record
                and args.target is not None
                and self.reached_at is None
                and record["test"]["overall"]["mrr"] >= args.target
            ):
                self.reached_at = record["elapsed_seconds"]
                if args.stop_at_target:
                    return True
            return record["elapsed_seconds"] >= args.time_budget

    steps = Steps()
    RoundEngine(num_rounds=args.rounds, eval_every=config.eval_every).run(steps)
    rounds, reached_at = steps.rounds, steps.reached_at
    evaluated = [r for r in rounds if "valid" in r]
    best = max(evaluated, key=lambda r: r["valid"]["overall"]["mrr"]) if evaluated else None
    return {
        "mode": "in-process",
        "data": args.data,
        "config": config.to_run_config(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "setup_seconds": setup_seconds,
        "rounds": rounds,
        "best_valid_round": best["round"] if best else None,
        "best_valid_mrr": best["valid"]["overall"]["mrr"] if best else None,
        "test_at_best_valid": best["test"]["overall"] if best else None,
        "seconds_to_best_valid": best["elapsed_seconds"] if best else None,
        "target_test_mrr": args.target,
        "seconds_to_target": reached_at,
        "totals": {
            phase: sum(r.get(phase, 0.0) for r in rounds)
            for phase in ("local_training_seconds", "framework_seconds", "aggregation_seconds", "evaluation_seconds")
        },
    }


# --- simulation mode ---------------------------------------------------------------------------

#: Target test MRR: FedE's own after 5 rounds (3,045 s of training) on FB15k-237-Fed3, TransE.
FEDE_TARGET_MRR = 0.356


def simulation_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The ``simskip-sim`` command line of a time-to-accuracy run."""
    script = Path(sys.executable).with_name("simskip-sim")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from server.simulation import main; sys.exit(main(sys.argv[1:]))"]
    )
    command += [
        "--dataset",
        str(args.data),
        "--rounds",
        str(args.rounds),
        "--run-dir",
        str(run_dir),
        "--num-cpus-per-client",
        str(args.num_cpus_per_client),
    ]
    if args.num_clients is not None:
        command += ["--clients", str(args.num_clients)]
    if args.preset is not None:
        command += ["--preset", args.preset]
    # track-test: test metrics at every validation; no SimSkip phase after FedE
    for item in ["track-test=true", "simskip-rounds=0", *args.set]:
        command += ["--set", item]
    return command


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MetricsFormatError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None


def _log_tail(path: Path, lines: int = 30) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


def run_simulation_mode(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Launch ``simskip-sim``, follow its metrics until done / budget / target; return (report, status)."""
    import subprocess

    from client.pids import process_tree, stop_process

    run_dir = (args.run_dir or PROJECT_ROOT / "runs" / time.strftime("tta-%Y%m%d-%H%M%S", time.gmtime())).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    command = simulation_command(args, run_dir)
    log_path = run_dir / "bench_simulation.log"
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    base: dict[str, Any] = {
        "mode": "simulation",
        "data": str(args.data),
        "run_dir": str(run_dir),
        "command": command,
        "time_budget_seconds": args.time_budget,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }
    rows: list[dict[str, Any]] = []
    stop_reason = None
    seen = 0
    with log_path.open("wb") as log:
        t0 = time.time()
        # own session: the simulation and its Ray processes form one tree, stopped by PID below
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        base["t0"] = t0
        base["pid"] = process.pid
        try:
            while True:
                finished = process.poll() is not None
                rows = read_metrics_rows(run_dir / "metrics.jsonl")
                summary = summarize_rounds(
                    rows, t0=t0, test_sizes=client_test_sizes(_read_config(run_dir)), target=args.target
                )
                if len(rows) > seen:
                    seen = len(rows)
                    _report_progress(summary["rounds"][-1])
                    if args.out is not None:  # keep what is measured if the run is stopped early
                        _write_json(args.out, base | {"partial": True} | summary)
                if finished:
                    break
                if time.time() - t0 >= args.time_budget:
                    stop_reason = "time-budget"
                    break
                if args.stop_at_target and summary["time_to_target"] is not None:
                    stop_reason = "target"
                    break
                time.sleep(args.poll_seconds)
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        finally:
            # the tree before stopping: SuperLink, SuperExec, flwr-simulation and Ray's processes
            tree = [process.pid, *(pid for pid, _ in process_tree(process.pid))]
            if process.poll() is None:
                stop_process(process, timeout=60.0)
            base["stopped_pids"] = tree if stop_reason is not None else []
    wall = time.time() - t0
    config = _read_config(run_dir)
    rows = read_metrics_rows(run_dir / "metrics.jsonl")
    summary = summarize_rounds(rows, t0=t0, test_sizes=client_test_sizes(config), target=args.target)
    validated = [r for r in summary["rounds"] if r["validated"]]
    warnings = []
    if validated and all(r.get("test_mrr") is None for r in validated):
        warnings.append("validated rounds carry no test metrics: does the ClientApp honour track-test?")
    failed = stop_reason is None and process.returncode != 0
    report = (
        base
        | {
            "stop_reason": stop_reason or ("failed" if failed else "finished"),
            "returncode": process.returncode,
            "wall_seconds": wall,
            "load_average_1min_at_end": os.getloadavg()[0],
            "eval_protocol": (config.get("kge") or {}).get("eval-protocol"),
            "config": config.get("kge"),
            "federation": config.get("federation"),
            "test_sizes": client_test_sizes(config),
            "warnings": warnings,
        }
        | summary
    )
    if failed:
        report["simulation_log_tail"] = _log_tail(log_path)
    return report, (1 if failed else 0)


def _report_progress(record: dict[str, Any]) -> None:
    line = {key: record.get(key) for key in ("round", "elapsed_seconds", "valid_mrr", "test_mrr")}
    print(json.dumps(line), file=sys.stderr, flush=True)


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically (the run folder's writer: temp file, fsync, rename)."""
    from client.kge.run_folder import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON report (atomically) and print it."""
    from server.run_options import add_preset_option

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["simulation", "in-process"], default="simulation")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="as kg_datasets.load_federated")
    parser.add_argument("--num-clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--time-budget", type=float, default=1500.0, help="stop after this many seconds")
    parser.add_argument(
        "--target",
        "--target-mrr",
        dest="target",
        type=float,
        default=FEDE_TARGET_MRR,
        help="test MRR whose first reach is reported (default: FedE's 0.356)",
    )
    parser.add_argument("--stop-at-target", action="store_true", help="stop once test MRR reaches --target")
    add_preset_option(parser)
    add_set_option(parser, help="run-config override")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file")
    simulation = parser.add_argument_group("simulation mode")
    simulation.add_argument("--run-dir", type=Path, default=None, help="run folder (default runs/tta-<UTC time>)")
    simulation.add_argument("--num-cpus-per-client", type=int, default=1, help="Ray CPUs of one virtual client")
    simulation.add_argument("--poll-seconds", type=float, default=2.0, help="how often metrics.jsonl is read")
    in_process = parser.add_argument_group("in-process mode")
    in_process.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    in_process.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(
        parser,
        inputs=[args.data],
        files={"--out": args.out},
        folders={"--run-dir": getattr(args, "run_dir", None)},
    )
    if args.mode == "simulation":
        report, status = run_simulation_mode(args)
    else:
        report, status = run_in_process(args), 0
    text = json.dumps(report, indent=2)
    if args.out is not None:
        _write_json(args.out, report)
    print(text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
