"""simskip-refine: file formats, labels, JSON summary, errors naming file and line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from simskip_core import EmbeddingFileError
from simskip_core.cli import main
from simskip_core.embedding_files import read_embeddings, write_embeddings

FAST = ["--set", "epochs=2", "--set", "batch_size=16", "--set", "device=cpu", "--set", "progress=false"]


@pytest.fixture()
def X() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:  # an option refused before any work (parse_and_validate)
        status = stop.code
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".tsv", ".txt"])
def test_refines_each_format(tmp_path, capsys, X, suffix) -> None:
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    write_embeddings(source, X)
    status, summary, _ = run_cli(capsys, source, target, *FAST)
    assert status == 0
    assert len(summary["loss_per_epoch"]) == 2 and all(np.isfinite(summary["loss_per_epoch"]))
    assert summary["seconds"]["fit"] > 0 and len(summary["seconds"]["per_epoch"]) == 2
    assert (summary["rows"], summary["columns"]) == (40, 6)
    refined = read_embeddings(target).values
    assert refined.shape == X.shape and not np.allclose(refined, X)


def test_zero_epochs_writes_the_input_back(tmp_path, capsys, X) -> None:
    write_embeddings(tmp_path / "in.npy", X)
    status, summary, _ = run_cli(capsys, tmp_path / "in.npy", tmp_path / "out.pt", *FAST, "--set", "epochs=0")
    assert status == 0 and summary["loss_per_epoch"] == []
    np.testing.assert_allclose(torch.load(tmp_path / "out.pt").numpy(), X, atol=1e-6)


def test_label_column_is_kept(tmp_path, capsys, X) -> None:
    labels = [f"/m/0{i}" for i in range(40)]
    write_embeddings(tmp_path / "in.tsv", X, labels)
    status, _, _ = run_cli(capsys, tmp_path / "in.tsv", tmp_path / "out.tsv", *FAST)
    assert status == 0
    table = read_embeddings(tmp_path / "out.tsv")
    assert table.labels == labels and table.values.shape == (40, 6)
    status, summary, _ = run_cli(capsys, tmp_path / "in.tsv", tmp_path / "out.npy", *FAST)
    assert status == 0
    assert (tmp_path / "out.npy.labels.txt").read_text().split() == labels
    assert summary["labels_file"].endswith("out.npy.labels.txt")


def test_config_file_summary_file_and_weights(tmp_path, capsys, X) -> None:
    write_embeddings(tmp_path / "in.npy", X)
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 1, "batch_size": 8, "device": "cpu", "seed": 4}))
    status, summary, _ = run_cli(
        capsys,
        tmp_path / "in.npy",
        tmp_path / "a.npy",
        "--config",
        tmp_path / "c.json",
        "--set",
        "epochs=3",
        "--summary",
        tmp_path / "s.json",
        "--save-weights",
        tmp_path / "w.npz",
    )
    assert status == 0 and len(summary["loss_per_epoch"]) == 3 and summary["config"]["seed"] == 4
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    # Zero more epochs from the saved weights reproduces the refined matrix.
    status, _, _ = run_cli(
        capsys,
        tmp_path / "in.npy",
        tmp_path / "b.npy",
        "--config",
        tmp_path / "c.json",
        "--set",
        "epochs=0",
        "--load-weights",
        tmp_path / "w.npz",
    )
    assert status == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a\t1\t2\nb\t3\n", r"in.tsv:2: row has 1 values, line 1 has 2"),
        ("1\t2\n3\tx\n", r"in.tsv:2: value 'x' is not a number"),
        ("1\t2\n\n3\tnan\n", r"in.tsv:3: row holds NaN or Inf"),
        ("\n\n", r"in.tsv: file holds no rows"),
    ],
)
def test_malformed_text_files_name_file_and_line(tmp_path, capsys, content, message) -> None:
    (tmp_path / "in.tsv").write_text(content)
    with pytest.raises(EmbeddingFileError, match=message):
        read_embeddings(tmp_path / "in.tsv")
    status, summary, err = run_cli(capsys, tmp_path / "in.tsv", tmp_path / "out.npy", *FAST)
    assert status == 2 and summary is None and "error" in err
    assert not (tmp_path / "out.npy").exists()


def test_bad_inputs_give_exit_status_2(tmp_path, capsys, X) -> None:
    np.save(tmp_path / "vec.npy", np.arange(5.0))
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    np.save(tmp_path / "ok.npy", X)
    cases = [
        ([tmp_path / "vec.npy", tmp_path / "o.npy"], "2-D matrix"),
        ([tmp_path / "dict.pt", tmp_path / "o.npy"], "expected one tensor, found a dict"),
        ([tmp_path / "missing.npy", tmp_path / "o.npy"], "missing.npy: no such file"),
        ([tmp_path / "ok.csv", tmp_path / "o.npy"], "unknown file type '.csv'"),
        ([tmp_path / "ok.npy", tmp_path / "o.npy", "--set", "temprature=1"], "unknown config key 'temprature'"),
    ]
    for argv, message in cases:
        status, _summary, err = run_cli(capsys, *argv, *FAST)
        assert status == 2 and message in err, (argv, err)


def test_console_entry_point_runs_as_a_module(tmp_path, X) -> None:
    np.save(tmp_path / "in.npy", X)
    result = subprocess.run(
        [sys.executable, "-m", "simskip_core.cli", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), *FAST],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["loss_per_epoch"]) == 2


def test_reports_the_mean_relative_displacement_of_the_output(tmp_path, capsys, X) -> None:
    write_embeddings(tmp_path / "in.npy", X)
    status, summary, err = run_cli(capsys, tmp_path / "in.npy", tmp_path / "out.npy", *FAST)
    assert status == 0
    refined = np.load(tmp_path / "out.npy")
    expected = float(
        np.mean(np.linalg.norm(refined.astype(np.float64) - X, axis=1) / np.linalg.norm(X.astype(np.float64), axis=1))
    )
    assert summary["mean_relative_displacement"] == pytest.approx(expected, rel=1e-9)
    assert summary["scale"] == pytest.approx(float(np.sqrt(np.mean(X.astype(np.float64) ** 2))))
    lines = [line for line in err.splitlines() if "mean relative displacement" in line]
    assert len(lines) == 1 and f"{expected:.6g}" in lines[0] and "out.npy" in lines[0]
