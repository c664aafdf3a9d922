"""scripts/run_baselines.py on a tiny grid: Nations over 2 parties, TransE, fede + isolation, 2 KGE seeds,
2 rounds (in-process runners, about ten seconds): the committed folder's files and keys, the skip of
finished runs, and the resume of an interrupted one."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

from client.kge.run_folder import read_jsonl

ARGS = [
    "--models",
    "TransE",
    "--datasets",
    "Nations",
    "--rounds",
    "2",
    "--clients",
    "2",
    "--set",
    "embedding-dim=8",
    "--set",
    "num-negs-per-pos=4",
    "--set",
    "batch-size=128",
    "--set",
    "eval-every=1",
    "--set",
    "patience=5",
    "--set",
    "local-epochs=1",
]
COMMITTED = {"final_metrics.json", "metrics.jsonl", "run.json"}


@pytest.fixture(scope="module")
def rb():
    return load_script("run_baselines")


@pytest.fixture(scope="module")
def grid(rb, tmp_path_factory):
    """The tiny grid, run once: ``(out, work, argv)``."""
    base = tmp_path_factory.mktemp("baselines")
    out, work = base / "out", base / "work"
    argv = ["--out", str(out), "--work", str(work), *ARGS, "--settings", "fede", "isolation", "--seeds", "0", "1"]
    assert rb.main(argv) == 0
    return out, work, argv


def test_runs_write_small_committed_files_with_both_protocols(grid) -> None:
    out, work, _ = grid
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*/*") if p.is_dir())
    assert folders == [f"Nations/TransE/{s}/seed{k}" for s in ("fede", "isolation") for k in (0, 1)]
    for folder in (out / f for f in folders):
        assert {p.name for p in folder.iterdir()} == COMMITTED  # no embeddings, data or checkpoint
        assert sum(p.stat().st_size for p in folder.iterdir()) < 32_000
        final = json.loads((folder / "final_metrics.json").read_text(encoding="utf-8"))
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        rows = read_jsonl(folder / "metrics.jsonl")
        assert [row["round"] for row in rows] == [1, 2]
        assert all(
            row["seconds"] > 0 and set(row["valid"]) == {"0", "1"} and "mrr" in row["valid_overall"] for row in rows
        )
        assert (final["rounds_trained"], final["rounds_budget"], final["stop_reason"]) == (2, 2, "round budget")
        assert final["best_round"] in (1, 2) and final["clients"] == ["0", "1"]
        protocols = final["test_protocols"]
        assert set(protocols) == {"standard", "fede"}
        # the standard protocol re-evaluated from the written rows is the runner's own test
        assert protocols["standard"]["overall"]["mrr"] == pytest.approx(final["test_overall"]["mrr"], abs=1e-6)
        assert "hits@5" in protocols["fede"]["overall"] and "hits@3" in protocols["standard"]["overall"]
        seed = int(folder.name.removeprefix("seed"))
        assert run["status"] == "done" and run["seed"] == seed and run["config"]["seed"] == seed
        assert run["sets"]["seed"] == seed and run["preset"] is None
        assert run["command"].startswith("python scripts/run_baselines.py --out ")
        assert (
            f"--seeds {seed}" in run["single_run_command"]
            and "--settings " + folder.parent.name in run["single_run_command"]
        )
        assert run["wall_seconds"] > 0 and run["peak_rss_mb"] > 0 and len(run["machine_at_start"]["load_average"]) == 3
        assert len(run["attempts"]) == 1 and run["attempts"][0]["trained"] is True
        assert (work / folder.relative_to(out) / "config.json").is_file()
        assert not (work / folder.relative_to(out) / "checkpoint").exists()  # removed once done
    seeds = [
        json.loads((out / f"Nations/TransE/fede/seed{k}/final_metrics.json").read_text())["test_overall"]
        for k in (0, 1)
    ]
    assert seeds[0]["mrr"] != seeds[1]["mrr"]  # the seed reaches the run


def test_finished_runs_are_skipped_on_rerun(rb, grid, capsys) -> None:
    out, _, argv = grid
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert rb.main(argv) == 0
    assert capsys.readouterr().out.count("done, skipped") == 4
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_finished_run_of_other_values_is_neither_skipped_nor_overwritten(rb, grid, capsys) -> None:
    out, _, argv = grid
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert rb.main([*argv, "--set", "learning-rate=0.02"]) == 1  # another recipe, same folders
    err = capsys.readouterr().err
    assert "holds a run with other values" in err and "another --variant" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_variant_is_its_own_row(rb, tmp_path) -> None:
    argv = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *ARGS, "--settings", "fede"]
    assert rb.main([*argv, "--seeds", "0", "--set", "learning-rate=0.02", "--variant", "fast2"]) == 0
    folder = tmp_path / "out" / "Nations" / "TransE-fast2" / "fede" / "seed0"
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert (run["model"], run["variant"], run["config"]["learning-rate"]) == ("TransE", "fast2", 0.02)
    assert "--variant fast2" in run["single_run_command"]
    assert not (tmp_path / "out" / "Nations" / "TransE").exists()


def test_an_interrupted_run_resumes_after_its_last_round(rb, grid, tmp_path, monkeypatch) -> None:
    from server.checkpoint import FolderCheckpoint

    out, _, _ = grid
    argv = [
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        *ARGS,
        "--settings",
        "fede",
        "--seeds",
        "0",
    ]
    save = FolderCheckpoint.save

    def save_then_stop(self, round_number, arrays, state):
        save(self, round_number, arrays, state)
        raise KeyboardInterrupt  # killed right after round 1's checkpoint

    monkeypatch.setattr(FolderCheckpoint, "save", save_then_stop)
    assert rb.main(argv) == 130
    folder = tmp_path / "out" / "Nations" / "TransE" / "fede" / "seed0"
    assert not folder.exists()  # nothing lands in --out before the run finished
    assert (tmp_path / "work" / "Nations" / "TransE" / "fede" / "seed0" / "checkpoint").is_dir()
    monkeypatch.setattr(FolderCheckpoint, "save", save)
    assert rb.main(argv) == 0
    final = json.loads((folder / "final_metrics.json").read_text(encoding="utf-8"))
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    assert final["resumed_after_round"] == 1 and final["rounds_trained"] == 2
    assert [row["round"] for row in read_jsonl(folder / "metrics.jsonl")] == [1, 2]
    assert len(run["attempts"]) == 2 and "seconds" not in run["attempts"][0]
    assert run["attempts"][1]["resumed_after_round"] == 1
    assert run["wall_seconds"] > run["attempts"][1]["seconds"]  # round 1 of the killed attempt counts
    # a resumed run trains the same rounds as one never stopped: the same test metrics as the grid's run
    uninterrupted = json.loads((out / "Nations/TransE/fede/seed0/final_metrics.json").read_text(encoding="utf-8"))
    assert final["test_protocols"] == uninterrupted["test_protocols"]


def test_a_work_folder_of_other_values_is_refused(rb, tmp_path, capsys) -> None:
    folder = tmp_path / "work" / "Nations" / "TransE" / "fede" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"sets": {"seed": 0}, "rounds_budget": 2}), encoding="utf-8")
    (folder / "final_metrics.json").write_text("{}", encoding="utf-8")  # finished under those values
    argv = [
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        *ARGS,
        "--settings",
        "fede",
        "--seeds",
        "0",
    ]
    assert rb.main(argv) == 1
    assert "holds a run with other values" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recorded", [{"status": "done"}, {"status": "done", "sets": {"seed": 0}}])
def test_a_finished_run_that_does_not_say_its_values_is_not_this_run(rb, tmp_path, capsys, recorded) -> None:
    folder = tmp_path / "out" / "Nations" / "TransE" / "fede" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(recorded), encoding="utf-8")
    argv = [
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        *ARGS,
        "--settings",
        "fede",
        "--seeds",
        "0",
    ]
    assert rb.main(argv) == 1
    assert "holds a run with other values" in capsys.readouterr().err
    assert json.loads((folder / "run.json").read_text(encoding="utf-8")) == recorded  # untouched


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "seed=3"], "conflicts with --seeds"),
        (["--preset", "no-such-{model}"], "unknown preset 'no-such-transe'"),
        (["--variant", "Recip/1"], "--variant must be lower-case letters and digits"),
    ],
)
def test_bad_options_stop_before_any_run(rb, tmp_path, capsys, extra, message) -> None:
    with pytest.raises(SystemExit) as stopped:
        rb.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *ARGS, *extra])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize(("out", "work"), [("out", "out/work"), ("runs/x", "runs"), ("same", "same")])
def test_overlapping_work_and_out_are_refused(rb, tmp_path, capsys, out, work) -> None:
    with pytest.raises(SystemExit) as stopped:
        rb.main(
            ["--out", str(tmp_path / out), "--work", str(tmp_path / work), *ARGS, "--settings", "fede", "--seeds", "0"]
        )
    assert stopped.value.code == 2 and "overlap" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_preset_pattern_names_each_models_preset(rb) -> None:
    assert rb.preset_name("fb15k237-{model}", "DistMult") == "fb15k237-distmult"
    assert rb.preset_name("small-graph", "ComplEx") == "small-graph"
    assert rb.preset_name(None, "TransE") is None
