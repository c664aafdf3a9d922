"""No command destroys what it was given or what it did not write (issue 31, item 1).

One test per destructive case: ``simskip-data partition`` onto, around or inside its source, onto
the current folder, ``--overwrite`` on a folder simskip did not write; ``simskip-refine`` onto its
input or to a bad output, refused before any training; ``simskip-sim`` / ``simskip-server`` run
folders (no input, no earlier run, no empty folder left by a failed start); the scripts' outputs.
Every source is compared byte for byte (a hash of every file) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kg_datasets import load_federated, load_source
from kg_datasets.cli import main as data_main
from kg_datasets.errors import ForeignOutputError, KGDataError, OutputOverlapError, UnsafeOutputError
from kg_datasets.triples import labels_in_id_order
from simskip_core import outputs

NATIONS_CLIENTS = ["--clients", "2"]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest); folders by their files."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temporary or ``.old-*`` folders a write left beside its output."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def write_labelled_nations(folder: Path) -> Path:
    """Nations as a labelled folder (train/valid/test.txt), a source simskip did not write."""
    graph = load_source("Nations")
    entities, relations = labels_in_id_order(graph.entity_to_id), labels_in_id_order(graph.relation_to_id)
    folder.mkdir(parents=True)
    for name in ("train", "valid", "test"):
        rows = getattr(graph, name).ids.tolist()
        text = "".join(f"{entities[h]}\t{relations[r]}\t{entities[t]}\n" for h, r, t in rows)
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def exit_code(call: Callable[[], int]) -> int:
    """The status of a command's ``main``, whether it returns it or raises ``SystemExit``."""
    try:
        return call()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_labelled_nations(tmp_path / "work" / "src")


