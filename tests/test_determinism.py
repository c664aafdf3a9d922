"""The same seed twice gives identical results in simulation (issue 6, item 9).

Two simulations of Kinships (3 clients, 3 tiny KGE rounds and 2 SimSkip rounds, the same seed)
must write the same ``final_metrics.json``, ``metrics.jsonl``, ``simskip_metrics.jsonl``,
``downstream.json`` and ``results.json`` (every protocol's rows, the valid-only choices, the intervals) bit for bit
once the measurements of the machine rather than of the model are dropped, and the same entity
table. Dropped keys (and only these):

* wall-clock times: :data:`WALL_CLOCK_KEYS`;
* memory readings (``ru_maxrss`` of the server and client processes): :data:`MACHINE_KEYS`.

Clients reply in whatever order Ray finishes them, so this also checks that aggregation does
not depend on arrival order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "embedding-dim=8",
    "local-epochs=1",
    "num-negs-per-pos=4",
    "eval-every=1",
    "batch-size=256",
    "seed=7",
    "simskip-rounds=2",
    "simskip-local-epochs=1",
    "refit-epochs=2",
    "simskip-gate-grid=0,1",
]

#: Keys holding seconds measured by a clock (durations, ``finished_at``, a timestamp, and
#: ``final_metrics.json``'s ``timing`` group, see ``server.server_app.TIMING_KEYS``): they differ
#: between any two runs.
WALL_CLOCK_KEYS = frozenset(
    {
        "timing",
        "seconds",
        "train_seconds",
        "train_phase_seconds",
        "aggregation_seconds",
        "evaluation_seconds",
        "overhead_seconds",
        "train-seconds",
        "client-seconds",
        "eval-seconds",
        "finished_at",
        "simskip_seconds",
        "phase_seconds",
    }
)
#: ``results.json``'s title names the run folder, which differs by construction.
RUN_NAME_KEYS = frozenset({"title"})
#: Keys holding the processes' peak memory: a property of the machine and the process, not of the run.
MACHINE_KEYS = frozenset({"server_peak_rss_mb", "peak-rss-mb"})


def _without(value: Any, dropped: frozenset[str]) -> Any:
    """``value`` with every dict key in ``dropped`` removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, dropped) for k, v in value.items() if k not in dropped}
    if isinstance(value, list):
        return [_without(v, dropped) for v in value]
    return value


def _simulate(run_dir: Path, log: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "server.simulation",
        "--dataset",
        "Kinships",
        "--clients",
        "3",
        "--rounds",
        "3",
        "--run-dir",
        str(run_dir),
    ]
    for item in TINY:
        command += ["--set", item]
    with open(log, "wb") as handle:
        done = subprocess.run(
            command, check=False, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=600
        )
    assert done.returncode == 0, log.read_text()[-3000:]


def test_dropping_keys_is_deep_and_exact():
    row = {"seconds": 1.0, "round": 2, "train": {"0": {"train-loss": 0.5, "train-seconds": 3.0, "peak-rss-mb": 9.0}}}
    assert _without(row, WALL_CLOCK_KEYS | MACHINE_KEYS) == {"round": 2, "train": {"0": {"train-loss": 0.5}}}


@pytest.mark.slow  # two simulations: ~3 min on 2 loaded cores, mostly Ray and SuperLink start-up
@pytest.mark.timeout(1300)
def test_the_same_seed_twice_gives_identical_final_metrics(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _simulate(first, tmp_path / "first.log")
    _simulate(second, tmp_path / "second.log")
    dropped = WALL_CLOCK_KEYS | MACHINE_KEYS

    final = [_without(json.loads((run / "final_metrics.json").read_text()), dropped) for run in (first, second)]
    # the JSON text, not float tolerance: identical means identical
    assert json.dumps(final[0], sort_keys=True) == json.dumps(final[1], sort_keys=True)
    assert final[0]["test_overall"]["mrr"] > 0

    rows = [
        [_without(json.loads(line), dropped) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (first, second)
    ]
    assert [r["round"] for r in rows[0]] == [1, 2, 3]
    assert json.dumps(rows[0], sort_keys=True) == json.dumps(rows[1], sort_keys=True)

    simskip = [
        [_without(json.loads(line), dropped) for line in (run / "simskip_metrics.jsonl").read_text().splitlines()]
        for run in (first, second)
    ]
    assert [r["round"] for r in simskip[0]] == [1, 2]
    assert json.dumps(simskip[0], sort_keys=True) == json.dumps(simskip[1], sort_keys=True)
    for name in ("downstream.json", "results.json"):
        payloads = [_without(json.loads((run / name).read_text()), dropped | RUN_NAME_KEYS) for run in (first, second)]
        assert json.dumps(payloads[0], sort_keys=True) == json.dumps(payloads[1], sort_keys=True), name
    assert set(payloads[0]["protocols"]["as-trained"]["rows"]) >= {"unrefined", "refined", "perturbed"}

    tables = [np.load(run / "entity_embeddings.npy") for run in (first, second)]
    assert tables[0].tobytes() == tables[1].tobytes()
