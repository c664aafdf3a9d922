"""The run folder's files: atomic, readable back, nothing lost on reopening."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from client.kge.run_folder import JsonlFormatError, RunFolder, read_jsonl, write_jsonl


def test_metrics_rows_go_to_jsonl_and_csv_with_the_union_of_columns(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.append_metrics({"round": 1, "train": {"0": {"loss": 1.5}}})
    folder.append_metrics({"round": 2, "train": {"0": {"loss": 1.0}}, "valid_overall": {"mrr": 0.25}})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["train.0.loss"] == "1.5" and rows[0]["valid_overall.mrr"] == ""
    assert rows[1]["valid_overall.mrr"] == "0.25"
    assert not list((tmp_path / "run").glob(".*.tmp")), "no temporary file is left behind"

    reopened = RunFolder(tmp_path / "run")  # rows written before are kept
    reopened.append_metrics({"round": 3})
    assert [r["round"] for r in reopened.metrics_rows] == [1, 2, 3]


def test_entity_embeddings_and_labels(tmp_path):
    folder = RunFolder(tmp_path)
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    folder.write_entity_embeddings(table, ["a", "b", "c"])
    assert np.array_equal(np.load(tmp_path / "entity_embeddings.npy"), table)
    assert (tmp_path / "entities.tsv").read_text() == "0\ta\n1\tb\n2\tc\n"
    with pytest.raises(ValueError, match="3 rows but 2 labels"):
        folder.write_entity_embeddings(table, ["a", "b"])


def test_json_files_accept_numpy_values(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_final_metrics({"mrr": np.float32(0.5), "ids": np.arange(2)})
    assert json.loads((tmp_path / "final_metrics.json").read_text()) == {"mrr": 0.5, "ids": [0, 1]}


def test_an_atomic_write_syncs_the_data_before_and_the_folder_after_the_rename(tmp_path, monkeypatch) -> None:
    import os
    import stat

    from client.kge import run_folder

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "fsync", fsync)
    monkeypatch.setattr(run_folder.os, "replace", replace)
    run_folder.atomic_write_text(tmp_path / "manifest.json", "{}\n")
    assert events == ["fsync file", "replace", "fsync folder"]
    assert (tmp_path / "manifest.json").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"], "no temporary file is left"


def test_an_atomic_write_gets_the_permissions_of_a_plain_open(tmp_path) -> None:
    import os
    import stat

    from client.kge.run_folder import atomic_write_text, emit_json

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    emit_json({"a": 1}, tmp_path / "report.json")
    expected = stat.S_IMODE(os.stat(plain).st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == expected


# --- read_jsonl: the one reader of JSON-lines files ------------------------------------------


def test_read_jsonl_skips_blank_lines_and_gives_nothing_for_a_missing_file(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n\n   \n{"round": 2}\r\n\n')
    assert read_jsonl(path) == [{"round": 1}, {"round": 2}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []
    path.write_text("")
    assert read_jsonl(path) == []


@pytest.mark.parametrize("tail", [b'{"round": 3, "valid_ov', b'{"label": "caf\xc3', b'{"round": 3}'])
def test_read_jsonl_skips_a_torn_last_line_but_keeps_a_complete_one_without_newline(tmp_path, tail) -> None:
    # a writer killed mid-append leaves a last line without its newline, possibly inside a UTF-8 character
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"round": 1}\n{"round": 2, "note": "\xe2\x80\xa8"}\n' + tail)
    rows = read_jsonl(path)
    assert rows[:2] == [{"round": 1}, {"round": 2, "note": "\u2028"}]  # U+2028 does not split a line
    assert rows[2:] == ([{"round": 3}] if tail == b'{"round": 3}' else [])


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('{"round": 1}\n{not json\n{"round": 3}\n', 2, "malformed JSON line"),
        ('{"round": 1}\n{"round": 2}\nnot json\n', 3, "malformed JSON line"),  # complete, so not torn
        ('{"round": 1}\n[1, 2]\n', 2, "expected an object, got list"),
        ('{"round": 1}\n7', 2, "expected an object, got int"),
    ],
)
def test_read_jsonl_names_file_and_line_of_a_bad_complete_line(tmp_path, content, line, reason) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(content)
    with pytest.raises(JsonlFormatError, match=f"metrics.jsonl:{line}: .*{reason}") as caught:
        read_jsonl(path)
    assert caught.value.line == line and caught.value.path == path
    assert caught.value.rows == [{"round": 1}] + ([{"round": 2}] if line == 3 else [])
    # a reader that must report what it can skips the bad line and keeps the rows after it
    kept = [{"round": 1}] + ([{"round": 2}] if line == 3 else []) + ([{"round": 3}] if '"round": 3' in content else [])
    assert read_jsonl(path, skip_bad_lines=True) == kept


def test_read_jsonl_reads_back_what_the_run_folder_writes(tmp_path) -> None:
    rows = [{"round": 1, "valid_overall": {"mrr": 0.1 + 0.2}}, {"round": 2, "train": {"0": {"loss": 1e-300}}}]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    assert read_jsonl(tmp_path / "metrics.jsonl") == rows
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "metrics.jsonl", "w") as handle:  # an earlier run, killed mid-append
        handle.write('{"round": 1}\n{"round": 2, "tr')
    reopened = RunFolder(tmp_path / "run")
    reopened.append_metrics({"round": 2})
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [{"round": 1}, {"round": 2}]
