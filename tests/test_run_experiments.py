"""The grid runner (scripts/run_experiments.py) on a tiny grid: Nations, TransE, fede + isolation.

In-process engine (no Ray), 2 KGE rounds and tiny SimSkip / re-fit budgets: about half a minute.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def grid():
    return load_script("run_experiments")


ARGS = [
    "--models",
    "TransE",
    "--datasets",
    "Nations",
    "--settings",
    "fede",
    "isolation",
    "--rounds",
    "1",
    "--clients",
    "2",
    "--engine",
    "in-process",
    "--set",
    "embedding-dim=8",
    "--set",
    "num-negs-per-pos=4",
    "--set",
    "batch-size=128",
    "--set",
    "eval-every=1",
    "--set",
    "simskip-rounds=2",
    "--set",
    "simskip-local-epochs=1",
    "--set",
    "simskip-batch-size=16",
    "--set",
    "simskip-hidden-dim=8",
    "--set",
    "refit-epochs=1",
    "--set",
    'downstream-protocols="relation-refit"',
]


def test_tiny_grid_runs_resumes_and_assembles(grid, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert grid.main(["--out", "g", *ARGS]) == 0
    out = tmp_path / "g"
    cells = {s: json.loads((out / "Nations" / "TransE" / s / "cell.json").read_text()) for s in ("fede", "isolation")}
    assert all(c["status"] == "done" for c in cells.values())
    with (out / "grid.csv").open() as handle:
        records = list(csv.DictReader(handle))
    # 2 cells x (unrefined, refined, perturbed, and the two gains) under the one protocol
    rows = ("unrefined", "refined", "perturbed", "gain refined (pts)", "gain perturbed (pts)")
    assert [(r["setting"], r["protocol"], r["row"]) for r in records] == [
        (s, "relation-refit:trained", row) for s in ("isolation", "fede") for row in rows
    ]
    fede = cells["fede"]["overall"]["relation-refit:trained"]
    assert float(records[-2]["standard.mrr"]) == pytest.approx(
        100 * (fede["refined"]["standard.mrr"] - fede["unrefined"]["standard.mrr"])
    )
    assert "| Nations | TransE | fede | relation-refit:trained | refined |" in (out / "grid.md").read_text()

    # resumable: a done cell is skipped; a cell with a finished KGE run redoes only the refinement
    fede_dir = out / "Nations" / "TransE" / "fede"
    (fede_dir / "results.json").unlink()
    state = json.loads((fede_dir / "cell.json").read_text())
    state["status"] = "running"
    (fede_dir / "cell.json").write_text(json.dumps(state))
    kge_stamp = (fede_dir / "final_metrics.json").stat().st_mtime_ns
    iso_stamp = (out / "Nations" / "TransE" / "isolation" / "cell.json").stat().st_mtime_ns
    assert grid.main(["--out", "g", *ARGS]) == 0
    assert (fede_dir / "final_metrics.json").stat().st_mtime_ns == kge_stamp
    assert (out / "Nations" / "TransE" / "isolation" / "cell.json").stat().st_mtime_ns == iso_stamp
    resumed = json.loads((fede_dir / "cell.json").read_text())
    assert resumed["status"] == "done"
    assert (fede_dir / "results.json").is_file()
    # the first start's machine facts survive the resume, which is recorded beside them
    assert resumed["machine_at_start"] == state["machine_at_start"]
    assert resumed["load_average"] == state["machine_at_start"]["load_average"]
    assert len(resumed["machine_at_resume"]) == 1 and "machine_after_kge" in state


class _Killed(Exception):
    """Stands in for a process killed in the middle of a cell's KGE step."""


def test_an_interrupted_in_process_kge_step_resumes_after_its_last_round(grid, tmp_path, monkeypatch) -> None:
    """The fede cell dies in round 2 of 2; the rerun trains only round 2 (from the round-1
    checkpoint), counts the earlier round in the cell's seconds and removes the checkpoint."""
    monkeypatch.chdir(tmp_path)
    args = ["--out", "g", *ARGS]
    args[args.index("--rounds") + 1] = "2"
    args.remove("isolation")
    lines: list[str] = []

    def dies_in_round_2(*values: object, **kwargs: object) -> None:
        line = " ".join(str(v) for v in values)
        lines.append(line)
        if line.startswith("[fede] round 2/2"):
            raise _Killed(line)

    monkeypatch.setattr(grid, "print", dies_in_round_2, raising=False)
    assert grid.main(args) == 1  # a failed cell; the grid goes on with the others
    assert any("FAILED" in line and "_Killed" in line for line in lines)
    cell = tmp_path / "g" / "Nations" / "TransE" / "fede"
    assert (cell / "checkpoint" / "manifest.json").is_file() and not (cell / "final_metrics.json").exists()
    assert json.loads((cell / "checkpoint" / "manifest.json").read_text())["round"] == 1

    lines.clear()
    monkeypatch.setattr(grid, "print", lambda *values, **kwargs: lines.append(" ".join(map(str, values))))
    assert grid.main(args) == 0
    assert any(line.startswith("[fede] resumed after round 1") for line in lines)
    assert not any(line.startswith("[fede] round 1/2") for line in lines)
    state = json.loads((cell / "cell.json").read_text())
    final = json.loads((cell / "final_metrics.json").read_text())
    assert state["status"] == "done" and state["kge_resumed_after_round"] == 1
    assert final["rounds_trained"] == 2 and [e["round"] for e in final["history"]] == [1, 2]
    assert state["run_seconds"] >= final["history"][0]["seconds"] > 0
    assert not (cell / "checkpoint").exists()
    assert [row["round"] for row in map(json.loads, (cell / "metrics.jsonl").read_text().splitlines())] == [1, 2]


_TINY_KGE = {"embedding-dim": 8, "num-negs-per-pos": 4, "batch-size": 128, "eval-every": 1}
_DP = {"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "simskip-rounds": 0}


def test_the_in_process_fede_runner_honours_dp_local(grid, tmp_path) -> None:
    """dp = local reaches run_fede_in_process (a run whose config.json says dp = local is a DP run: its
    final_metrics.json carries the accountant's figures); before, the key was accepted and ignored."""
    folder = tmp_path / "cell"
    grid.kge_in_process(folder, "Nations", "TransE", "fede", 1, {**_TINY_KGE, **_DP}, 2)
    final = json.loads((folder / "final_metrics.json").read_text())
    assert final["dp"]["noise_multiplier"] == 1.0 and final["dp"]["clip"] == 1.0
    assert len(final["dp"]["parties"]) == 2


@pytest.mark.parametrize(
    ("setting", "sets", "key"),
    [
        ("isolation", _DP, "dp = local"),
        ("collection", {"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0}, "dp = local"),
        ("fede", {"secure-aggregation": True}, "secure-aggregation = true"),
        ("isolation", {"secure-aggregation": True, "setting": "fede"}, "secure-aggregation = true"),
    ],
)
def test_the_in_process_runners_refuse_what_they_would_ignore(grid, tmp_path, setting, sets, key) -> None:
    """No in-process runner has SecAgg+, and only fede has a DP path: a named error before any training."""
    from client.kge.settings import SettingsError

    with pytest.raises(SettingsError, match=key):
        grid.kge_in_process(tmp_path / "cell", "Nations", "TransE", setting, 1, {**_TINY_KGE, **sets}, 2)
    assert not (tmp_path / "cell" / "final_metrics.json").exists()
