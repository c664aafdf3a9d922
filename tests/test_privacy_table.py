"""scripts/privacy_table.py: the privacy-utility table's runner, end to end on UMLS (2 rounds, tiny dimensions).

Checks the run files and summary.json's shape, that the secagg stand-in trains as plain FedE, that a second call
skips finished runs (and reruns only a missing one), and that a finished run made with other options, or a
``--set`` the table owns, is an input error.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

TINY = ["--set", "embedding-dim=8", "--set", "local-epochs=1", "--set", "num-negs-per-pos=4"]


def _argv(out: Path, *extra: str, seeds: tuple[str, ...] = ("0",)) -> list[str]:
    return (
        ["--data", "UMLS", "--clients", "3", "--rounds", "2", "--models", "TransE", "--seeds", *seeds]
        + ["--modes", "plain", "secagg", "dp", "--noise-multipliers", "4", "--dp-clip", "0.5", "--k", "100"]
        + ["--attacks", "row-distance", "update-anticos", "--threads", "1", "--out", str(out), *TINY, *extra]
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path]:
    """One finished tiny table: ``(module, out folder)``."""
    module = load_script("privacy_table")
    out = tmp_path_factory.mktemp("privacy") / "table"
    assert module.main(_argv(out)) == 0
    return module, out


def _counting(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every attack run ``module`` starts (still running it)."""
    calls: list[list[str]] = []
    attack = module.attack_script()
    real = attack.main

    def main(argv):
        calls.append(list(argv))
        return real(argv)

    monkeypatch.setattr(attack, "main", main)
    return calls


def test_every_run_writes_its_report_and_the_summary_has_the_table(table) -> None:
    module, out = table
    for mode in ("plain", "secagg", "dp-z4"):
        report = json.loads((out / "TransE" / mode / "seed0.json").read_text())
        assert report["kge"]["model"] == "TransE" and report["kge"]["seed"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 100
    assert summary["data"]["parties"] == 3 and summary["data"]["rounds_budget"] == 2
    modes = summary["models"]["TransE"]
    assert set(modes) == {"plain", "secagg", "dp-z4"}
    for mode in modes.values():
        assert mode["seeds_done"] == [0] and mode["seeds_missing"] == []
        assert set(mode["test_mrr"]) == {"per_seed", "n", "mean", "std"}
        assert mode["test_mrr"]["n"] == 1 and mode["test_mrr"]["std"] is None
        assert mode["seconds_per_round"]["mean"] > 0
        assert mode["wall_seconds"]["mean"] >= mode["seconds_per_round"]["mean"]
        assert set(mode["attacks"]) == {"row-distance", "update-anticos", "selected"}
        for party in ("0", "1", "2"):
            cell = mode["attacks"]["row-distance"][party]["ordered"]
            assert set(cell) == {"precision_at_100", "recall_at_100", "precision_at_true_count"}
            assert 0 <= cell["precision_at_100"]["mean"] <= 1
            random = mode["random"][party]["ordered"]
            assert random["expected_precision"] == pytest.approx(random["true_pairs"] / random["candidates"])
            assert random["expected_recall_at_100"] == pytest.approx(100 / random["candidates"])
        assert mode["attacks"]["selected"]["0"]["chosen"]["0"] in {"row-distance", "update-anticos"}
    plain, secagg, dp = modes["plain"], modes["secagg"], modes["dp-z4"]
    assert (plain["view"], secagg["view"], dp["view"]) == ("uploads", "aggregate", "uploads")
    # the in-process stand-in trains as plain FedE; the note points to Flower's own measurement
    assert secagg["test_mrr"] == plain["test_mrr"]
    assert secagg["secure_aggregation"]["in_process_stand_in"] is True
    assert module.SECAGG_DOC in secagg["secure_aggregation"]["note"]
    assert plain["dp"] is None and secagg["dp"] is None and plain["secure_aggregation"] is None
    assert dp["dp"]["noise_multiplier"] == 4.0 and dp["dp"]["clip"] == 0.5 and dp["dp"]["delta"] > 0
    assert set(dp["dp"]["epsilon"]) == {"0", "1", "2"}
    assert all(eps["mean"] > 0 for eps in dp["dp"]["epsilon"].values())
    assert dp["dp"]["releases"] == {"0": 2, "1": 2, "2": 2}


def test_a_second_call_skips_finished_runs_and_reruns_a_missing_one(
    table, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    module, out = table
    calls = _counting(module, monkeypatch)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("seed*.json")}
    assert module.main(_argv(out)) == 0
    assert calls == []
    assert "0 run(s) done, 3 skipped" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in out.rglob("seed*.json")} == before
    (out / "TransE" / "dp-z4" / "seed0.json").unlink()
    assert module.main(_argv(out)) == 0
    assert len(calls) == 1 and calls[0][-1].endswith("dp-z4/seed0.json")
    assert json.loads((out / "summary.json").read_text())["models"]["TransE"]["dp-z4"]["seeds_done"] == [0]


