"""scripts/downstream_time.py on a tiny synthetic grid cell: the recorded seconds are summed, the work
counts and the epochs of candidates not chosen follow the stopping rule, the derived split adds up to the
recorded seconds, and the redundancy flags name the repeated test rankings.

The cell: one client, 2 seeds, 2 candidates (2 search settings x skip strength 1), protocols
``as-trained`` (nothing trained) and ``relation-refit:trained`` (2 epochs at most, patience 1).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import load_script

UNTRAINED = {"as-trained"}


@pytest.fixture(scope="module")
def script():
    return load_script("downstream_time")


def _metrics(values: list[float]) -> dict[str, Any]:
    """One row's test columns for one client: ``{column: {"seeds": [...]}}``."""
    columns = ("standard.mrr", "fede.mrr")
    return {column: {"mean": sum(values) / len(values), "n": len(values), "seeds": list(values)} for column in columns}


def _protocol(
    seconds: float,
    valid: dict[str, list[float]],
    candidates: dict[tuple[int, float], list[float]],
    epochs: dict[str, list[int]],
    tests: dict[str, list[float]],
    prefers_unrefined: bool = False,
) -> dict[str, Any]:
    chosen = max(candidates, key=lambda c: (sum(candidates[c]), -c[0]))
    return {
        "seeds": [0, 1],
        "rows": {row: {"0": _metrics(values)} for row, values in tests.items()},
        "valid": {row: {"0": {"seeds": values}} for row, values in valid.items()},
        "epochs": {row: {"0": values} for row, values in epochs.items()},
        "selection": {
            "0": {
                "candidates": [{"setting": k, "alpha": a, "valid": v} for (k, a), v in candidates.items()],
                "chosen": {"setting": chosen[0], "alpha": chosen[1], "overrides": {}},
                "unrefined_valid": valid["unrefined"],
                "valid_prefers_unrefined": prefers_unrefined,
            }
        },
        "seconds": {"0": seconds},
    }


