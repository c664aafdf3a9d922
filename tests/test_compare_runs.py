"""scripts/compare_runs.py: two runs of the same code and seed match; a changed metric is found."""

from __future__ import annotations

import json

from conftest import load_script


def _compare_runs():
    return load_script("compare_runs")


def _run_folder(folder, mrr: float, seconds: float, title: str):
    folder.mkdir()
    (folder / "final_metrics.json").write_text(
        json.dumps(
            {"best_round": 2, "test": {"overall": {"mrr": mrr}}, "wall_seconds": seconds, "run_dir": str(folder)}
        )
    )
    rows = [
        {"round": r, "seconds": seconds * r, "valid_overall": {"mrr": mrr - 0.1 / r}, "server_peak_rss_mb": 400 + r}
        for r in (1, 2)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "results.json").write_text(json.dumps({"title": title, "protocols": {"as-trained": {"gain": 0.01}}}))


def test_timings_paths_and_titles_are_left_out(tmp_path):
    compare_runs = _compare_runs()
    _run_folder(tmp_path / "a", 0.5, 1.0, "Results of a")
    _run_folder(tmp_path / "b", 0.5, 2.5, "Results of b")
    report = compare_runs.compare(tmp_path / "a", tmp_path / "b")
    assert report["identical"] and set(report["files"]) == {"final_metrics.json", "metrics.jsonl", "results.json"}
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0


def test_a_changed_metric_is_reported_where_it_is(tmp_path, capsys):
    compare_runs = _compare_runs()
    _run_folder(tmp_path / "a", 0.5, 1.0, "a")
    _run_folder(tmp_path / "b", 0.5 + 1e-9, 1.0, "b")  # exact comparison: the last bit counts
    report = compare_runs.compare(tmp_path / "a", tmp_path / "b")
    assert not report["identical"]
    assert report["files"]["final_metrics.json"]["first_differences"] == ["/test/overall/mrr: 0.5 != 0.500000001"]
    assert report["files"]["metrics.jsonl"]["differences"] == 2  # both rounds' valid MRR
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
