"""Deployment end to end: simskip-server plus 3 simskip-client processes on loopback.

Kinships partitioned FedE-style (by relation) over 3 parties, each holding only its folder;
3 rounds of a tiny model. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from loopback import Loopback

TINY = [
    "embedding-dim=8",
    "local-epochs=1",
    "num-negs-per-pos=4",
    "batch-size=512",
    "eval-every=3",
    # one short SimSkip round and re-fit: the refinement phase runs through deployment too
    "simskip-rounds=1",
    "simskip-local-epochs=1",
    "refit-epochs=1",
]


@pytest.mark.slow  # ~2-3 minutes on 2 cores: a fresh ClientApp process (torch + PyKEEN import) per message
@pytest.mark.timeout(900)
def test_server_and_three_clients_on_loopback(tmp_path):
    with Loopback(tmp_path) as federation:
        federation.write_data("Kinships", 3)
        server = federation.server("--min-clients", "3", "--rounds", "3", sets=TINY)
        clients = [federation.client(k) for k in range(3)]
        deadline = time.monotonic() + 840
        while server.poll() is None and time.monotonic() < deadline:
            if any(p.poll() is not None for p in clients):
                break
            time.sleep(2)
        log = federation.log()
        assert server.wait(timeout=60) == 0, log[-3000:]
        # each party exits by itself once the server's run is complete: wait for that here, inside
        # the block, because leaving it stops every process still running (a party still stopping
        # its SuperNode would be killed by the test, not exit by itself)
        codes = []
        for party in clients:
            try:
                codes.append(party.wait(timeout=90))
            except subprocess.TimeoutExpired:
                codes.append(None)
    run_dir = federation.run_dir

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
    for k, code in enumerate(codes):  # each party exited 0 by itself once the server's run was complete
        assert code == 0, federation.log(f"party{k}.log")[-2000:]
        printed = federation.log(f"party{k}.log")
        assert "round 3: trained 1 epochs" in printed and "round 3: valid MRR" in printed, printed[-2000:]
        assert "the server's run finished" in printed
        assert json.loads((tmp_path / f"party{k}" / "federation.json").read_text())["status"] == "completed"
    assert all(p.poll() is not None for p in federation.processes)
