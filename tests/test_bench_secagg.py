"""``scripts/bench_secagg.py``: the summary of a plain and a secure run folder against numbers computed
here by hand, its refusals, the ``simskip-sim`` command lines, the child process stopped by PID, and the
generated documentation block (``scripts/gen_docs.py``'s ``secagg_cost_block``).

No simulation runs here: the run folders are fabricated (a real ``simskip-sim`` pair takes over a minute;
``tests/test_secure_aggregation.py`` runs one).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from conftest import load_script

N, D = 14, 8


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_secagg")


def _run_folder(
    root: Path,
    mode: str,
    received: list[int],
    seconds: list[float],
    test_mrr: float,
    *,
    entities: tuple[int, ...] = (14, 10, 14),
    failures: dict[int, list[str]] | None = None,
    run_config: dict | None = None,
) -> Path:
    """A finished run folder as ``simskip-sim`` writes it, with only the fields the summary reads."""
    folder = root / mode
    folder.mkdir(parents=True)
    parties = {
        str(k): {"num_entities": n, "num_train": 10, "num_valid": 2, "num_test": 2} for k, n in enumerate(entities)
    }
    config = {
        "num_entities": N,
        "entity_dim": D,
        "clients": parties,
        "federation": {"transfer_dtype": "float16"},
        "kge": {"model": "TransE", "embedding-dim": D, "seed": 0},
        "run_config": {
            "seed": 0,
            "simskip-rounds": 0,
            "secure-aggregation": mode == "secure",
            "run-dir": str(folder),
            "client-data-root": str(folder / "data"),
            "client-output-root": str(folder / "clients"),
            **(run_config or {}),
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    rows = []
    for number, (total, wall) in enumerate(zip(received, seconds, strict=True), start=1):
        failed = (failures or {}).get(number, [])
        row = {
            "round": number,
            "seconds": wall,
            "train_phase_seconds": wall - 0.1,
            "evaluation_seconds": 0.1,
            "bytes_sent": 1000,
            "bytes_received": total,
            "train": {str(k): {"num-entities": n} for k, n in enumerate(entities) if f"{k}: gone" not in failed},
            "valid_overall": {"mrr": 0.5},
        }
        if failed:
            row["failures"] = failed
        if mode == "secure":
            row["secagg_clipped"] = number - 1
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # order on disk
    final = {"test_overall": {"mrr": test_mrr}, "best_valid_overall": {"mrr": 0.5}, "best_round": len(rows)}
    (folder / "final_metrics.json").write_text(json.dumps(final))
    return folder


def _rows_bytes(entities=(14, 10, 14)) -> int:
    return sum(n * D * 2 for n in entities)  # float16 rows


# ----------------------------------------------------------------------------- the summary
def test_the_summary_of_a_plain_and_a_secure_run_matches_a_hand_computation(bench: ModuleType, tmp_path: Path) -> None:
    from server.secure_aggregation import upload_bytes

    plain_total = _rows_bytes()  # 608 B: (14 + 10 + 14) x 8 x 2
    plain = bench.summarize_run(_run_folder(tmp_path, "plain", [plain_total] * 3, [5.0, 0.5, 0.7], 0.30), "p")
    secure = bench.summarize_run(_run_folder(tmp_path, "secure", [9000, 9300, 9600], [5.0, 1.0, 1.4], 0.3004), "s")

    assert [r["round"] for r in plain["rounds"]] == [1, 2, 3]  # sorted, whatever the order on disk
    assert plain["rounds"][0]["bytes_received_per_party"] == plain_total / 3
    assert plain["mean_after_first_round"]["rounds"] == [2, 3]
    assert plain["mean_after_first_round"]["seconds"] == pytest.approx(0.6)
    assert plain["mean_after_first_round"]["train_phase_seconds"] == pytest.approx(0.5)
    assert secure["mean_after_first_round"]["bytes_received"] == 9450.0
    assert secure["mean_after_first_round"]["bytes_received_per_party"] == 3150.0
    assert plain["rows_upload_bytes_by_size"] == {"0": 224, "1": 160, "2": 224}
    assert secure["secagg_clipped"] == 0 + 1 + 2 and plain["secagg_clipped"] == 0

    graph = bench.summarize_graph("G", "G", plain, secure)
    assert graph["num_entities"] == N and graph["entity_dim"] == D and graph["num_parties"] == 3
    assert graph["masked_vector_bytes_formula"] == upload_bytes(N, D) == 8 * (N * (D + 1) + 1 + 48) + 4 * 128
    assert graph["plain_upload_bytes_per_party"] == pytest.approx(plain_total / 3)
    assert graph["plain_upload_matches_entity_counts"] is True
    assert graph["masked_vector_bytes_measured"] == [] and graph["masked_vector_matches_formula"] is None

    assert graph["secure_reply_bytes_per_party"] == 3150.0
    assert graph["secure_reply_bytes_beyond_masked_vector_per_party"] == pytest.approx(3150.0 - upload_bytes(N, D))
    assert graph["bytes_ratio_secure_to_plain"] == pytest.approx(3150.0 / (plain_total / 3))
    assert graph["seconds_per_round_after_first"] == {"plain": pytest.approx(0.6), "secure": pytest.approx(1.2)}
    assert graph["test_mrr_abs_difference"] == pytest.approx(0.0004)
    assert graph["quantization_step"] == 2 * 8.0 / 2**22
    json.dumps(graph)  # JSON-ready as it is


def test_the_masked_vectors_a_run_folder_records_are_checked_against_the_formula(bench, tmp_path) -> None:
    from server.secure_aggregation import upload_bytes

    plain = bench.summarize_run(_run_folder(tmp_path, "plain", [_rows_bytes()] * 2, [5.0, 0.5], 0.3), "p")
    folder = _run_folder(tmp_path, "secure", [9000, 9000], [5.0, 1.0], 0.3)
    for sizes, name in (((upload_bytes(N, D),) * 3, "same"), ((upload_bytes(N, D), 7, upload_bytes(N, D)), "odd")):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for row in rows:
            row["secagg_bytes"] = {str(k): {"masked_vector": b, "all_replies": 3000} for k, b in enumerate(sizes)}
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        graph = bench.summarize_graph("G", "G", plain, bench.summarize_run(folder, "s"))
        assert graph["masked_vector_bytes_measured"] == sorted(set(sizes)), name
        assert graph["masked_vector_matches_formula"] is (name == "same")


def test_a_plain_total_unlike_the_entity_counts_is_flagged_and_a_failed_round_is_left_out(
    bench: ModuleType, tmp_path: Path
) -> None:
    total = _rows_bytes()
    # round 2 lost party 1 (its 160 B missing): left out of the check, and the per-party mean is over two
    plain = bench.summarize_run(
        _run_folder(tmp_path, "plain", [total, total - 160], [1.0, 1.0], 0.3, failures={2: ["1: gone"]}), "p"
    )
    assert plain["rounds"][1]["parties_aggregated"] == ["0", "2"]
    assert plain["rounds"][1]["bytes_received_per_party"] == (total - 160) / 2
    assert plain["rounds"][1]["failures"] == ["1: gone"]
    secure = bench.summarize_run(_run_folder(tmp_path, "secure", [9000, 6000], [1.0, 1.0], 0.3), "s")
    assert bench.summarize_graph("G", "G", plain, secure)["plain_upload_matches_entity_counts"] is True

    wrong = bench.summarize_run(_run_folder(tmp_path / "w", "plain", [total, total + 2], [1.0, 1.0], 0.3), "p")
    assert bench.summarize_graph("G", "G", wrong, secure)["plain_upload_matches_entity_counts"] is False


def test_one_round_has_no_mean_after_the_first_and_the_graph_falls_back_to_round_one(
    bench: ModuleType, tmp_path: Path
) -> None:
    plain = bench.summarize_run(_run_folder(tmp_path, "plain", [_rows_bytes()], [2.0], 0.3), "p")
    secure = bench.summarize_run(_run_folder(tmp_path, "secure", [9000], [3.0], 0.3), "s")
    assert plain["mean_after_first_round"]["seconds"] is None
    graph = bench.summarize_graph("G", "G", plain, secure)
    assert graph["secure_reply_bytes_per_party"] == 3000.0
    assert graph["seconds_per_round_after_first"] == {"plain": None, "secure": None}


def test_runs_that_differ_in_a_setting_are_refused_naming_it(bench: ModuleType, tmp_path: Path) -> None:
    plain = bench.summarize_run(_run_folder(tmp_path, "plain", [1, 1], [1.0, 1.0], 0.3), "p")
    secure = bench.summarize_run(
        _run_folder(tmp_path, "secure", [1, 1], [1.0, 1.0], 0.3, run_config={"local-epochs": 2}), "s"
    )
    with pytest.raises(bench.BenchError, match=r"G: .*run-config keys \['local-epochs'\]"):
        bench.summarize_graph("G", "G", plain, secure)
    other = bench.summarize_run(
        _run_folder(tmp_path / "o", "secure", [1, 1], [1.0, 1.0], 0.3, entities=(14, 14, 14)), "s"
    )
    with pytest.raises(bench.BenchError, match="G: the plain and secure runs differ in parties"):
        bench.summarize_graph("G", "G", plain, other)


@pytest.mark.parametrize("missing", ["config.json", "final_metrics.json"])
def test_a_run_folder_without_its_records_is_an_error_naming_the_file(
    bench: ModuleType, tmp_path: Path, missing: str
) -> None:
    folder = _run_folder(tmp_path, "plain", [1], [1.0], 0.3)
    (folder / missing).unlink()
    with pytest.raises(bench.BenchError, match=rf"Nations \(plain\): cannot read .*{missing}"):
        bench.summarize_run(folder, "Nations (plain)")


def test_a_run_folder_without_rounds_or_a_field_is_an_error_naming_it(bench: ModuleType, tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, "plain", [1], [1.0], 0.3)
    (folder / "metrics.jsonl").write_text("")
    with pytest.raises(bench.BenchError, match=r"X: .*metrics.jsonl holds no round"):
        bench.summarize_run(folder, "X")
    (folder / "metrics.jsonl").write_text(json.dumps({"round": 1, "seconds": 1.0}) + "\n")
    with pytest.raises(bench.BenchError, match=r"X: .*metrics.jsonl row 1 lacks 'bytes_received'"):
        bench.summarize_run(folder, "X")
    final = json.loads((folder / "final_metrics.json").read_text())
    del final["best_valid_overall"]
    (folder / "final_metrics.json").write_text(json.dumps(final))
    with pytest.raises(bench.BenchError, match=r"X: .*final_metrics.json lacks 'best_valid_overall'"):
        bench.summarize_run(folder, "X")
    config = json.loads((folder / "config.json").read_text())
    del config["federation"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(bench.BenchError, match=r"X: .*config.json lacks 'federation'"):
        bench.summarize_run(folder, "X")


# ----------------------------------------------------------------------------- the runs
def test_the_two_runs_differ_in_the_mode_only(bench: ModuleType, tmp_path: Path) -> None:
    overrides = {"local-epochs": 1, "model": "DistMult", "track-test": True}
    plain = bench.sim_command("Nations", tmp_path / "p", 2, 3, overrides, "plain")
    secure = bench.sim_command("Nations", tmp_path / "p", 2, 3, overrides, "secure")
    assert plain[1:3] == ["-m", "server.simulation"]
    assert plain[plain.index("--rounds") + 1] == "2" and plain[plain.index("--clients") + 1] == "3"
    sets = [plain[i + 1] for i, a in enumerate(plain) if a == "--set"]
    assert sets == [
        "simskip-rounds=0",
        "local-epochs=1",
        'model="DistMult"',
        "track-test=true",
        "secure-aggregation=false",
    ]
    assert [a for a in plain if a != "secure-aggregation=false"] == [
        a for a in secure if a != "secure-aggregation=true"
    ]
    # a data folder brings its own parties; a simskip-rounds given with --set wins over the default 0
    folder = bench.sim_command(str(tmp_path), tmp_path / "r", 2, 3, {"simskip-rounds": 2}, "secure")
    assert "--clients" not in folder and "simskip-rounds=2" in folder and "simskip-rounds=0" not in folder
    assert bench.graph_label(str(tmp_path / "FB15k-237-Fed3")) == "FB15k-237-Fed3"
    assert bench.graph_label("UMLS") == "UMLS"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "secure-aggregation=true"], "--set secure-aggregation: set by the script"),
        (["--set", "no-such-key=1"], "unknown run-config key"),
        (["--data", "no/such/folder"], "--data: no/such/folder is not a folder"),
        (["--data", "Nations", "Nations"], "two graphs share a name"),
    ],
)
def test_bad_options_are_refused_before_any_run(bench: ModuleType, tmp_path: Path, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main([*argv, "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "out.json")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.json").exists()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_run_past_its_timeout_is_stopped_with_its_children_by_pid(bench: ModuleType, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time, pathlib\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "run.log"
    grandchild = None
    try:
        with pytest.raises(bench.BenchError, match=r"G \(secure\): simskip-sim ran past --timeout 3 s .*run\.log"):
            bench.run_child([sys.executable, "-c", script], log, 3.0, "G (secure)")
        grandchild = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while not _gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(grandchild)
        assert "started" in log.read_text()
    finally:
        if grandchild is None and pid_file.exists():
            grandchild = int(pid_file.read_text())
        if grandchild is not None and not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)  # only if the script under test failed to


def test_a_failed_run_is_an_error_naming_it_and_its_log(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with pytest.raises(bench.BenchError, match=r"UMLS \(plain\): simskip-sim exited with status 3; see .*run\.log"):
        bench.run_child([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], log, 30.0, "UMLS (plain)")
    assert "boom" in log.read_text()


# ----------------------------------------------------------------------------- the docs block
def test_the_docs_block_renders_the_table_the_load_and_the_command(
    bench: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    gen_docs = load_script("gen_docs")
    plain = bench.summarize_run(_run_folder(tmp_path, "plain", [_rows_bytes()] * 2, [5.0, 0.5], 0.3), "p")
    secure = bench.summarize_run(_run_folder(tmp_path, "secure", [9000, 9300], [5.0, 1.25], 0.3004), "s")
    report = {
        "command": "python scripts/bench_secagg.py --data G --rounds 2",
        "started_at": "2026-01-01T00:00:00Z",
        "machine": {"cpu": "Some CPU", "cpu_count": 2},
        "rounds": 2,
        "graphs": [bench.summarize_graph("G", "G", plain, secure)],
        "load_average_before": [2.04, 3.0, 3.1],
        "load_average_after": [4.0, 3.5, 3.2],
    }
    (tmp_path / "privacy").mkdir()
    source = tmp_path / "privacy" / "secagg-cost.json"
    source.write_text(json.dumps(report))
    monkeypatch.setattr(gen_docs, "RESULTS", tmp_path)
    block = gen_docs.secagg_cost_block()
    assert (
        "| G | 14 | 8 | 3 (14, 10, 14) | 203 B | 1,912 B (formula) | 3,100 B | 15.3 x | 0.50 / 1.25 | 0.3000 / 0.3004 |"
        in block
    )
    assert block.startswith("`secagg-cost.json`: per party and round")
    # a second report (a larger graph measured alone) follows the first, its recorded masked vector shown
    report["graphs"][0]["masked_vector_bytes_measured"] = [1912]
    (tmp_path / "privacy" / "secagg-cost-big.json").write_text(json.dumps(report))
    both = gen_docs.secagg_cost_block()
    assert both.index("`secagg-cost.json`") < both.index("`secagg-cost-big.json`")
    assert "| 1,912 B (measured) |" in both.split("`secagg-cost-big.json`")[1]
    (tmp_path / "privacy" / "secagg-cost-big.json").unlink()
    assert "load 2.0 / 3.0 / 3.1 before and 4.0 / 3.5 / 3.2 after" in block and "on 2 cores (Some CPU)" in block
    assert block.endswith("```bash\npython scripts/bench_secagg.py --data G --rounds 2\n```")
    del report["graphs"][0]["test_mrr"]
    source.write_text(json.dumps(report))
    with pytest.raises(gen_docs.DocsError, match="secagg-cost.json: lacks 'test_mrr'"):
        gen_docs.secagg_cost_block()
