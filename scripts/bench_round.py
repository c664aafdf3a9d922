#!/usr/bin/env python
"""Seconds per FedE round, bytes per round and peak memory, in simulation and in deployment.

Runs the real commands' code paths (``simskip-sim``'s :func:`server.simulation.run_simulation`;
``simskip-server`` + one ``simskip-client`` process per party on loopback) on a federated data
folder (default ``../shared/data/FB15k-237-Fed3``), reads the run folder's ``metrics.jsonl``
and prints one JSON document:

* per round: wall seconds of the training phase split into local training (the slowest
  client's ``LocalTrainer.train``), aggregation (server) and framework overhead (the rest:
  message transport, ClientApp process start-up, imports, data and model set-up); validation
  seconds separately;
* bytes of entity rows sent and received per training round against FedE's full-table
  broadcast (``num_entities x entity_dim x 4`` bytes per client each way);
* peak RSS per process (``VmHWM`` of every descendant process, polled; ClientApps and the
  ServerApp also report their own ``ru_maxrss``).

Short runs: ``--local-epochs 1 --max-triples 5000`` trims every client's train split (valid and
test keep only triples over the kept entities and relations). Example::

    python scripts/bench_round.py --mode both --rounds 2 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from client.kge.config import add_set_option
from client.kge.run_folder import read_jsonl

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "FB15k-237-Fed3"


# ------------------------------------------------------------------------------ memory
class PeakRSSPoller(threading.Thread):
    """Polls ``VmHWM`` (peak RSS) of every descendant of this process, keyed by pid."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop_event = threading.Event()

    @staticmethod
    def _children_map() -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        return children

    def _descendants(self) -> list[int]:
        children, found, stack = self._children_map(), [], [os.getpid()]
        while stack:
            for child in children.get(stack.pop(), []):
                found.append(child)
                stack.append(child)
        return found

    def poll(self) -> None:
        for pid in self._descendants():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            hwm = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
            if hwm is None:
                continue
            mib = int(hwm.split()[1]) / 1024.0
            name = " ".join(Path(part.decode(errors="replace")).name for part in cmdline[:2] if part)
            if mib > self.peaks.get(pid, ("", 0.0))[1]:
                self.peaks[pid] = (name, mib)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        """Stop polling; return ``"name [pid]" -> peak MiB`` for processes above 50 MiB."""
        self._stop_event.set()
        self.join(timeout=5)
        return {f"{name} [{pid}]": round(mib, 1) for pid, (name, mib) in sorted(self.peaks.items()) if mib > 50}


