"""Memory over many simulated rounds: is the RSS of the server and of the clients flat?

Runs ``simskip-sim`` (tiny KGE config by default) as a child process and samples, every
``--sample-every`` seconds, the *current* resident set size (psutil's ``memory_info().rss``)
of every process in its tree, attributing each sample to the round in progress (the number of
rows in ``metrics.jsonl`` + 1). Why from the outside: the run's own metrics record only the peak
RSS (``ru_maxrss``: ``server_peak_rss_mb`` in each ``metrics.jsonl`` row, ``peak-rss-mb`` in each
client's train metrics), which can only grow and so can hide a trend; both are reported.

Roles in the simulation's process tree: ``server`` is the ``flwr-simulation`` process (it runs
the ServerApp), ``clients`` are Ray's ``ray::ClientAppActor`` workers (each serves one or more
virtual clients), ``other`` is the rest (SuperLink, Ray's daemons, this command's driver).

Output (JSON, ``--out`` or stdout): per round the largest sample of the server's RSS, of each
client worker's RSS, and the recorded peaks; ``growth``: ``(value[late] - value[early]) / value[early]``
for each measure, where ``early`` is the first round from 2 on with a sample and ``late`` the last
one (round 1 includes start-up and the handshake, hence round 2 as the base). Both are looked for
within the first and last quarter of the rounds (``growth_rounds`` says which were compared): a
tiny round can end between two samples, more often the faster the machine, and the figure must
not depend on that.

Example::

    python scripts/bench_memory.py --rounds 20 --dataset Kinships --out bench_memory.json

Works where psutil does (Linux, macOS, the BSDs): process trees, RSS and command lines come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from client.kge.config import add_set_option
from client.kge.run_folder import JsonlFormatError, read_jsonl

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: A KGE configuration whose rounds take about a second on 2 CPU cores: the point is to run
#: many rounds, not to train well.
TINY_SETS = (
    "embedding-dim=8",
    "local-epochs=1",
    "num-negs-per-pos=4",
    "eval-every=1",
    "batch-size=256",
    "patience=1000",
    "simskip-rounds=0",
)


# ----------------------------------------------------------------------------- processes
def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (by parent pid), as they are now."""
    from client.pids import process_tree as descendants  # (pid, psutil.Process) of each descendant

    return [root, *(pid for pid, _ in descendants(root))]


def rss_mb(pid: int) -> float | None:
    """Current resident set size of ``pid`` in MiB; ``None`` when it is gone or a zombie (no memory left)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.memory_info().rss / (1024.0 * 1024.0)
    except psutil.Error:  # NoSuchProcess (ZombieProcess included) or AccessDenied
        return None


def role_of(pid: int) -> str:
    """``server``, ``clients`` or ``other`` from the process's command line."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "other"
    if cmdline.startswith("ray::ClientAppActor"):
        return "clients"
    if "flwr-simulation" in cmdline:
        return "server"
    return "other"


def _rounds_done(metrics: Path) -> int:
    """Rows in ``metrics`` so far; 0 while it cannot be read (the sampler thread must keep sampling)."""
    try:
        return len(read_jsonl(metrics))
    except (OSError, JsonlFormatError):
        return 0