def test_a_missing_seed_is_listed_by_the_summary(table, monkeypatch: pytest.MonkeyPatch) -> None:
    module, out = table
    calls = _counting(module, monkeypatch)
    assert module.main(_argv(out, "--summary-only", seeds=("0", "1"))) == 0
    assert calls == []  # --summary-only runs nothing
    plain = json.loads((out / "summary.json").read_text())["models"]["TransE"]["plain"]
    assert plain["seeds_done"] == [0] and plain["seeds_missing"] == [1]
    assert plain["test_mrr"]["per_seed"].keys() == {"0"}


def test_a_run_made_with_other_options_is_an_input_error(table, capsys) -> None:
    module, out = table
    with pytest.raises(SystemExit) as stop:
        module.main(_argv(out, "--set", "learning-rate=0.5"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "plain/seed0.json: made by another command" in err and "remove it or use another --out" in err


def test_keys_the_table_sets_itself_are_refused(tmp_path: Path, capsys) -> None:
    module = load_script("privacy_table")
    with pytest.raises(SystemExit) as stop:
        module.main(_argv(tmp_path / "t", "--set", "dp-noise-multiplier=2"))
    assert stop.value.code == 2
    assert "--set dp-noise-multiplier: set by the table itself" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_an_attack_option_it_refuses_stops_the_table_before_any_run(tmp_path: Path, capsys) -> None:
    module = load_script("privacy_table")
    with pytest.raises(SystemExit) as stop:
        module.main(_argv(tmp_path / "t", "--set", "secagg-clipping-range=3"))  # not a power of 2
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "secagg-clipping-range must be a power of 2" in err  # the attack's own check, first
    assert "TransE plain seed 0: the attack's options were refused" in err
    assert not list((tmp_path / "t").rglob("*.json"))


def test_statistics_over_seeds() -> None:
    module = load_script("privacy_table")
    cell = module.stats({0: 0.2, 1: 0.4, 2: None})
    assert cell["per_seed"] == {"0": 0.2, "1": 0.4, "2": None}
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.3) and cell["std"] == pytest.approx(0.1414213562)
    assert module.stats({}) == {"per_seed": {}, "n": 0, "mean": None, "std": None}
    modes = module.expand_modes(["plain", "dp", "secagg"], [1.0, 16.0])
    assert [mode.name for mode in modes] == ["plain", "dp-z1", "dp-z16", "secagg"]


def test_a_failed_run_gives_exit_status_1_and_an_interrupt_stops_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    module = load_script("privacy_table")
    attack = module.attack_script()
    statuses = iter([2, 0, 0])
    calls: list[list[str]] = []

    def fake_main(argv) -> int:  # no training: the first run fails, the others finish without a report
        calls.append(list(argv))
        return next(statuses)

    monkeypatch.setattr(attack, "main", fake_main)
    assert module.main(_argv(tmp_path / "t")) == 1
    assert len(calls) == 3  # the others still ran
    err = capsys.readouterr().err
    assert "[privacy] failed run: TransE plain seed 0: exit status 2" in err
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["models"]["TransE"]["plain"]["seeds_missing"] == [0]
    monkeypatch.setattr(attack, "main", lambda argv: calls.append(list(argv)) or 130)
    calls.clear()
    assert module.main(_argv(tmp_path / "t")) == 130
    assert len(calls) == 1  # stopped at the first interrupted run
    assert "interrupted; finished runs are kept" in capsys.readouterr().err
