"""Deployment end to end: simskip-server plus 3 simskip-client processes on loopback.

Kinships partitioned FedE-style (by relation) over 3 parties, each holding only its folder;
3 rounds of a tiny model. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from server.launcher import free_port, stop_process

TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "batch-size=512", "eval-every=3",
        # one short SimSkip round and re-fit: the refinement phase runs through deployment too
        "simskip-rounds=1", "simskip-local-epochs=1", "refit-epochs=1"]


def _script(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


@pytest.mark.slow  # ~2-3 minutes on 2 cores: a fresh ClientApp process (torch + PyKEEN import) per message
@pytest.mark.timeout(900)
def test_server_and_three_clients_on_loopback(tmp_path):
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
    processes: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen(server_cmd, env=env, cwd=tmp_path, stdout=open(tmp_path / "server.log", "wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(server)
        for k in range(3):
            processes.append(subprocess.Popen(
                [_script("simskip-client"), "--server", f"127.0.0.1:{port}", "--data", str(data / str(k)),
                 "--insecure", "--output-dir", str(tmp_path / f"party{k}")],
                env=env, cwd=tmp_path, stdout=open(tmp_path / f"party{k}.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + 840
        while server.poll() is None and time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes[1:]):
                break
            time.sleep(2)
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert server.wait(timeout=60) == 0, log[-3000:]
    finally:
        for proc in reversed(processes):  # each stops its own SuperLink/SuperNode on SIGTERM
            stop_process(proc, timeout=30)

    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["test"]) == {"0", "1", "2"} and final["missing_clients"] == []
    assert final["rounds_run"] == 3 and final["best_round"] == 3
    assert all(0.0 < m["mrr"] <= 1.0 for m in final["test"].values())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and "valid" in rows[2]
    assert "[round 3/3]" in log, "progress is visible per round"
    for k in range(3):  # private outputs stay with each party
        assert (tmp_path / f"party{k}" / "relation_embeddings.npz").is_file()
    assert not list(run_dir.glob("relation_embeddings*")), "the server holds no relation embeddings"
    results = json.loads((run_dir / "results.json").read_text())
    assert results, "the refinement phase wrote its results table"
    assert all(p.poll() is not None for p in processes)
