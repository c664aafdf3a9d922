"""scripts/baselines_summary.py: results/baselines/summary.json from the run folders, its staleness check,
and the baselines page's tables (a tiny hand-made results tree; no training)."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import load_script

bs = load_script("baselines_summary")


def _write(path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")


def _run(root, seed, standard, fede, trained, budget, best, *, status="done", row="DistMult", **extra) -> None:
    """One run folder as scripts/run_baselines.py writes it (only the keys the summary reads)."""
    folder = root / "FB15k-237-Fed3" / row / "fede" / f"seed{seed}"
    _write(
        folder / "final_metrics.json",
        {
            "best_round": best,
            "rounds_trained": trained,
            "rounds_budget": budget,
            "eval_protocol": "standard",
            "test_overall": {"mrr": standard},
            "test_protocols": {"standard": {"overall": {"mrr": standard}}, "fede": {"overall": {"mrr": fede}}},
            **extra,
        },
    )
    _write(
        folder / "run.json",
        {
            "status": status,
            "preset": "fb15k237-distmult",
            "command": "python scripts/run_baselines.py --x",
            "wall_seconds": 10.0,
        },
    )


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "baselines"
    _run(root, 0, 0.30, 0.36, 40, 300, 37)
    _run(root, 1, 0.32, 0.37, 300, 300, 300)
    _run(
        root,
        2,
        0.31,
        0.39,
        52,
        300,
        49,
        stopping={"ended_by": "every party stopped", "parties": {"0": {"best_round": 49}, "1": {"best_round": 30}}},
    )
    _run(root, 3, 0.99, 0.99, 5, 300, 2, status="running")  # unfinished: left out
    _write(
        root / "central" / "distmult" / "final_metrics.json",  # the model's name comes from its config
        {  # as scripts/run_central.py writes it (the keys the summary reads)
            "test": {"mrr": 0.335, "hits@1": 0.24, "hits@3": 0.37, "hits@10": 0.52},
            "protocol": {"name": "standard"},
            "data": {"name": "FB15k-237", "test": 20466, "entities": 14541},
            "config": {"eval-protocol": "standard", "model": "DistMult"},
            "preset": "fb15k237-distmult",
            "wall_seconds": 3600.0,  # the last attempt's
            "wall_seconds_all_attempts": 7200.0,
            "peak_rss_mib": 3072.0,
            "command": "python scripts/run_central.py --y",
            "rounds_trained": 120,
            "rounds_budget": 400,
            "best_round": 117,
        },
    )
    return root


def test_summary_means_stds_and_stop_reasons(tree) -> None:
    summary = bs.build_summary(tree)
    entry = summary["models"]["DistMult"]["splits"]["FB15k-237-Fed3"]["fede"]
    assert sorted(entry["seeds"]) == ["0", "1", "2"] and entry["n"] == 3  # seed 3 is not done
    standard, fede = [0.30, 0.32, 0.31], [0.36, 0.37, 0.39]
    assert entry["mean"]["test_standard_mrr"] == pytest.approx(sum(standard) / 3)
    assert entry["std"]["test_standard_mrr"] == pytest.approx(statistics.stdev(standard), abs=1e-6)
    assert entry["std"]["test_standard_mrr"] == pytest.approx(0.01, abs=1e-6)  # sample std (ddof 1): 0.01
    assert entry["mean"]["test_fede_mrr"] == pytest.approx(sum(fede) / 3)
    # by hand: mean 0.37333; squared deviations 0.00017778 + 0.00001111 + 0.00027778 = 0.00046667; / (3 - 1)
    assert entry["std"]["test_fede_mrr"] == pytest.approx((0.00046667 / 2) ** 0.5, abs=1e-6)
    assert entry["mean"]["best_round"] == pytest.approx((37 + 300 + 49) / 3, abs=1e-6)
    seeds = entry["seeds"]
    assert seeds["0"]["stop_reason"] == "patience"  # derived: 40 < 300
    assert seeds["1"]["stop_reason"] == "round budget"  # derived: 300 == 300
    assert seeds["2"]["stop_reason"] == "every party stopped"  # the runner's record, passed through
    assert seeds["2"]["party_best_rounds"] == {"0": 49, "1": 30}
    assert entry["stop_reasons"] == ["every party stopped", "patience", "round budget"]
    assert entry["presets"] == ["fb15k237-distmult"]
    central = summary["models"]["DistMult"]["central"]
    assert central["test"] == {"mrr": 0.335, "hits@1": 0.24, "hits@3": 0.37, "hits@10": 0.52}
    assert (central["preset"], central["wall_seconds"], central["peak_rss_mb"]) == ("fb15k237-distmult", 7200.0, 3072.0)
    assert central["stop_reason"] == "patience"
    assert summary["commands"] == ["python scripts/run_baselines.py --x", "python scripts/run_central.py --y"]


def test_one_seed_has_no_std(tmp_path) -> None:
    _run(tmp_path, 0, 0.30, 0.36, 40, 300, 37)
    entry = bs.build_summary(tmp_path)["models"]["DistMult"]["splits"]["FB15k-237-Fed3"]["fede"]
    assert entry["n"] == 1 and entry["mean"]["test_standard_mrr"] == 0.3
    assert set(entry["std"].values()) == {None}


def test_check_fresh_then_stale_and_bytes_stable(tree, capsys) -> None:
    args = ["--root", str(tree)]
    assert bs.main([*args, "--check"]) == 1  # no summary.json yet, but runs to summarize
    assert bs.main(args) == 0
    first = (tree / "summary.json").read_bytes()
    assert bs.main([*args, "--check"]) == 0
    assert bs.main(args) == 0
    assert (tree / "summary.json").read_bytes() == first  # deterministic: no timestamps
    _run(tree, 4, 0.2, 0.2, 10, 300, 7)
    capsys.readouterr()
    assert bs.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "summary.json is stale" in err and "+++ generated" in err


def test_empty_or_absent_root_gives_empty_tables(tmp_path) -> None:
    assert bs.main(["--root", str(tmp_path / "absent"), "--check"]) == 0  # nothing to summarize, no file
    summary = bs.build_summary(tmp_path / "absent")
    assert summary["models"] == {} and summary["commands"] == []
    assert bs.NO_RUNS in bs.central_table(summary)
    assert bs.NO_RUNS in bs.federated_table(summary, {})
    assert bs.NO_RUNS in bs.commands_block(summary).lower()
    assert "| TransE | – | 31.3 | – |" in bs.central_table(summary)  # LibKGE's number, ours absent: no fake value


def test_malformed_run_file_is_named(tmp_path, capsys) -> None:
    folder = tmp_path / "Fed3" / "TransE" / "fede" / "seed0"
    folder.mkdir(parents=True)
    (folder / "final_metrics.json").write_text("{", encoding="utf-8")
    assert bs.main(["--root", str(tmp_path)]) == 1
    assert "seed0/final_metrics.json" in capsys.readouterr().err


def test_tables_show_points_differences_and_the_old_grid(tree) -> None:
    summary = bs.build_summary(tree)
    central = bs.central_table(summary)
    assert (
        "| DistMult | FB15k-237 (20466, 14541) | 34.3 | 33.5 | -0.8 | 24.0 | 37.0 | 52.0 | `fb15k237-distmult` | 120 (117) | patience | 2.00 | 3.0 |"
        in central
    )
    old = {("FB15k-237-Fed3", "DistMult", "fede"): {"standard": 0.174, "fede": 0.224, "rounds_run": 6, "best_round": 3}}
    federated = bs.federated_table(summary, old)
    assert bs.NO_RUNS not in federated
    row = next(line for line in federated.splitlines() if "| DistMult | fede |" in line)
    assert "| 3 | 31.0 ± 1.0 | 37.3 ± 1.5 |" in row
    assert "0: 40 (37, patience); 1: 300 (300, round budget); 2: 52 (49, every party stopped)" in row
    assert row.endswith("| 17.4 | 22.4 | 6 (3) |")


def test_committed_summary_is_up_to_date(capsys) -> None:
    assert bs.main(["--check"]) == 0, (
        "results/baselines/summary.json is stale: run `python scripts/baselines_summary.py`\n" + capsys.readouterr().err
    )


def test_a_variant_is_its_own_row_beside_the_first_recipe(tree) -> None:
    _run(tree, 0, 0.34, 0.40, 90, 300, 87, row="DistMult-reciprocal")
    central = tree / "central" / "distmult-reciprocal" / "final_metrics.json"
    _write(central, {"test": {"mrr": 0.331}, "config": {"model": "DistMult"}, "preset": "fb15k237-distmult-reciprocal"})
    summary = bs.build_summary(tree)
    assert summary["models"]["DistMult"]["central"]["test"]["mrr"] == 0.335  # the first recipe's row is kept
    assert summary["models"]["DistMult-reciprocal"]["central"]["test"]["mrr"] == 0.331
    assert summary["models"]["DistMult-reciprocal"]["splits"]["FB15k-237-Fed3"]["fede"]["n"] == 1
    lines = bs.central_table(summary).splitlines()
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert rows == ["TransE", "RotatE", "DistMult", "DistMult-reciprocal", "ComplEx"]
    assert "| DistMult-reciprocal | – | 34.3 | 33.1 | -1.2 |" in bs.central_table(summary)  # LibKGE's DistMult
    federated = bs.federated_table(summary, {})
    assert federated.index("| DistMult | fede |") < federated.index("| DistMult-reciprocal | fede |")


@pytest.mark.parametrize(
    ("model", "folder", "row"),
    [
        ("DistMult", "distmult", "DistMult"),
        ("DistMult", "distmult-reciprocal", "DistMult-reciprocal"),
        ("DistMult", "other", "DistMult-other"),
        (None, "odd", "odd"),
    ],
)
def test_central_rows(model, folder, row) -> None:
    assert bs.central_row(model, folder) == row