def test_partition_onto_its_source_is_refused_and_the_source_kept(source, capsys):
    before = tree_digest(source)
    assert data_main(["partition", str(source), str(source), *NATIONS_CLIENTS, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is the input" in err and str(source) in err
    assert tree_digest(source) == before
    assert leftovers(source.parent) == []


def test_partition_into_a_folder_containing_its_source_is_refused(source, capsys):
    before = tree_digest(source.parent)
    assert data_main(["partition", str(source), str(source.parent), *NATIONS_CLIENTS, "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert tree_digest(source.parent) == before
    assert leftovers(source.parent.parent) == []


def test_partition_into_a_folder_inside_its_source_is_refused(source, capsys):
    before = tree_digest(source)
    assert data_main(["partition", str(source), str(source / "fed"), *NATIONS_CLIENTS]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert tree_digest(source) == before and not (source / "fed").exists()


def test_a_symlink_to_the_source_is_the_source(source, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(source, target_is_directory=True)
    before = tree_digest(source)
    assert data_main(["partition", str(source), str(link), *NATIONS_CLIENTS, "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert tree_digest(source) == before


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_partition_into_the_current_folder_or_an_ancestor_is_a_clean_refusal(out, tmp_path, monkeypatch, capsys):
    here = tmp_path / "a" / "here"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(here)
    before = tree_digest(tmp_path)
    assert data_main(["partition", "Nations", out, *NATIONS_CLIENTS, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "current folder" in err and "Traceback" not in err
    assert tree_digest(tmp_path) == before
    assert leftovers(tmp_path / "a") == [] and leftovers(tmp_path) == []


def test_overwrite_of_a_folder_simskip_did_not_write_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    (out / "0").mkdir()
    (out / "0" / "train.txt").write_text("a\tr\tb\n")
    before = tree_digest(out)
    assert data_main(["partition", "Nations", str(out), *NATIONS_CLIENTS, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "not written by simskip" in err and outputs.MARKER_FILE in err
    assert tree_digest(out) == before
    with pytest.raises(ForeignOutputError):
        load_federated("Nations", num_clients=2).write(out, overwrite=True)
    assert tree_digest(out) == before and leftovers(tmp_path) == []


def test_overwrite_replaces_a_folder_simskip_wrote_and_lists_what_it_removes(tmp_path, capsys):
    out = tmp_path / "fed"
    assert data_main(["partition", "Nations", str(out), *NATIONS_CLIENTS, "--seed", "1"]) == 0
    marker = json.loads((out / outputs.MARKER_FILE).read_text())
    assert marker["command"] == "simskip-data partition" and "0/train.txt" in marker["files"]
    old = tree_digest(out)
    capsys.readouterr()
    assert data_main(["partition", "Nations", str(out), *NATIONS_CLIENTS, "--seed", "2", "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"removing {len(marker['files']) + 1} files of {out.resolve()}" in err
    assert "  0/train.txt" in err and f"  {outputs.MARKER_FILE}" in err
    assert tree_digest(out)["0/train.txt"] != old["0/train.txt"]
    assert leftovers(tmp_path) == []


def test_overwrite_refuses_a_simskip_folder_that_holds_a_file_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "fed"
    assert data_main(["partition", "Nations", str(out), *NATIONS_CLIENTS]) == 0
    (out / "0" / "my_notes.md").write_text("added by hand\n")
    before = tree_digest(out)
    assert data_main(["partition", "Nations", str(out), *NATIONS_CLIENTS, "--overwrite"]) == 2
    assert "0/my_notes.md" in capsys.readouterr().err
    assert tree_digest(out) == before


def test_a_failed_write_keeps_the_old_folder_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import kg_datasets.writer as writer

    out = tmp_path / "fed"
    kg = load_federated("Nations", num_clients=2)
    kg.write(out)
    before = tree_digest(out)

    def broken(client, folder):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(writer, "write_client_folder", broken)
    with pytest.raises(OSError, match="disk full"):
        kg.write(out, overwrite=True)
    assert tree_digest(out) == before
    assert leftovers(tmp_path) == []
    with pytest.raises(OSError, match="disk full"):  # into a new folder under new parents
        kg.write(tmp_path / "new" / "deeper" / "fed")
    assert not (tmp_path / "new").exists()


def test_output_errors_are_input_errors_of_both_packages():
    assert issubclass(OutputOverlapError, KGDataError) and issubclass(OutputOverlapError, outputs.OutputOverlapError)
    assert issubclass(UnsafeOutputError, ValueError)
    assert issubclass(outputs.UnsafeOutputError, outputs.SimSkipError)


def test_a_sibling_with_a_longer_name_is_no_overlap(tmp_path):
    (tmp_path / "src").mkdir()
    outputs.check_no_overlap(tmp_path / "src2", [tmp_path / "src"])  # a string prefix, not a parent
    outputs.check_no_overlap(tmp_path / "sr", [tmp_path / "src"])
    with pytest.raises(outputs.OutputOverlapError, match="contains the input"):
        outputs.check_no_overlap(tmp_path / "src" / "..", [tmp_path / "src"])


def test_a_dataset_name_is_no_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs.check_no_overlap(tmp_path / "out", ["UMLS", None])  # no folder named UMLS here: nothing to protect
    (tmp_path / "UMLS").mkdir()
    with pytest.raises(outputs.OutputOverlapError):
        outputs.check_no_overlap(tmp_path / "UMLS" / "out", ["UMLS"])


# --- simskip-refine -------------------------------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Any training is a test failure: the refusals must come before it."""
    import simskip_core.cli as refine_cli

    class Untrainable:
        def __init__(self, *args, **kwargs):
            raise AssertionError("training started")

    monkeypatch.setattr(refine_cli, "SimSkipTrainer", Untrainable)


def _matrix(path: Path) -> Path:
    np.save(path, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    return path


def test_refine_onto_its_input_is_refused_before_training(tmp_path, no_training, capsys):
    from simskip_core.cli import main as refine_main

    x = _matrix(tmp_path / "X.npy")
    before = x.read_bytes()
    assert exit_code(lambda: refine_main([str(x), str(x)])) == 2
    assert "is the input" in capsys.readouterr().err
    hard = tmp_path / "same.npy"
    os.link(x, hard)  # another name of the same file
    assert exit_code(lambda: refine_main([str(hard), str(x)])) == 2
    assert exit_code(lambda: refine_main([str(x), str(tmp_path / "out.npy"), "--summary", str(x)])) == 2
    assert x.read_bytes() == before and not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    ("output", "message"),
    [("missing/out.npy", "does not exist"), ("out.csv", "unknown file type"), ("folder", "")],
)
def test_refine_to_a_bad_output_is_refused_before_training(tmp_path, no_training, capsys, output, message):
    from simskip_core.cli import main as refine_main

    x = _matrix(tmp_path / "X.npy")
    (tmp_path / "folder").mkdir()
    assert exit_code(lambda: refine_main([str(x), str(tmp_path / output)])) == 2
    assert message in capsys.readouterr().err


def test_refine_labels_file_may_not_overwrite_the_input(tmp_path, no_training, capsys):
    from simskip_core.cli import main as refine_main

    source = tmp_path / "E.npy.labels.txt"  # the labels side file of output E.npy
    source.write_text("a\t1\t2\nb\t3\t4\n")
    before = source.read_bytes()
    assert exit_code(lambda: refine_main([str(source), str(tmp_path / "E.npy")])) == 2
    assert "labels file" in capsys.readouterr().err and source.read_bytes() == before


REFINE_FAST = ["--set", "epochs=1", "--set", "batch_size=4", "--set", "device=cpu", "--set", "progress=false"]


@pytest.mark.parametrize("flag", ["OUTPUT", "--summary", "--save-weights", "the labels file"])
def test_refine_refuses_an_existing_output_without_overwrite(tmp_path, no_training, capsys, flag):
    from simskip_core.cli import main as refine_main

    source = tmp_path / "X.tsv"  # a labelled text input: a binary OUTPUT gets a labels side file
    source.write_text("a\t1\t2\nb\t3\t4\n")
    paths = {
        "OUTPUT": tmp_path / "out.npy",
        "--summary": tmp_path / "summary.json",
        "--save-weights": tmp_path / "w.npz",
        "the labels file": tmp_path / "out.npy.labels.txt",
    }
    existing = paths[flag]
    existing.write_bytes(b"an earlier result\n")
    argv = [str(source), str(paths["OUTPUT"]), "--summary", str(paths["--summary"])]
    argv += ["--save-weights", str(paths["--save-weights"])]
    assert exit_code(lambda: refine_main(argv)) == 2
    err = capsys.readouterr().err
    assert f"{flag} {existing} exists; pass --overwrite to replace it" in err and len(err.strip().splitlines()) == 1
    assert existing.read_bytes() == b"an earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["X.tsv", existing.name])


def test_refine_overwrite_replaces_existing_outputs_atomically(tmp_path, capsys):
    from simskip_core.cli import main as refine_main

    x = _matrix(tmp_path / "X.npy")
    out, summary = tmp_path / "out.npy", tmp_path / "summary.json"
    out.write_bytes(b"an earlier result\n")
    summary.write_text("{}\n")
    argv = [str(x), str(out), "--summary", str(summary), *REFINE_FAST]
    assert exit_code(lambda: refine_main(argv)) == 2 and out.read_bytes() == b"an earlier result\n"
    before = x.read_bytes()
    assert exit_code(lambda: refine_main([*argv, "--overwrite"])) == 0
    assert np.load(out).shape == (12, 4) and json.loads(summary.read_text())["output"] == str(out)
    assert x.read_bytes() == before and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "out.npy", "summary.json"]
    capsys.readouterr()
    # --overwrite never allows writing over an input
    assert exit_code(lambda: refine_main([str(x), str(x), "--overwrite"])) == 2
    assert "is the input" in capsys.readouterr().err and x.read_bytes() == before


# --- run folders ----------------------------------------------------------------------------------


def test_sim_refuses_a_run_folder_that_is_or_holds_its_dataset_or_an_earlier_run(source, tmp_path):
    from server.simulation import run_simulation

    before = tree_digest(source.parent)
    for run_dir in (source, source / "run", source.parent):
        with pytest.raises(outputs.OutputOverlapError):
            run_simulation(str(source), num_clients=2, run_dir=run_dir, rounds=1)
    assert tree_digest(source.parent) == before
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}\n")
    with pytest.raises(outputs.UnsafeOutputError, match="earlier run.*--resume"):
        run_simulation("Nations", num_clients=2, run_dir=earlier, rounds=1)
    assert [p.name for p in earlier.iterdir()] == ["config.json"]


def test_sim_with_a_failing_start_leaves_no_run_folder(tmp_path, monkeypatch):
    from kg_datasets.errors import DatasetUnavailableError
    from server.simulation import run_simulation

    monkeypatch.setenv("PYKEEN_HOME", str(tmp_path / "pykeen"))  # nothing cached, nothing fetched
    run_dir = tmp_path / "runs" / "r1"
    with pytest.raises(KGDataError):
        run_simulation(str(tmp_path / "no-such-folder"), num_clients=2, run_dir=run_dir, rounds=1)
    assert not (tmp_path / "runs").exists()
    with pytest.raises((DatasetUnavailableError, KGDataError)):
        run_simulation("Nations", num_clients=99, run_dir=run_dir, rounds=1)  # more clients than relations
    assert not (tmp_path / "runs").exists()


def _failing_flower(calls: list[Path], *, log_in_message: bool, rounds_done: int = 0):
    """A stand-in for ``server.simulation._run_flower`` that writes what a start writes (Flower's
    home, a log, the ServerApp's config.json, ``rounds_done`` metrics rows) and then fails."""
    from client.pids import FlowerProcessError

    def run_flower(run_dir: Path, run_config: dict, **_: object) -> Path:
        assert (run_dir / "data" / "0").is_dir()  # the clients' data was written first
        calls.append(run_dir)
        (run_dir / ".flwr").mkdir()
        log = run_dir / "logs" / "superlink.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("a") as handle:
            handle.write("address already in use\n")
        (run_dir / "config.json").write_text(json.dumps({"run_config": run_config}) + "\n")
        if rounds_done:
            (run_dir / "metrics.jsonl").write_text('{"round": 1}\n' * rounds_done)
            (run_dir / "checkpoint").mkdir()
        raise FlowerProcessError("superlink exited with code 1" + (f" (log: {log})" if log_in_message else ""))

    return run_flower


@pytest.mark.parametrize("log_in_message", [True, False])
def test_sim_with_a_failing_flower_start_can_start_again_in_the_same_run_folder(
    source, tmp_path, monkeypatch, log_in_message
):
    import server.simulation as simulation
    from client.pids import FlowerProcessError

    calls: list[Path] = []
    monkeypatch.setattr(simulation, "_run_flower", _failing_flower(calls, log_in_message=log_in_message))
    run_dir = tmp_path / "runs" / "r1"
    for attempt in (1, 2):  # the second start with the same --run-dir gets as far as the first
        with pytest.raises(FlowerProcessError):
            simulation.run_simulation(str(source), num_clients=2, run_dir=run_dir, rounds=1)
        assert len(calls) == attempt
        if log_in_message:  # the error points at the log: it stays, and nothing else
            assert sorted(p.name for p in run_dir.iterdir()) == ["logs"]
            assert (run_dir / "logs" / "superlink.log").read_text().count("address already in use") == attempt
        else:
            assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["runs", "work"] if log_in_message else ["work"])


def test_sim_failing_start_keeps_what_it_did_not_write_and_a_run_with_a_completed_round(source, tmp_path, monkeypatch):
    import server.simulation as simulation
    from client.pids import FlowerProcessError

    calls: list[Path] = []
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine\n")  # the user's file: no earlier run, never removed
    monkeypatch.setattr(simulation, "_run_flower", _failing_flower(calls, log_in_message=False))
    with pytest.raises(FlowerProcessError):
        simulation.run_simulation(str(source), num_clients=2, run_dir=run_dir, rounds=1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "mine\n"

    # a round completed (a metrics row, a checkpoint): everything stays, to be resumed
    monkeypatch.setattr(simulation, "_run_flower", _failing_flower(calls, log_in_message=False, rounds_done=1))
    with pytest.raises(FlowerProcessError):
        simulation.run_simulation(str(source), num_clients=2, run_dir=run_dir, rounds=1)
    kept = sorted(p.name for p in run_dir.iterdir())
    assert kept == [".flwr", "checkpoint", "config.json", "data", "logs", "metrics.jsonl", "notes.txt"]
    with pytest.raises(outputs.UnsafeOutputError, match="earlier run"):
        simulation.run_simulation(str(source), num_clients=2, run_dir=run_dir, rounds=1)
    assert len(calls) == 2


def test_server_refuses_a_run_folder_holding_an_earlier_run_before_anything_starts(tmp_path, monkeypatch):
    import server.cli as server_cli

    started = []
    monkeypatch.setattr(server_cli.launcher, "start_superlink", lambda *a, **k: started.append(a))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "final_metrics.json").write_text("{}\n")
    with pytest.raises(outputs.UnsafeOutputError, match="final_metrics.json"):
        server_cli.run_server(run_dir)
    assert started == [] and sorted(p.name for p in run_dir.iterdir()) == ["final_metrics.json"]


# --- scripts --------------------------------------------------------------------------------------


def test_a_script_may_not_write_its_report_into_its_input(tmp_path, capsys):
    from conftest import load_script

    tune = load_script("tune_kge")
    data = write_labelled_nations(tmp_path / "data")
    before = tree_digest(data)
    with pytest.raises(SystemExit) as stop:
        tune.main(["--dataset", str(data), "--out", str(data / "train.txt")])
    assert stop.value.code == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert tree_digest(data) == before
