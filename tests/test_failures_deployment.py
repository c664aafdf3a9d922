"""A party's SuperNode SIGKILLed in the middle of a round, with real processes on loopback.

simskip-server plus 3 simskip-client processes (Kinships partitioned by relation, a tiny model).
While round 2 trains, party 1's SuperNode (and everything in its process group) gets SIGKILL;
Flower answers for the dead node once its heartbeat expires, so round 2 completes with the two
others and records the failure. The party is restarted with the same data and output folder: its
new SuperNode (new node id, empty state) is re-registered by client id at the start of round 3,
restores its private state of round 1 from its own checkpoint and trains again. Party 1's round-2
training is held (``client.client_app.HOLD_TRAIN_ENV``) until the kill, so the kill lands inside
round 2 on a machine of any speed. The run ends
with exit 0 and test metrics from all three parties. Every process is stopped here, by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from loopback import Loopback, wait_for

from client.client_app import HOLD_TRAIN_ENV

TINY = [
    "embedding-dim=8",
    "local-epochs=1",
    "num-negs-per-pos=4",
    "batch-size=512",
    "eval-every=3",
    "simskip-rounds=0",
    "min-clients-timeout=300.0",
    "round-timeout=300.0",
]


@pytest.mark.long
@pytest.mark.slow  # ~3-4 minutes on 2 cores: a ClientApp process per message plus Flower's heartbeat expiry (<= 60 s)
@pytest.mark.timeout(900)
def test_a_party_killed_mid_round_is_left_out_then_rejoins(tmp_path):
    supernode_pid = None
    deadline = time.monotonic() + 840
    with Loopback(tmp_path) as federation:
        federation.write_data("Kinships", 3)
        server = federation.server("--min-clients", "3", "--rounds", "3", sets=TINY)
        hold = tmp_path / "hold1"  # party 1's round-2 training waits there until it is killed
        parties = [
            federation.client(k, attempt=0, env={HOLD_TRAIN_ENV: f"2:{hold}"} if k == 1 else None) for k in range(3)
        ]
        try:
            supernode_pid = int(wait_for(tmp_path / "party1-0.log", r"SuperNode pid (\d+)", deadline, server).group(1))
            while not (hold / "round-2.holding").exists():  # round 2 is certainly under way for party 1
                assert server.poll() is None and time.monotonic() < deadline, federation.log()[-4000:]
                time.sleep(0.1)
            os.killpg(supernode_pid, signal.SIGKILL)  # the SuperNode and its SuperExec; the held ClientApp
            # (forked by the warm starter) goes with simskip-client's clean-up
            parties[1].wait(timeout=60)  # simskip-client exits when its SuperNode dies
            federation.client(1, attempt=1)
            while server.poll() is None and time.monotonic() < deadline:
                time.sleep(2)
            log = federation.log()
            assert server.wait(timeout=60) == 0, log[-4000:]
        finally:
            if hold.exists():  # a held ClientApp that outlived its party's clean-up ends too
                (hold / "round-2.release").write_text("")
            if supernode_pid is not None:
                try:
                    os.killpg(supernode_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    run_dir = federation.run_dir

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert set(rows[0]["train"]) == {"0", "1", "2"}
    assert set(rows[1]["train"]) == {"0", "2"}, "round 2 completed with the two others"
    assert any(f.startswith("1: ") for f in rows[1]["failures"]), rows[1]
    assert set(rows[2]["train"]) == {"0", "1", "2"}, "the restarted party took part again"
    assert re.search(r"rejoin: client 1 is back as node \d+", log)
    restored = re.search(r"client 1 restored its private state of round (\d+)", log)
    assert restored, log[-4000:]
    assert restored.group(0).endswith("round 1"), "party 1 was killed inside round 2, before saving it"
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["test"]) == {"0", "1", "2"} and final["missing_clients"] == []
    assert all(p.poll() is not None for p in federation.processes)
