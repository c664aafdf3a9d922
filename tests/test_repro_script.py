"""``scripts/repro_quickstart.py``: what each variant runs with and what it records (no real run)."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import load_script


def test_a_variant_runs_the_quick_start_with_its_environment_and_records_final_metrics(tmp_path, monkeypatch):
    repro = load_script("repro_quickstart")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")  # the caller's own value must not leak into a variant
    monkeypatch.setenv("SIMSKIP_NUMERICS", "native")
    seen = {}

    def fake_run(command, *, env, **kwargs):
        seen.update(command=command, env=env)
        run_dir = tmp_path / "pinned-avx2-cpu"
        run_dir.mkdir()
        final = {
            "test_overall": {"mrr": 0.7212},
            "best_valid_overall": {"mrr": 0.7254},
            "best_round": 14,
            "rounds_run": 17,
            "test": {"1": {"mrr": 0.8}, "0": {"mrr": 0.6}},
        }
        (run_dir / "final_metrics.json").write_text(json.dumps(final))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(repro.subprocess, "run", fake_run)
    record = repro.run_variant("pinned-avx2-cpu", tmp_path, timeout=10)
    assert seen["command"][1:3] == ["-m", "server.simulation"]
    assert seen["command"][3:11] == [
        "--dataset",
        "UMLS",
        "--clients",
        "3",
        "--preset",
        "small-graph",
        "--quiet",
        "--run-dir",
    ]
    assert "ATEN_CPU_CAPABILITY" not in seen["env"] and "SIMSKIP_NUMERICS" not in seen["env"]  # simskip-sim pins
    assert seen["env"]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2" and seen["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert (record["test_mrr"], record["valid_mrr"], record["best_round"]) == (0.7212, 0.7254, 14)
    assert list(record["test_mrr_per_client"]) == ["0", "1"] and "load_1min_before" in record
    assert repro._groups([record, {**record, "variant": "pinned"}]) == {
        "test 0.721200 / valid 0.725400 / best round 14": ["pinned-avx2-cpu", "pinned"]
    }


def test_a_failed_variant_is_recorded_with_its_error(tmp_path, monkeypatch):
    repro = load_script("repro_quickstart")
    monkeypatch.setattr(
        repro.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", "boom\n")
    )
    record = repro.run_variant("native", tmp_path, timeout=10)
    assert record["returncode"] == 1 and record["error"] == "boom\n" and "test_mrr" not in record
