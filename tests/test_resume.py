"""``simskip-sim --resume RUN_DIR`` (issue 6, item 4 in simulation).

Fast tests build a run folder by hand (config.json + a checkpoint written by
:func:`server.checkpoint.save_checkpoint`): every refusal happens before any Flower process
starts. The slow test runs Kinships with 3 clients three times: uninterrupted; stopped with
SIGTERM once ``metrics.jsonl`` shows round 2; resumed (with a harmless change). The final
metrics must agree within 1e-6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from server.checkpoint import save_checkpoint
from server.simulation import main as sim_main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "eval-every=1", "batch-size=256", "simskip-rounds=0"]


def _load_bench_memory():
    """scripts/bench_memory.py (not a package): its /proc helpers find a run's process tree."""
    return load_script("bench_memory")


# ----------------------------------------------------------------------------- fast: refusals
@pytest.fixture
def fake_run(tmp_path):
    """A run folder as an interrupted simulation leaves it: config.json, data/0..2, a round-2 checkpoint."""
    run_dir = tmp_path / "run"
    for k in range(3):
        (run_dir / "data" / str(k)).mkdir(parents=True)
    run_config = {
        "setting": "fede",
        "num-server-rounds": 4,
        "run-dir": str(run_dir),
        "model": "TransE",
        "embedding-dim": 8,
        "client-data-root": str(run_dir / "data"),
        "client-output-root": str(run_dir / "clients"),
        "min-clients": 3,
    }
    (run_dir / "config.json").write_text(json.dumps({"run_config": run_config}))
    save_checkpoint(
        run_dir,
        round=2,
        arrays={"entity-table": np.zeros((4, 8), np.float32)},
        state={"best_round": 2},
        run_config=run_config,
        vocabulary=["a", "b", "c", "d"],
    )
    return run_dir


def _resume(run_dir, *extra, capsys):
    try:
        status = sim_main(["--resume", str(run_dir), *extra])
    except SystemExit as stop:  # refused while the options are checked
        status = stop.code
    err = capsys.readouterr().err.strip()
    return status, err


def test_missing_config_json_is_a_one_line_error(tmp_path, capsys):
    status, err = _resume(tmp_path / "nothing-here", capsys=capsys)
    assert status == 2 and len(err.splitlines()) == 1
    assert "config.json does not exist" in err


