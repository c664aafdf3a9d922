"""A party's SuperNode SIGKILLed in the middle of a round, with real processes on loopback.

simskip-server plus 3 simskip-client processes (Kinships partitioned by relation, a tiny model).
While round 2 trains, party 1's SuperNode (and everything in its process group) gets SIGKILL;
Flower answers for the dead node once its heartbeat expires, so round 2 completes with the two
others and records the failure. The party is restarted with the same data and output folder: its
new SuperNode (new node id, empty state) is re-registered by client id at the start of round 3,
restores its private state of round 1 from its own checkpoint and trains again. The run ends
with exit 0 and test metrics from all three parties. Every process is stopped here, by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.launcher import free_port, stop_process

TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "batch-size=512", "eval-every=3",
        "simskip-rounds=0", "min-clients-timeout=300.0", "round-timeout=300.0"]


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _wait_for(path: Path, pattern: str, deadline: float, processes: list[subprocess.Popen]) -> re.Match:
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if match := re.search(pattern, text):
            return match
        if processes[0].poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"{pattern!r} not seen in {path.name}:\n{text[-3000:]}")


@pytest.mark.long
@pytest.mark.slow  # ~3-4 minutes on 2 cores: a ClientApp process per message plus Flower's heartbeat expiry (<= 60 s)
@pytest.mark.timeout(900)
def test_a_party_killed_mid_round_is_left_out_then_rejoins(tmp_path):
    from kg_datasets import load_federated

    data = tmp_path / "data"
    load_federated("Kinships", num_clients=3, partition="relation", seed=0).write(data)
    run_dir = tmp_path / "server-run"
    port = free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    server_cmd = [_script("simskip-server"), "--run-dir", str(run_dir), "--port", str(port), "--insecure",
                  "--min-clients", "3", "--rounds", "3"]
    for item in TINY:
        server_cmd += ["--set", item]

    def client(k: int, attempt: int) -> subprocess.Popen:
        return subprocess.Popen(
            [_script("simskip-client"), "--server", f"127.0.0.1:{port}", "--data", str(data / str(k)),
             "--insecure", "--output-dir", str(tmp_path / f"party{k}")],
            env=env, cwd=tmp_path, stdout=open(tmp_path / f"party{k}-{attempt}.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)

    processes: list[subprocess.Popen] = []
    supernode_pid = None
    deadline = time.monotonic() + 840
    try:
        server = subprocess.Popen(server_cmd, env=env, cwd=tmp_path, stdout=open(tmp_path / "server.log", "wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(server)
        processes += [client(k, 0) for k in range(3)]
        supernode_pid = int(_wait_for(tmp_path / "party1-0.log", r"SuperNode pid (\d+)", deadline, processes).group(1))
        _wait_for(tmp_path / "server.log", r"configure_train: round 2", deadline, processes)
        time.sleep(0.5)  # round 2 is under way (a warm ClientApp trains a tiny round in about a second)
        os.killpg(supernode_pid, signal.SIGKILL)  # the SuperNode, its SuperExec and its ClientApp
        processes[2].wait(timeout=60)  # simskip-client exits when its SuperNode dies
        processes.append(client(1, 1))
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert server.wait(timeout=60) == 0, log[-4000:]
    finally:
        for proc in reversed(processes):  # each stops its own SuperLink/SuperNode on SIGTERM
            stop_process(proc, timeout=30)
        if supernode_pid is not None:
            try:
                os.killpg(supernode_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert set(rows[0]["train"]) == {"0", "1", "2"}
    assert set(rows[1]["train"]) == {"0", "2"}, "round 2 completed with the two others"
    assert any(f.startswith("1: ") for f in rows[1]["failures"]), rows[1]
    assert set(rows[2]["train"]) == {"0", "1", "2"}, "the restarted party took part again"
    assert re.search(r"rejoin: client 1 is back as node \d+", log)
    assert "client 1 restored its private state of round 1" in log
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["test"]) == {"0", "1", "2"} and final["missing_clients"] == []
    assert all(p.poll() is not None for p in processes)
