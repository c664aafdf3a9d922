"""Memory stays flat over 20 simulated rounds (issue 6, item 10).

Runs ``scripts/bench_memory.py``'s measurement: Kinships, 3 clients, 20 tiny rounds in
simulation, the current RSS of the server (``flwr-simulation``) and of each Ray client worker
sampled from ``/proc`` while each round runs, plus the peaks the run itself records. Growth
from an early round (the first sampled of rounds 2-5; round 1 includes start-up) to a late one
(the last sampled of rounds 17-20) must stay under 10 % for each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH = 0.10


def _bench_memory():
    return load_script("bench_memory")


def test_process_tree_and_rss_of_a_child():
    bench = _bench_memory()
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (bench.rss_mb(child.pid) or 0) < 64 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert child.pid in bench.process_tree(os.getpid())
        assert bench.rss_mb(child.pid) >= 64  # the 64 MiB buffer is resident
        assert bench.role_of(child.pid) == "other"
    finally:
        child.kill()
        child.wait()
    assert bench.rss_mb(child.pid) is None


@pytest.mark.long
@pytest.mark.slow  # 20 rounds plus start-up: ~2-3 min on 2 loaded cores
@pytest.mark.timeout(1000)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rss_is_flat_over_20_rounds(tmp_path):
    report = _bench_memory().measure_memory(tmp_path / "run", rounds=20, dataset="Kinships", clients=3)
    assert report["rounds_run"] == 20 and report["base_round"] == 2 and report["last_round"] == 20
    growth = report["growth"]
    assert growth["server_current"] is not None, (
        f"the server process was not sampled in both rounds 2-5 and 17-20: {report['growth_rounds']}"
    )
    assert growth["client_workers_current"], "no client worker was sampled in both rounds 2-5 and 17-20"
    checks = {
        "server_current": growth["server_current"],
        "server_peak_recorded": growth["server_peak_recorded"],
        "client_peak_recorded": growth["client_peak_recorded"],
        **{f"client_worker_{pid}": g for pid, g in growth["client_workers_current"].items()},
    }
    too_much = {name: g for name, g in checks.items() if g is None or g >= MAX_GROWTH}
    assert not too_much, f"RSS growth from round 2 to 20 >= {MAX_GROWTH:.0%}: {too_much}; report {report['per_round']}"
