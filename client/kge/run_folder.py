"""The run folder: resolved config, per-round metrics, final metrics and embeddings.

Every file is written atomically (temporary file in the same folder, then ``os.replace``),
so a crash mid-write never leaves a half-written file and nothing written before is lost.
:func:`read_jsonl` is the project's one reader of JSON-lines files (``metrics.jsonl``,
``simskip_metrics.jsonl``), for the run itself, the report, the resume and the scripts.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "JsonlFormatError",
    "RunFolder",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_script_outputs",
    "emit_json",
    "read_jsonl",
    "round_completed",
    "save_npy_atomic",
    "undone_on_failure",
    "write_jsonl",
]

CONFIG_FILE = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
FINAL_METRICS = "final_metrics.json"
ENTITY_EMBEDDINGS = "entity_embeddings.npy"
ENTITY_LABELS = "entities.tsv"
#: Entries whose presence shows that a folder already holds a run (a fresh run refuses such a
#: folder: it would mix with, or overwrite, the earlier run; ``--resume`` continues one).
#: (A failed start leaves only ``logs/`` and ``.flwr/``: the same command may then run again.)
RUN_RECORDS: tuple[str, ...] = (CONFIG_FILE, METRICS_JSONL, FINAL_METRICS, "data", "checkpoint")


#: Entries of a run folder that show that a round completed (the run can be resumed or reported):
#: a failed start that wrote one of them keeps everything it wrote.
ROUND_RECORDS = ("checkpoint", "refine_checkpoint", FINAL_METRICS)


def round_completed(run_dir: Path) -> bool:
    """Whether ``run_dir`` records a completed round (a ``metrics.jsonl`` row, a checkpoint, final metrics)."""
    metrics = run_dir / METRICS_JSONL
    if metrics.is_file() and metrics.stat().st_size > 0:
        return True
    return any((run_dir / name).exists() for name in ROUND_RECORDS)


@contextmanager
def undone_on_failure(run_dir: Path) -> Iterator[None]:
    """Around a fresh start: when the block raises (any exception, Ctrl-C or SIGTERM included) and no
    round completed (:func:`round_completed`), remove the top-level entries of ``run_dir`` that did
    not exist when the block began; keep ``logs/`` when the error's message names a path in it (the
    user is pointed there); then remove ``run_dir`` and the parents the block created, if empty.

    Entries that existed before the block (the folder may hold the user's files, or the logs of an
    earlier failed start) are never touched, nor anything once a round completed (the run can then
    be resumed with ``--resume``).

    :param run_dir: the resolved run folder, checked by :func:`server.run_options.check_new_run_dir`.
    """
    created_folders = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    try:
        yield
    except BaseException as failure:
        if run_dir.is_dir() and not round_completed(run_dir):
            keep_logs = str(run_dir / "logs") in str(failure)
            for entry in sorted(run_dir.iterdir()):
                if entry.name in before or (keep_logs and entry.name == "logs"):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            for folder in created_folders:
                try:
                    folder.rmdir()
                except OSError:  # not empty (the logs, or what was there), or gone
                    break
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (its directory entry), where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of a written file: what ``open(path, "w")`` gives (mkstemp's 0600 would make
#: results unreadable to the rest of a group). Read once, at import.
FILE_MODE = 0o666 & ~_process_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; the data and then
    the rename are fsynced, so after a power loss ``path`` holds the old or the new bytes. The
    file gets the permissions a plain ``open`` would give (:data:`FILE_MODE`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def emit_json(report: Any, out: Path | None) -> None:
    """A script's JSON result: written atomically to ``out``, or printed when ``out`` is ``None``."""
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` to ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def write_labels_tsv(path: Path, labels: Sequence[str], ids: Sequence[int] | None = None) -> None:
    """Write ``id<TAB>label`` lines (``ids`` default to ``0..n-1``) atomically."""
    ids = range(len(labels)) if ids is None else ids
    atomic_write_text(path, "".join(f"{int(i)}\t{label}\n" for i, label in zip(ids, labels, strict=True)))


def check_script_outputs(
    parser: argparse.ArgumentParser,
    *,
    inputs: Sequence[str | os.PathLike[str] | None],
    files: Mapping[str, str | os.PathLike[str] | None] | None = None,
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """A script's outputs, checked before any work by the project's one rule
    (:mod:`simskip_core.outputs`): none is, contains or lies inside an input; an output file's
    folder exists and the file is no folder. A violation ends the script through
    ``parser.error`` (one line, exit 2).

    :param parser: the script's parser.
    :param inputs: what the script reads (dataset folders or names, run folders, config files).
    :param files: flag -> output file (``None``: not asked for).
    :param folders: flag -> output folder (``None``: not asked for; it may exist and hold earlier output).
    """
    from simskip_core.outputs import UnsafeOutputError, check_file_outputs, check_no_overlap

    try:
        check_file_outputs(dict(files or {}), inputs)
        for flag, folder in (folders or {}).items():
            if folder is not None:
                check_no_overlap(folder, inputs, what=flag)
    except UnsafeOutputError as exc:
        parser.error(str(exc))


class JsonlFormatError(ValueError):
    """A complete line of a JSON-lines file is not a JSON object.

    :param path: the file.
    :param line: the line's number (1-based).
    :param reason: what is wrong with it.
    :param rows: the rows of the lines before it (what a caller that must not fail can still use).
    """

    def __init__(self, path: Path, line: int, reason: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"{path}:{line}: malformed JSON line: {reason}")
        self.path = path
        self.line = line
        self.rows = rows


def read_jsonl(path: str | os.PathLike[str], *, skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, one JSON object a line; ``[]`` when the file is missing.

    Blank lines are skipped. A last line without its newline that does not parse is skipped too:
    it is the torn tail of a row whose writer was killed mid-append (the run folder's own files are
    written atomically, but a file may come from elsewhere or be read while a writer appends).
    Every other line must be a JSON object: a bad one in the middle is corruption, not a torn
    write, and skipping it would silently drop a round.

    :param path: the file.
    :param skip_bad_lines: skip a bad complete line instead of raising (a reader that must report
        what it can, such as the interrupted-run summary written from a signal handler).
    :returns: the rows, in file order.
    :raises JsonlFormatError: naming the file and line of a complete line that is not valid UTF-8
        or not a JSON object (unless ``skip_bad_lines``).
    :raises OSError: when the file exists but cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    # split on "\n" only (not str.splitlines): a JSON string may hold U+2028 and the like; and
    # decode line by line, so a tail torn inside a multi-byte character is still only the tail
    lines = data.split(b"\n")
    torn_tail = lines.pop()  # b"" when the file ends with a newline
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate([*lines, torn_tail], start=1):
        complete = number <= len(lines)
        try:
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            row = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if not complete:
                break
            if skip_bad_lines:
                continue
            raise JsonlFormatError(path, number, str(error), rows) from None
        if not isinstance(row, dict):
            if skip_bad_lines:
                continue
            raise JsonlFormatError(path, number, f"expected an object, got {type(row).__name__}", rows)
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as JSON lines (keys sorted) to ``path`` atomically; :func:`read_jsonl` reads them back."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a.b.c`` keys (for the CSV)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


class RunFolder:
    """Writes a run's outputs under one folder.

    :param path: the folder; created when missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        # keep rows of an earlier, interrupted write of this run
        self._rows: list[dict[str, Any]] = read_jsonl(self.path / METRICS_JSONL)

    def write_json(self, name: str, payload: Any) -> Path:
        """Write ``payload`` as indented JSON to ``name`` (relative to the folder)."""
        target = self.path / name
        atomic_write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
        return target

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved configuration to ``config.json``."""
        return self.write_json(CONFIG_FILE, dict(config))

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add one round's metrics and rewrite ``metrics.jsonl`` and ``metrics.csv``.

        :param row: nested mapping of JSON values; nested keys become ``a.b`` CSV columns.
        """
        self._rows.append(json.loads(json.dumps(dict(row), default=_json_default)))
        write_jsonl(self.path / METRICS_JSONL, self._rows)
        flat_rows = [_flatten(r) for r in self._rows]
        columns: list[str] = []
        for flat in flat_rows:
            columns.extend(key for key in flat if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat_rows)
        atomic_write_text(self.path / METRICS_CSV, buffer.getvalue())

    @property
    def metrics_rows(self) -> list[dict[str, Any]]:
        """The rows written so far (copies)."""
        return [dict(r) for r in self._rows]

    def write_entity_embeddings(self, table: np.ndarray, labels: Sequence[str], name: str = "") -> None:
        """Write ``entity_embeddings{name}.npy`` (row = global id) and ``entities.tsv``.

        :param table: float array of shape ``(num_entities, entity_dim)``.
        :param labels: ``num_entities`` labels; row ``i`` of the table is entity ``labels[i]``.
        :param name: optional suffix (e.g. ``"_client0"`` for the isolation setting).
        """
        if table.shape[0] != len(labels):
            raise ValueError(f"table has {table.shape[0]} rows but {len(labels)} labels were given")
        save_npy_atomic(self.path / f"entity_embeddings{name}.npy", table)
        write_labels_tsv(self.path / ENTITY_LABELS, labels)

    def write_final_metrics(self, payload: Mapping[str, Any]) -> Path:
        """Write ``final_metrics.json``."""
        return self.write_json(FINAL_METRICS, dict(payload))


def _json_default(value: Any) -> Any:
    """Make numpy scalars and arrays JSON-serializable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