def _cell() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results.json, cell.json)``. As-trained: 7 runs (the unrefined rows once, 2 candidates x 2 seeds,
    2 perturbed), 7 valid checks and 5 test rankings in 12 s: 1 s per ranking pass. Relation-refit:
    every start score cached by as-trained; epochs 1 where the valid score equals the start score, else 2:
    12 epochs, 12 valid checks, 6 test rankings; 42 s = 18 ranking passes + 12 epochs x 2 s."""
    as_trained = _protocol(
        12.0,
        valid={"unrefined": [0.55, 0.55], "refined": [0.5, 0.62], "perturbed": [0.3, 0.31]},
        candidates={(0, 1.0): [0.5, 0.62], (1, 1.0): [0.4, 0.45]},
        epochs={"unrefined": [0, 0], "refined": [0, 0], "perturbed": [0, 0]},
        tests={"unrefined": [0.25, 0.25], "refined": [0.2, 0.3], "perturbed": [0.1, 0.11]},
    )
    refit = _protocol(
        42.0,
        # seed 0: every row at its start score (best epoch 0); seed 1: every row improved
        valid={"unrefined": [0.55, 0.56], "refined": [0.5, 0.63], "perturbed": [0.3, 0.35]},
        candidates={(0, 1.0): [0.5, 0.63], (1, 1.0): [0.41, 0.45]},  # (1, 1.0): 2 epochs, then 1
        epochs={"unrefined": [1, 2], "refined": [1, 2], "perturbed": [1, 2]},
        # seed 0 is the as-trained model, so its test metrics are the as-trained ones
        tests={"unrefined": [0.25, 0.26], "refined": [0.2, 0.31], "perturbed": [0.1, 0.12]},
    )
    results = {
        "clients": ["0", "overall"],
        "num_test": {"0": 100, "overall": 100},
        "protocols": {"as-trained": as_trained, "relation-refit:trained": refit},
        "run": {
            "refinement": {
                "downstream-seeds": 2,
                "simskip-search": "lr=3e-4;lr=1e-3",
                "simskip-gate-grid": "0,1",
                "refit-epochs": 2,
                "downstream-patience": 1,
                "simskip-no-skip-ablation": False,
                "simskip-skip": True,
            },
            "kge": {"model": "TransE"},
            "setting": "fede",
            "simskip_seconds": 10.0,
            "downstream_seconds": 54.5,
        },
    }
    cell = {"status": "done", "device": "cpu", "refine_seconds": 70.0, "run_seconds": 5.0}
    return results, cell


def _write_grid(root: Path, results: dict[str, Any], cell: dict[str, Any]) -> Path:
    folder = root / "grid" / "FB15k-237-Fed3" / "TransE"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (folder / "cell.json").write_text(json.dumps(cell), encoding="utf-8")
    return root / "grid"


def test_sums_counts_and_derived_split(script, tmp_path):
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "breakdown.json"
    grid = _write_grid(tmp_path, *_cell())
    assert script.main(["--grid", str(grid), "--out", str(out)], untrained=lambda: set(UNTRAINED)) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["command"].startswith("python scripts/downstream_time.py --grid")
    assert "machine_note" in report and report["derivations"]
    cell = report["cells"]["FB15k-237-Fed3/TransE"]
    assert cell["recorded"]["simskip_plus_downstream_seconds"] == 64.5
    assert cell["outside_seconds"] == 5.5  # 70 - 10 - 54.5
    assert cell["simskip"] == {"encoders": 4, "seconds_per_encoder": 2.5}
    at, refit = cell["clients"]["0"]["as-trained"], cell["clients"]["0"]["relation-refit:trained"]
    assert at["counts"] == {
        "runs": 7,
        "epoch0_valid_checks": 7,
        "train_epochs": 0,
        "valid_checks": 7,
        "test_rankings": 5,
    }
    assert refit["counts"] == {
        "runs": 8,
        "epoch0_valid_checks": 0,
        "train_epochs": 12,
        "valid_checks": 12,
        "test_rankings": 6,
    }
    assert at["derived"]["seconds_per_ranking"] == 1.0
    assert (refit["derived"]["valid_seconds"], refit["derived"]["test_seconds"]) == (12.0, 6.0)
    assert (refit["derived"]["training_seconds"], refit["derived"]["seconds_per_epoch"]) == (24.0, 2.0)
    # per run: epochs x (2 + 1) + (epoch-0 check + test ranking) x 1
    assert refit["derived"]["by_row_kind"] == {
        "unrefined": 11.0,
        "refined": 11.0,
        "other_candidates": 9.0,
        "perturbed": 11.0,
    }
    assert at["derived"]["by_row_kind"] == {"unrefined": 2.0, "refined": 4.0, "other_candidates": 2.0, "perturbed": 4.0}
    assert refit["derived"]["by_seed"] == [4 + 4 + 6 + 4, 7 + 7 + 3 + 7]
    assert cell["epoch_inference_check"] == {"rows": 6, "agree": 6, "disagree": []}
    total = report["headline"]["fed3_main_total"]
    assert total["simskip_plus_downstream_seconds"] == 64.5
    assert total["protocols"] == {"as-trained": {"seconds": 12.0}, "relation-refit:trained": {"seconds": 42.0}}
    assert total["derived"]["training_seconds"] == 24.0
    assert sum(total["derived"]["by_row_kind"].values()) == pytest.approx(54.0)
    assert report["headline"]["fed3_main_cells"]["FB15k-237-Fed3/TransE"]["speedup_needed"] == round(64.5 / 360, 2)


def test_redundancy_flags(script):
    results, cell = _cell()
    flags = script.analyse_cell(results, cell, untrained=UNTRAINED)["flags"]
    repeats = flags["test_repeats_as_trained"]
    # seed 0 of relation-refit: all three tested rows kept their start (as-trained) state
    assert repeats["items"] == [
        "relation-refit:trained/0/0/unrefined",
        "relation-refit:trained/0/0/refined",
        "relation-refit:trained/0/0/perturbed",
    ]
    assert (repeats["count"], repeats["bit_identical"], repeats["seconds"]) == (3, 3, 3.0)
    across = flags["identical_across_seeds"]
    assert (across["items"], across["computed_once"]) == ([], ["as-trained/0/unrefined"])
    assert across["repeated_work"] == 0
    assert flags["candidates_trained_not_chosen"] == {"runs": 4, "epochs_low": 3, "epochs_high": 3, "seconds": 11.0}
    assert flags["chosen_rank_under_as_trained"]["kept_by_top_m"] == {"1": 1, "2": 1}
    assert flags["chosen_rank_under_as_trained"]["ranks"] == {"relation-refit:trained/0": 1}
    assert flags["tested_though_valid_prefers_unrefined"]["test_rankings"] == 0


def test_repeated_deterministic_rows_and_changed_metrics(script):
    """A row that never left its start state in any seed is repeated work; a metric that differs is not bit-identical."""
    results, cell = _cell()
    refit = results["protocols"]["relation-refit:trained"]
    refit["valid"]["unrefined"]["0"]["seeds"] = [0.55, 0.55]
    refit["epochs"]["unrefined"]["0"] = [1, 1]
    refit["rows"]["unrefined"]["0"] = _metrics([0.25, 0.25])
    refit["rows"]["perturbed"]["0"]["fede.mrr"]["seeds"][0] = 0.5  # not the as-trained model's value
    out = script.analyse_cell(results, cell, untrained=UNTRAINED)
    across = out["flags"]["identical_across_seeds"]
    assert across["items"] == ["relation-refit:trained/0/unrefined"]
    assert across["repeated_work"] == 1
    repeats = out["flags"]["test_repeats_as_trained"]
    assert (repeats["count"], repeats["bit_identical"]) == (4, 3)
    assert repeats["not_bit_identical"] == ["relation-refit:trained/0/0/perturbed"]
    assert out["clients"]["0"]["relation-refit:trained"]["counts"]["train_epochs"] == 11


def test_unknown_start_gives_an_epoch_range_and_missing_fields_are_named(script, tmp_path):
    results, cell = _cell()
    broken = copy.deepcopy(results)
    # another chosen candidate than as-trained's: the perturbed rows are new (an epoch-0 check each, epochs unknown)
    refit = results["protocols"]["relation-refit:trained"]
    refit["selection"]["0"]["candidates"][1]["valid"] = [0.6, 0.7]
    refit["selection"]["0"]["chosen"] = {"setting": 1, "alpha": 1.0, "overrides": {}}
    refit["valid"]["refined"]["0"]["seeds"] = [0.6, 0.7]
    counts = script.analyse_cell(results, cell, untrained=UNTRAINED)["clients"]["0"]["relation-refit:trained"]["counts"]
    assert counts["epoch0_valid_checks"] == 2
    # no as-trained run for the client: no start scores, so the candidates' epochs are a range, every run checks
    # epoch 0, and nothing is split into training and ranking
    del results["protocols"]["as-trained"]["seconds"]["0"]
    out = script.analyse_cell(results, cell, untrained=UNTRAINED)
    refit_out = out["clients"]["0"]["relation-refit:trained"]
    assert refit_out["counts"]["train_epochs"] == [11, 13]  # 9 recorded + 2 other-candidate runs of 1..2 epochs
    assert refit_out["counts"]["epoch0_valid_checks"] == 8
    assert refit_out["derived"] == {"seconds_per_ranking": None}
    assert "training_seconds" not in out["protocols"]["relation-refit:trained"]
    del broken["protocols"]["as-trained"]["selection"]
    with pytest.raises(script.GridReadError, match="as-trained, client 0: no selection"):
        script.analyse_cell(broken, cell, untrained=UNTRAINED, where="cell")
    assert script.main(["--grid", str(tmp_path / "none"), "--print"], untrained=lambda: set(UNTRAINED)) == 1
    del results["run"]["simskip_seconds"]
    grid = _write_grid(tmp_path, results, cell)
    with pytest.raises(script.GridReadError, match="TransE: results.json lacks or mangles 'simskip_seconds'"):
        script.build_breakdown(grid, untrained=UNTRAINED, command="test")


def test_a_cell_with_pruned_candidates_counts_only_the_trained_ones(script, tmp_path):
    """downstream-top-candidates: the pruned candidate of a trained protocol never ran, so it is neither a run
    nor an epoch, and the cell still reads."""
    results, cell = _cell()
    selection = results["protocols"]["relation-refit:trained"]["selection"]["0"]
    dropped = selection["candidates"].pop(1)  # (1, 1.0), not the chosen one
    selection["pruned"] = [{"setting": dropped["setting"], "alpha": dropped["alpha"], "start_valid": [0.4, 0.45]}]
    results["run"]["refinement"]["downstream-top-candidates"] = 1
    grid = _write_grid(tmp_path, results, cell)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "breakdown.json"
    assert script.main(["--grid", str(grid), "--out", str(out)], untrained=lambda: set(UNTRAINED)) == 0
    refit = json.loads(out.read_text(encoding="utf-8"))["cells"]["FB15k-237-Fed3/TransE"]["clients"]["0"]
    counts = refit["relation-refit:trained"]["counts"]
    assert counts["runs"] == 6  # 2 seeds x (unrefined, the kept candidate, perturbed)
    assert counts["train_epochs"] == 9  # the unpruned cell's 12 less the pruned candidate's 2 + 1
    assert "other_candidates" not in refit["relation-refit:trained"]["derived"]["by_row_kind"] or (
        refit["relation-refit:trained"]["derived"]["by_row_kind"]["other_candidates"] == 0
    )