# ------------------------------------------------------------------------------ data
def trimmed_copy(source: Path, out: Path, max_triples: int) -> Path:
    """Copy client folders ``0/ 1/ ...`` keeping the first ``max_triples`` train triples each.

    Valid/test keep the triples whose entities and relation occur in the kept train triples
    (a party's valid/test may only use its train vocabulary).
    """
    for client in sorted(p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
        target = out / client.name
        target.mkdir(parents=True, exist_ok=True)
        train = client.joinpath("train.txt").read_text().splitlines()[:max_triples]
        entities = {part for line in train for i, part in enumerate(line.split("\t")) if i != 1}
        relations = {line.split("\t")[1] for line in train}
        (target / "train.txt").write_text("\n".join(train) + "\n")
        for split in ("valid", "test"):
            kept = []
            for line in client.joinpath(f"{split}.txt").read_text().splitlines():
                h, r, t = line.split("\t")
                if h in entities and t in entities and r in relations:
                    kept.append(line)
            (target / f"{split}.txt").write_text("\n".join(kept) + ("\n" if kept else ""))
    return out


# ------------------------------------------------------------------------------ runs
def run_deployment(
    data: Path,
    run_dir: Path,
    overrides: dict[str, Any],
    rounds: int,
    *,
    client_threads: int | None = 1,
    cold_start: bool = False,
) -> None:
    """simskip-server + one simskip-client per client folder on loopback; all stopped by PID.

    :param client_threads: torch threads per ClientApp process (``simskip-client --threads``);
        1 by default because all parties share this machine's cores here.
    :param cold_start: start every ClientApp process cold (``simskip-client --cold-start``).
    """
    from client.pids import free_port, stop_process

    clients = sorted(p for p in data.iterdir() if p.is_dir() and p.name.isdigit())
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server_cmd = [
        str(bin_dir / "simskip-server"),
        "--run-dir",
        str(run_dir),
        "--port",
        str(port),
        "--insecure",
        "--min-clients",
        str(len(clients)),
        "--rounds",
        str(rounds),
    ]
    for key, value in overrides.items():
        server_cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, str) else value}"]
    logs = run_dir.parent / f"{run_dir.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    client_flags = ["--threads", str(client_threads)] if client_threads else []
    client_flags += ["--cold-start"] if cold_start else []
    processes, log_files = [], []

    def log_file(name: str):
        log_files.append(open(logs / name, "wb"))  # noqa: SIM115 - closed in the finally below
        return log_files[-1]

    try:
        processes.append(
            subprocess.Popen(
                server_cmd, stdout=log_file("server.log"), stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        for client in clients:
            processes.append(
                subprocess.Popen(
                    [
                        str(bin_dir / "simskip-client"),
                        "--server",
                        f"127.0.0.1:{port}",
                        "--data",
                        str(client),
                        "--insecure",
                        "--output-dir",
                        str(run_dir.parent / f"{run_dir.name}-party{client.name}"),
                        *client_flags,
                    ],
                    stdout=log_file(f"party{client.name}.log"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        code = processes[0].wait()
        if code != 0:
            raise RuntimeError(f"simskip-server exited {code}; see {logs / 'server.log'}")
    finally:
        for proc in reversed(processes):  # each stops its own SuperLink/SuperNode on SIGTERM
            stop_process(proc, timeout=30)
        for handle in log_files:
            handle.close()


def run_sim(
    data: Path, run_dir: Path, overrides: dict[str, Any], rounds: int, concurrent_clients: int | None = None
) -> None:
    from server.simulation import run_simulation

    num_clients = len([p for p in data.iterdir() if p.is_dir() and p.name.isdigit()])
    run_simulation(
        str(data),
        num_clients=num_clients,
        run_dir=run_dir,
        rounds=rounds,
        overrides=overrides,
        concurrent_clients=concurrent_clients,
    )


def summarize(run_dir: Path, mode: str, wall: float, peaks: dict[str, float]) -> dict[str, Any]:
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    num_entities, width = config["num_entities"], config["entity_dim"]
    num_clients = len(config["clients"])
    full_broadcast = num_entities * width * 4 * num_clients  # FedE's public code, each direction
    rounds = []
    for row in rows:
        training = max(m["train-seconds"] for m in row["train"].values())
        rounds.append(
            {
                "round": row["round"],
                "train_phase_seconds": row["train_phase_seconds"],
                "local_training_seconds": round(training, 3),
                # all clients' training: on fewer cores than clients the round cannot take less than
                # this divided by the cores, whatever the framework does
                "local_training_seconds_sum": round(sum(m["train-seconds"] for m in row["train"].values()), 3),
                "aggregation_seconds": row["aggregation_seconds"],
                "framework_overhead_seconds": row["overhead_seconds"],
                "framework_overhead_fraction": round(row["overhead_seconds"] / row["train_phase_seconds"], 4),
                "validation_seconds": row["evaluation_seconds"],
                "bytes_sent": row["bytes_sent"],
                "bytes_received": row["bytes_received"],
                "bytes_fraction_of_full_broadcast": round(
                    (row["bytes_sent"] + row["bytes_received"]) / (2 * full_broadcast), 4
                ),
                "client_peak_rss_mib": {cid: round(m.get("peak-rss-mb", 0.0), 1) for cid, m in row["train"].items()},
                "server_app_peak_rss_mib": row.get("server_peak_rss_mb"),
            }
        )
    final = json.loads((run_dir / "final_metrics.json").read_text())
    return {
        "mode": mode,
        "run_dir": str(run_dir),
        "wall_seconds": round(wall, 2),
        "num_entities": num_entities,
        "entity_dim": width,
        "clients": config["clients"],
        "kge": config["kge"],
        "full_broadcast_bytes_per_direction": full_broadcast,
        "rounds": rounds,
        "test_overall": final["test_overall"],
        "process_peak_rss_mib": peaks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of client folders 0/ 1/ ...")
    parser.add_argument(
        "--mode",
        choices=["sim", "deploy", "deploy-cold", "both"],
        default="both",
        help="deploy: warm-started ClientApp processes (simskip-client's default); "
        "deploy-cold: Flower's cold start per message; both: sim + deploy",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="TransE")
    parser.add_argument("--local-epochs", type=int, default=None, help="default: KGEConfig's (3)")
    parser.add_argument("--max-triples", type=int, default=None, help="keep this many train triples per client")
    add_set_option(parser, dest="sets")
    parser.add_argument(
        "--client-threads",
        type=int,
        default=1,
        help="torch threads per deployed ClientApp process (0: torch's default)",
    )
    parser.add_argument(
        "--concurrent-clients",
        type=int,
        default=None,
        help="sim: clients training at once (simskip-sim --concurrent-clients; default all)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where runs go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.data], files={"--out": args.out}, folders={"--work-dir": args.work_dir})

    from client.kge.config import parse_set_options

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="simskip-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    if args.max_triples:
        data = trimmed_copy(data, work / "data-trimmed", args.max_triples)
    # KGE rounds only: no SimSkip phase unless asked for with --set simskip-rounds=N
    overrides: dict[str, Any] = {
        "model": args.model,
        "eval-every": args.rounds + 1,
        "simskip-rounds": 0,
        **parse_set_options(args.sets),
    }
    if args.local_epochs is not None:
        overrides["local-epochs"] = args.local_epochs

    load_at_start = round(os.getloadavg()[0], 2)
    results = []
    modes = ["sim", "deploy"] if args.mode == "both" else [args.mode]
    for mode in modes:
        run_dir = work / f"run-{mode}"
        poller = PeakRSSPoller()
        poller.start()
        started = time.perf_counter()
        try:
            if mode == "sim":
                run_sim(data, run_dir, overrides, args.rounds, concurrent_clients=args.concurrent_clients)
            else:
                run_deployment(
                    data,
                    run_dir,
                    overrides,
                    args.rounds,
                    client_threads=args.client_threads or None,
                    cold_start=mode == "deploy-cold",
                )
        finally:
            peaks = poller.stop()
        results.append(summarize(run_dir, mode, time.perf_counter() - started, peaks))
    report = {
        "data": str(args.data),
        "max_triples": args.max_triples,
        "concurrent_clients": args.concurrent_clients,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load_at_start,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
