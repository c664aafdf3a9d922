"""Benchmark of the data command on FB15k-237 (JSON on stdout; run by hand, not by tests).

Times, as separate processes (import time included), the two targets of the ``kg_datasets``
issue: ``simskip-data stats <shared>/FB15k-237-Fed3`` and ``simskip-data partition
<shared>/FB15k-237 OUT --clients 10`` (FedE relation partition written to disk); each must take
under 30 s on a 2-core machine. Reports wall and CPU seconds and the peak resident memory.

Usage::

    python scripts/bench_loaders.py [--shared ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(argv: list[str]) -> dict:
    """Run one command in a fresh child process; wall/CPU seconds and peak RSS of that child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # A wrapper process per run so that ru_maxrss (a maximum over waited-for children) is this run's own.
    code = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
        "peak_rss_mib": round(int(proc.stdout.strip().splitlines()[-1]) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data",
        help="the shared data folder (default: ../shared/data from the project root)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (default 3)")
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "kg_datasets.cli"]
    with tempfile.TemporaryDirectory(prefix="kg-bench-") as tmp:
        commands = {
            "stats_fb15k237_fed3": cli + ["stats", str(args.shared / "FB15k-237-Fed3")],
            "partition_fb15k237_fede_c10": cli
            + ["partition", str(args.shared / "FB15k-237"), str(Path(tmp) / "fed10"), "--clients", "10", "--overwrite"],
        }
        results = {name: [_run(cmd) for _ in range(args.repeat)] for name, cmd in commands.items()}
    report = {
        "target_s": 30,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "results": {
            name: {
                "runs": runs,
                "best_wall_s": min(r["wall_s"] for r in runs),
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
            for name, runs in results.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