def test_unreadable_config_json_is_a_one_line_error(fake_run, capsys):
    (fake_run / "config.json").write_text("{truncated")
    status, err = _resume(fake_run, capsys=capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "config.json" in err


def test_a_corrupt_checkpoint_is_refused_naming_the_file(fake_run, capsys):
    npz = next((fake_run / "checkpoint").glob("state-r*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])
    status, err = _resume(fake_run, capsys=capsys)
    assert status == 2 and npz.name in err
    assert not (fake_run / ".flwr").exists(), "refused before any Flower process started"


def test_a_garbage_manifest_is_refused_naming_it(fake_run, capsys):
    (fake_run / "checkpoint" / "manifest.json").write_text("not json at all")
    status, err = _resume(fake_run, capsys=capsys)
    assert status == 2 and "manifest.json" in err and "corrupt" in err


def test_no_checkpoint_is_an_error_not_a_fresh_start(fake_run, capsys):
    for path in (fake_run / "checkpoint").iterdir():
        path.unlink()
    status, err = _resume(fake_run, capsys=capsys)
    assert status == 2 and "nothing to resume" in err
    assert not (fake_run / ".flwr").exists()


def test_a_changed_model_is_refused_naming_it(fake_run, capsys):
    status, err = _resume(fake_run, "--set", "model=RotatE", capsys=capsys)
    assert status == 2 and "model: checkpoint 'TransE', now 'RotatE'" in err
    status, err = _resume(fake_run, "--set", "embedding-dim=16", capsys=capsys)
    assert status == 2 and "embedding-dim" in err


def test_missing_client_data_is_refused(fake_run, capsys):
    for k in range(3):
        (fake_run / "data" / str(k)).rmdir()
    status, err = _resume(fake_run, capsys=capsys)
    assert status == 2 and "no client data folders" in err


def test_options_that_change_the_data_cannot_be_combined_with_resume(fake_run, capsys):
    with pytest.raises(SystemExit) as info:
        sim_main(["--resume", str(fake_run), "--dataset", "UMLS"])
    assert info.value.code == 2 and "--dataset" in capsys.readouterr().err


def test_the_resumed_run_config_is_the_recorded_one_plus_changes(fake_run):
    from server.simulation import resume_run_config

    config = resume_run_config(fake_run, rounds=9, overrides={"round-timeout": 60.0})
    assert config["num-server-rounds"] == 9 and config["round-timeout"] == 60.0
    assert config["resume"] is True and config["run-dir"] == str(fake_run)
    assert config["client-data-root"] == str(fake_run / "data") and config["model"] == "TransE"


def test_an_interrupted_simulation_writes_partial_results_naming_the_resume_command(fake_run, capsys):
    import signal as signals

    from server.simulation import _report_interrupted

    (fake_run / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": r, "valid_overall": {"mrr": 0.1 * r}}) + "\n" for r in (1, 2))
    )
    _report_interrupted(fake_run, signals.SIGTERM)
    partial = json.loads((fake_run / "partial_results.json").read_text())
    assert partial["exit_code"] == 143 and partial["last_completed_round"] == 2
    assert partial["checkpoint"]["round"] == 2 and partial["resume_command"] == f"simskip-sim --resume {fake_run}"
    assert "resume with: simskip-sim --resume" in capsys.readouterr().err


# ----------------------------------------------------------------------------- slow: kill and resume
def _sim_command(*args: str) -> list[str]:
    """``simskip-sim`` with the TINY settings, then ``args`` (a later ``--set`` wins)."""
    command = [sys.executable, "-m", "server.simulation"]
    for item in TINY:
        command += ["--set", item]
    return command + list(args)


def _run(command: list[str], log: Path, timeout: float = 400) -> None:
    with open(log, "wb") as handle:
        done = subprocess.run(
            command, check=False, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
        )
    assert done.returncode == 0, log.read_text()[-3000:]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _checkpoint_round(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def _simskip_checkpoint_round(run_dir: Path) -> int:
    try:
        state = json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(state.get("simskip_round", 0)) if state.get("phase") == "simskip" else 0


def _run_and_terminate_after_round(
    command: list[str], run_dir: Path, log: Path, after_round: int, timeout: float = 400, reached=None
) -> int:
    """Start ``command``; once round ``after_round`` is checkpointed (or ``reached()`` is true),
    SIGTERM it; return its exit code.

    Every process of its tree seen while it ran is SIGKILLed by PID afterwards if still alive.
    """
    tree = _load_bench_memory()
    if reached is None:
        reached = lambda: _checkpoint_round(run_dir) >= after_round and len(_rows(run_dir)) >= after_round  # noqa: E731
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + timeout
        while not reached():
            assert proc.poll() is None, f"the run ended before round {after_round}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            seen.update(tree.process_tree(proc.pid))
            time.sleep(0.2)
        seen.update(tree.process_tree(proc.pid))
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in seen - {proc.pid}:
            if tree.rss_mb(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _assert_close(a, b, path="", tol=1e-6):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}", tol)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tol), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


@pytest.mark.slow  # three simulations of 6 tiny rounds: ~4-6 min on 2 loaded cores
@pytest.mark.timeout(1500)
def test_killed_after_round_2_and_resumed_gives_the_uninterrupted_final_metrics(tmp_path, capsys):
    rounds = ["--dataset", "Kinships", "--clients", "3", "--rounds", "6"]
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    _run(_sim_command(*rounds, "--run-dir", str(reference)), tmp_path / "uninterrupted.log")

    code = _run_and_terminate_after_round(
        _sim_command(*rounds, "--run-dir", str(resumed)), resumed, tmp_path / "killed.log", after_round=2
    )
    assert code == 143, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (resumed / "final_metrics.json").exists(), "stopped before the end"
    stopped_at = _checkpoint_round(resumed)
    assert 2 <= stopped_at < 6
    partial = json.loads((resumed / "partial_results.json").read_text())
    assert partial["exit_code"] == 143 and partial["checkpoint"]["round"] == stopped_at
    assert partial["resume_command"] == f"simskip-sim --resume {resumed}"

    # refused: a model-defining change, on the real checkpoint (before any process starts)
    assert sim_main(["--resume", str(resumed), "--set", "model=DistMult"]) == 2  # an input error
    assert "model: checkpoint 'TransE', now 'DistMult'" in capsys.readouterr().err

    # accepted: a harmless change
    _run(
        [sys.executable, "-m", "server.simulation", "--resume", str(resumed), "--set", "round-timeout=900"],
        tmp_path / "resumed.log",
    )
    assert f"after round {stopped_at}" in (tmp_path / "resumed.log").read_text()

    expected = json.loads((reference / "final_metrics.json").read_text())
    got = json.loads((resumed / "final_metrics.json").read_text())
    for key in ("best_round", "rounds_run", "stopped_early", "clients", "missing_clients"):
        assert got[key] == expected[key], key
    _assert_close(got["test"], expected["test"], "test")
    _assert_close(got["test_overall"], expected["test_overall"], "test_overall")
    _assert_close(got["best_valid_overall"], expected["best_valid_overall"], "best_valid_overall")

    # every round once, with the same losses and validation metrics as the uninterrupted run
    ref_rows, got_rows = _rows(reference), _rows(resumed)
    assert [r["round"] for r in got_rows] == [1, 2, 3, 4, 5, 6]
    for ref, row in zip(ref_rows, got_rows, strict=True):
        _assert_close(
            {c: m["train-loss"] for c, m in row["train"].items()},
            {c: m["train-loss"] for c, m in ref["train"].items()},
            f"round {row['round']} train-loss",
        )
        _assert_close(row["valid_overall"], ref["valid_overall"], f"round {row['round']} valid_overall")
    np.testing.assert_allclose(
        np.load(resumed / "entity_embeddings.npy"), np.load(reference / "entity_embeddings.npy"), atol=1e-6
    )
    config = json.loads((resumed / "config.json").read_text())
    assert config["run_config"]["round-timeout"] == 900 and config["run_config"]["resume"] is True


@pytest.mark.long
@pytest.mark.slow  # three simulations with a SimSkip phase: ~5 min on 2 cores
@pytest.mark.timeout(1500)
def test_killed_in_the_simskip_phase_and_resumed_gives_the_uninterrupted_results(tmp_path):
    """SIGTERM after SimSkip round 2 of 3 (the KGE phase is done), then ``--resume``: the SimSkip
    phase continues after its checkpointed round; losses and downstream results match."""
    args = [
        "--dataset",
        "Kinships",
        "--clients",
        "3",
        "--rounds",
        "2",
        "--set",
        "simskip-rounds=3",
        "--set",
        "simskip-local-epochs=40",
        "--set",
        "refit-epochs=2",
        "--set",
        "simskip-gate-grid=0,1",
    ]
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    _run([*_sim_command(*args, "--run-dir", str(reference))], tmp_path / "uninterrupted.log")

    code = _run_and_terminate_after_round(
        _sim_command(*args, "--run-dir", str(resumed)),
        resumed,
        tmp_path / "killed.log",
        after_round=2,
        reached=lambda: _simskip_checkpoint_round(resumed) >= 2,
    )
    assert code == 143, (tmp_path / "killed.log").read_text()[-3000:]
    assert (resumed / "final_metrics.json").exists() and not (resumed / "downstream.json").exists()
    stopped_at = _simskip_checkpoint_round(resumed)
    assert 2 <= stopped_at <= 3
    assert json.loads((resumed / "partial_results.json").read_text())["checkpoint"]["simskip_round"] == stopped_at

    kge_rows = (resumed / "metrics.jsonl").read_text()
    _run([sys.executable, "-m", "server.simulation", "--resume", str(resumed)], tmp_path / "resumed.log")
    assert (resumed / "metrics.jsonl").read_text() == kge_rows
    log = (tmp_path / "resumed.log").read_text()
    assert f"continues after round {stopped_at} of 3" in log
    assert "[round 1/" not in log, "no KGE round is trained again"

    def simskip_rows(run_dir):
        return [json.loads(line) for line in (run_dir / "simskip_metrics.jsonl").read_text().splitlines()]

    got, want = simskip_rows(resumed), simskip_rows(reference)
    assert [r["round"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want, strict=True):
        _assert_close(g["simskip_loss"], w["simskip_loss"], f"simskip round {g['round']}", tol=1e-5)

    def downstream_test(run_dir):  # the test metrics of every (client, protocol, seed, row); no timings
        clients = json.loads((run_dir / "downstream.json").read_text())["clients"]
        return {
            client: {
                label: {
                    seed: {row: cell["test"] for row, cell in per_row.items()}
                    for seed, per_row in entry["seeds"].items()
                }
                for label, entry in record["protocols"].items()
            }
            for client, record in clients.items()
        }

    _assert_close(downstream_test(resumed), downstream_test(reference), "downstream rows")
