"""The benchmark scripts: time-to-accuracy (simulation-mode parsing and a real run) and bench_eval.

The parsing tests fabricate a run folder's ``metrics.jsonl`` / ``config.json`` and check the
report against numbers computed here by hand. The end-to-end tests launch ``simskip-sim`` on
Kinships with a tiny config (marked slow) and check that the script stops the whole process tree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def tta() -> ModuleType:
    return load_script("bench_time_to_accuracy")


def _row(number: int, finished_at: float, valid: float | None = None, test: dict | None = None) -> dict:
    row = {
        "round": number,
        "seconds": 10.0,
        "overhead_seconds": 2.0,
        "aggregation_seconds": 0.5,
        "evaluation_seconds": 3.0 if valid is not None else 0.0,
        "finished_at": finished_at,
        "train": {"0": {"train-seconds": 4.0}, "1": {"train-seconds": 6.0}},
    }
    if valid is not None:
        row["valid_overall"] = {"mrr": valid, "num_triples": 30}
        row["valid"] = {}
        if test is not None:
            row["test"] = test
    return row


def test_summary_weights_test_mrr_by_config_sizes_and_finds_target(tta: ModuleType, tmp_path: Path) -> None:
    t0 = 1000.0
    rows = [
        _row(1, t0 + 30.0),
        _row(2, t0 + 40.0, valid=0.30, test={"0": {"mrr": 0.2, "num_triples": 1}, "1": {"mrr": 0.5, "num_triples": 1}}),
        _row(3, t0 + 50.0),
        _row(4, t0 + 60.0, valid=0.28, test={"0": {"mrr": 0.4, "num_triples": 1}, "1": {"mrr": 0.4, "num_triples": 1}}),
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # order on disk does not matter
    config = {"clients": {"0": {"num_test": 300}, "1": {"num_test": 100}}}
    summary = tta.summarize_rounds(
        tta.read_metrics_rows(path), t0=t0, test_sizes=tta.client_test_sizes(config), target=0.35
    )

    records = summary["rounds"]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert [r["elapsed_seconds"] for r in records] == [30.0, 40.0, 50.0, 60.0]
    assert [r["validated"] for r in records] == [False, True, False, True]
    # weights come from config.json (300 / 100), not from the replies' num_triples (1 / 1)
    assert records[1]["test_mrr"] == pytest.approx((300 * 0.2 + 100 * 0.5) / 400)  # 0.275: below target
    assert records[3]["test_mrr"] == pytest.approx(0.4)
    assert summary["time_to_target"] == {
        "round": 4,
        "elapsed_seconds": 60.0,
        "valid_mrr": 0.28,
        "test_mrr": pytest.approx(0.4),
    }
    # the best valid round is round 2 even though round 4 reached the test target
    assert summary["time_to_best_valid"]["round"] == 2
    assert summary["time_to_best_valid"]["elapsed_seconds"] == 40.0
    assert summary["startup_seconds"] == pytest.approx(20.0)  # 30 s to the end of a 10 s first round
    assert records[0]["local_training_seconds_max_client"] == 6.0
    assert records[0]["local_training_seconds_sum"] == 10.0
    assert summary["totals"]["framework_seconds"] == pytest.approx(8.0)
    assert summary["totals"]["evaluation_seconds"] == pytest.approx(6.0)

    unreachable = tta.summarize_rounds(tta.read_metrics_rows(path), t0=t0, test_sizes={}, target=0.9)
    assert unreachable["time_to_target"] is None
    # without config sizes the replies' own num_triples weigh
    assert unreachable["rounds"][1]["test_mrr"] == pytest.approx(0.35)


def test_malformed_metrics_line_is_named(tta: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_row(1, 1.0)) + "\n{not json\n")
    with pytest.raises(tta.MetricsFormatError, match=r"metrics.jsonl:2"):
        tta.read_metrics_rows(path)
    assert tta.read_metrics_rows(tmp_path / "absent.jsonl") == []


def test_simulation_command_turns_test_tracking_on(tta: ModuleType, tmp_path: Path) -> None:
    args = tta.argparse.Namespace(
        data="Kinships", rounds=3, num_cpus_per_client=1, num_clients=2, set=["model=RotatE"], preset="fede-paper"
    )
    command = tta.simulation_command(args, tmp_path)
    sets = [command[i + 1] for i, item in enumerate(command) if item == "--set"]
    assert sets == ["track-test=true", "simskip-rounds=0", "model=RotatE"]
    assert command[command.index("--run-dir") + 1] == str(tmp_path)
    assert command[command.index("--clients") + 1] == "2"
    assert command[command.index("--preset") + 1] == "fede-paper"  # before the --set values, which win
    assert command.index("--preset") < command.index("--set")


def _tiny_sim_args(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--mode",
        "simulation",
        "--data",
        "Kinships",
        "--num-clients",
        "2",
        "--rounds",
        "2",
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
        "--poll-seconds",
        "0.5",
        "--set",
        "embedding-dim=8",
        "--set",
        "num-negs-per-pos=4",
        "--set",
        "batch-size=256",
        "--set",
        "local-epochs=1",
        "--set",
        "eval-every=1",
        "--set",
        "eval-protocol=fede",
        *extra,
    ]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.long
@pytest.mark.slow
def test_simulation_mode_end_to_end_on_kinships(tta: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "tta.json"
    assert tta.main(_tiny_sim_args(tmp_path / "run", out, "--time-budget", "600")) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "simulation" and report["stop_reason"] == "finished" and report["returncode"] == 0
    assert not report.get("partial") and report["eval_protocol"] == "fede"
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["validated"] for r in rounds)
    assert 0 < rounds[0]["elapsed_seconds"] < rounds[1]["elapsed_seconds"] <= report["wall_seconds"]
    assert report["startup_seconds"] > 0  # Ray and the SuperLink start before round 1 ends
    for record in rounds:
        assert 0.0 < record["valid_mrr"] <= 1.0
        assert record["test_clients"] == ["0", "1"], "the clients report test- metrics with track-test"
        assert 0.0 < record["test_mrr"] <= 1.0
        assert record["local_training_seconds_max_client"] > 0
    # the script's weighting (config.json test sizes) agrees with the server's test_overall
    assert rounds[-1]["test_mrr"] == pytest.approx(rounds[-1]["test"]["mrr"], rel=1e-6)
    assert report["time_to_best_valid"]["round"] in (1, 2)
    assert report["stopped_pids"] == []  # it ended by itself: nothing to stop
    assert not _group_alive(report["pid"])


@pytest.mark.slow
def test_simulation_is_stopped_at_the_time_budget(tta: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "tta.json"
    # 25 s: long enough for the SuperLink and Ray to be up. The run itself cannot end first on any
    # machine: 100,000 rounds with early stopping out of reach (a fast machine finished the 2-round
    # run inside 25 s, and this test then saw stop_reason "finished")
    args = _tiny_sim_args(tmp_path / "run", out, "--time-budget", "25", "--set", "patience=100000")
    args[args.index("--rounds") + 1] = "100000"
    assert tta.main(args) == 0
    report = json.loads(out.read_text())
    assert report["stop_reason"] == "time-budget" and 25 <= report["wall_seconds"] < 120
    assert report["returncode"] is not None and report["returncode"] != 0
    assert report["stopped_pids"][0] == report["pid"] and len(report["stopped_pids"]) > 1
    survivors = [pid for pid in report["stopped_pids"] if _running(pid)]
    assert not survivors, f"processes of the simulation outlived the budget: {survivors}"
    assert not _group_alive(report["pid"])


def test_bench_eval_reports_each_model_and_protocol(tmp_path: Path) -> None:
    bench_eval = load_script("bench_eval")
    out = tmp_path / "eval.json"
    assert (
        bench_eval.main(
            [
                "--data",
                "Nations",
                "--num-clients",
                "2",
                "--models",
                "TransE",
                "DistMult",
                "--embedding-dim",
                "8",
                "--threads",
                "1",
                "--pykeen-baseline",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["num_clients"] == 2 and set(report["models"]) == {"TransE", "DistMult"}
    for entry in report["models"].values():
        runs = entry["runs"]
        assert set(runs) == {"standard+fede", "standard", "fede"}
        for run in runs.values():
            assert run["num_triples"] == report["test_triples"] > 0
            assert run["wall_seconds"] > 0 and run["cpu_seconds"] >= 0 and run["triples_per_second"] > 0
        # one pass for both protocols gives each protocol's own numbers
        for protocol in ("standard", "fede"):
            assert runs["standard+fede"]["overall"][protocol] == pytest.approx(runs[protocol]["overall"][protocol])
        assert 0.0 < runs["fede"]["overall"]["fede"]["mrr"] <= 1.0
        baseline = entry["pykeen_baseline"]
        assert baseline["num_triples"] == 20
        assert baseline["ours_mrr"] == pytest.approx(baseline["pykeen_mrr"], abs=1e-6)