class TreeSampler(threading.Thread):
    """Samples the RSS of ``root``'s process tree every ``interval`` s until :meth:`stop`.

    ``samples[round][pid] = (role, largest RSS in MiB seen while that round was in progress)``.
    """

    def __init__(self, root: int, metrics: Path, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.metrics, self.interval = root, metrics, interval
        self.samples: dict[int, dict[int, tuple[str, float]]] = {}
        self.seen_pids: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        roles: dict[int, str] = {}
        while not self._stop_event.is_set():
            current_round = _rounds_done(self.metrics) + 1
            bucket = self.samples.setdefault(current_round, {})
            for pid in process_tree(self.root):
                self.seen_pids.add(pid)
                value = rss_mb(pid)
                if value is None:
                    continue
                # a Ray worker renames itself to ray::<Actor> only once its actor starts: re-read "other"
                role = roles.get(pid) or role_of(pid)
                if role != "other":
                    roles[pid] = role
                previous = bucket.get(pid, (role, 0.0))[1]
                bucket[pid] = (role, max(previous, value))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


# ----------------------------------------------------------------------------- measurement
def _compared_rounds(series: dict[int, float], base_round: int, last_round: int) -> tuple[int, int] | None:
    """(early, late): the first sampled round in the first quarter of ``base_round..last_round``
    and the last sampled one in the last quarter; ``None`` when either quarter has no sample."""
    window = max(1, (last_round - base_round + 1) // 4)
    early = [r for r in series if base_round <= r < base_round + window]
    late = [r for r in series if last_round - window < r <= last_round]
    if not early or not late:
        return None
    return min(early), max(late)


def _growth(series: dict[int, float], base_round: int, last_round: int) -> float | None:
    rounds = _compared_rounds(series, base_round, last_round)
    if rounds is None or series[rounds[0]] <= 0:
        return None
    early, late = rounds
    return (series[late] - series[early]) / series[early]


def _stop_tree(proc: subprocess.Popen, pids: Sequence[int]) -> None:
    """SIGTERM the command (it stops its SuperLink), then SIGKILL whatever of ``pids`` is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for pid in pids:
        if pid != proc.pid and rss_mb(pid) is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def measure_memory(
    run_dir: Path,
    *,
    rounds: int = 20,
    dataset: str = "Kinships",
    clients: int = 3,
    sets: Sequence[str] = TINY_SETS,
    sample_every: float = 0.25,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run one simulation of ``rounds`` rounds and report RSS per round (see the module doc).

    :param run_dir: the simulation's run folder (must not hold another run).
    :param sets: ``key=value`` run-config overrides passed as ``--set``.
    :param timeout: seconds before the simulation is stopped (then ``RuntimeError``).
    :raises RuntimeError: when the simulation fails or times out (its log tail is in the message).
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "server.simulation",
        "--dataset",
        dataset,
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--run-dir",
        str(run_dir),
    ]
    for item in sets:
        command += ["--set", item]
    log_path = run_dir / "bench_memory.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=str(PROJECT_ROOT), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    sampler = TreeSampler(proc.pid, run_dir / "metrics.jsonl", interval=sample_every)
    sampler.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        sampler.stop()
        _stop_tree(proc, sorted(sampler.seen_pids))
    wall = time.perf_counter() - started
    if returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        reason = "timed out" if returncode is None else f"exited with {returncode}"
        raise RuntimeError(f"simulation {reason} after {wall:.0f} s; log {log_path}:\n{tail}")

    rows = read_jsonl(run_dir / "metrics.jsonl")
    per_round: list[dict[str, Any]] = []
    server_current: dict[int, float] = {}
    client_current: dict[int, dict[int, float]] = {}
    server_peak: dict[int, float] = {}
    client_peak: dict[int, float] = {}
    for row in rows:
        r = int(row["round"])
        bucket = sampler.samples.get(r, {})
        server = max((v for role, v in bucket.values() if role == "server"), default=None)
        workers = {pid: v for pid, (role, v) in bucket.items() if role == "clients"}
        recorded = [m["peak-rss-mb"] for m in row.get("train", {}).values() if "peak-rss-mb" in m]
        entry = {
            "round": r,
            "seconds": row.get("seconds"),
            "processes": len(bucket),
            "server_rss_mb": server,
            "client_worker_rss_mb": {str(pid): round(v, 1) for pid, v in sorted(workers.items())},
            "other_rss_mb": round(sum(v for role, v in bucket.values() if role == "other"), 1),
            "server_peak_rss_mb": row.get("server_peak_rss_mb"),
            "client_peak_rss_mb": max(recorded) if recorded else None,
        }
        per_round.append(entry)
        if server is not None:
            server_current[r] = server
        for pid, value in workers.items():
            client_current.setdefault(pid, {})[r] = value
        if entry["server_peak_rss_mb"]:
            server_peak[r] = float(entry["server_peak_rss_mb"])
        if entry["client_peak_rss_mb"]:
            client_peak[r] = float(entry["client_peak_rss_mb"])

    last = max((int(row["round"]) for row in rows), default=0)
    base = 2
    worker_growth = {
        str(pid): _growth(series, base, last)
        for pid, series in client_current.items()
        if _compared_rounds(series, base, last) is not None
    }
    return {
        "benchmark": "memory",
        "dataset": dataset,
        "clients": clients,
        "rounds": rounds,
        "rounds_run": len(rows),
        "sets": list(sets),
        "sample_every_seconds": sample_every,
        "wall_seconds": round(wall, 1),
        "base_round": base,
        "last_round": last,
        "growth_rounds": {
            "server_current": _compared_rounds(server_current, base, last),
            "client_workers_current": {
                str(pid): _compared_rounds(series, base, last) for pid, series in client_current.items()
            },
            "server_peak_recorded": _compared_rounds(server_peak, base, last),
            "client_peak_recorded": _compared_rounds(client_peak, base, last),
        },
        "growth": {
            "server_current": _growth(server_current, base, last),
            "client_workers_current": worker_growth,
            "client_workers_current_max": max((g for g in worker_growth.values() if g is not None), default=None),
            "server_peak_recorded": _growth(server_peak, base, last),
            "client_peak_recorded": _growth(client_peak, base, last),
        },
        "per_round": per_round,
        "run_dir": str(run_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the measurement and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dataset", default="Kinships")
    parser.add_argument("--clients", type=int, default=3)
    add_set_option(parser, dest="sets", help=f"run-config override (repeatable; default: {' '.join(TINY_SETS)})")
    parser.add_argument("--sample-every", type=float, default=0.25, help="seconds between RSS samples")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: stdout)")
    args = parser.parse_args(argv)
    from client.kge.run_folder import check_script_outputs  # the project's one output rule

    check_script_outputs(parser, inputs=[args.dataset], files={"--out": args.out}, folders={"--run-dir": args.run_dir})
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-memory-")) / "run"
    report = measure_memory(
        run_dir,
        rounds=args.rounds,
        dataset=args.dataset,
        clients=args.clients,
        sets=tuple(args.sets) if args.sets else TINY_SETS,
        sample_every=args.sample_every,
    )
    text = json.dumps(report, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)  # atomic: a reader never sees half a report
        print(f"[bench_memory] {args.out}: growth {json.dumps(report['growth'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
