"""Reading and writing embedding matrices: ``.npy``, ``.pt`` (one tensor), ``.tsv`` / ``.txt``.

Text files hold one row per line, values separated by tabs (``.tsv``; ``.txt`` also accepts runs of
whitespace). When the first field of the first row is not a number, every row starts with a label,
which is kept and written back (a purely numeric label column, e.g. integer ids, cannot be told
from a value column and is read as values). Blank lines are skipped. Errors name the file and line.
Writes are atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import EmbeddingFileError

__all__ = [
    "SUFFIXES",
    "TEXT_SUFFIXES",
    "EmbeddingTable",
    "labels_side_file",
    "read_embeddings",
    "write_atomic",
    "write_embeddings",
]


@dataclass
class EmbeddingTable:
    """A matrix and, for text files with a label column, its row labels.

    :param values: shape ``(n, d)``.
    :param labels: ``n`` labels, or ``None``.
    """

    values: np.ndarray
    labels: list[str] | None = None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split(line: str, path: Path) -> list[str]:
    if path.suffix.lower() == ".tsv" or "\t" in line:
        return [field.strip() for field in line.rstrip("\r\n").split("\t")]
    return line.split()


def _read_text(path: Path) -> EmbeddingTable:
    rows: list[list[float]] = []
    labels: list[str] = []
    has_labels: bool | None = None
    width: int | None = None
    first_line = 0
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise EmbeddingFileError(f"cannot open: {exc.strerror}", str(path)) from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                fields = _split(line, path)
                if has_labels is None:
                    has_labels, first_line = not _is_number(fields[0]), number
                if has_labels:
                    labels.append(fields[0])
                    fields = fields[1:]
                if width is None:
                    width = len(fields)
                    if width == 0:
                        raise EmbeddingFileError("row has a label but no values", str(path), number)
                elif len(fields) != width:
                    raise EmbeddingFileError(
                        f"row has {len(fields)} values, line {first_line} has {width}", str(path), number
                    )
                try:
                    row = [float(field) for field in fields]
                except ValueError:
                    bad = next(f for f in fields if not _is_number(f))
                    raise EmbeddingFileError(f"value {bad!r} is not a number", str(path), number) from None
                if not all(np.isfinite(row)):
                    raise EmbeddingFileError("row holds NaN or Inf values", str(path), number)
                rows.append(row)
        except UnicodeDecodeError as exc:
            raise EmbeddingFileError(f"not UTF-8 text: {exc.reason}", str(path)) from exc
    if not rows:
        raise EmbeddingFileError("file holds no rows", str(path))
    return EmbeddingTable(np.asarray(rows, dtype=np.float32), labels if has_labels else None)


def _read_npy(path: Path) -> EmbeddingTable:
    try:
        return EmbeddingTable(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise EmbeddingFileError(f"cannot read as .npy: {exc}", str(path)) from exc


def _read_pt(path: Path) -> EmbeddingTable:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, runtime errors)
        raise EmbeddingFileError(f"cannot read as a torch file: {exc}", str(path)) from exc
    if not isinstance(obj, torch.Tensor):
        raise EmbeddingFileError(f"expected one tensor, found a {type(obj).__name__}", str(path))
    return EmbeddingTable(obj.detach().resolve_conj().numpy())


def _write_text(values: np.ndarray, labels: Sequence[str] | None, handle: BinaryIO) -> None:
    if np.iscomplexobj(values):
        values = np.ascontiguousarray(values).view(np.float32 if values.dtype == np.complex64 else np.float64)
    for i, row in enumerate(values):
        fields = ([labels[i]] if labels is not None else []) + [format(float(v), ".9g") for v in row]
        handle.write(("\t".join(fields) + "\n").encode("utf-8"))


_READERS: dict[str, Callable[[Path], EmbeddingTable]] = {
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".tsv": _read_text,
    ".txt": _read_text,
}
_WRITERS: dict[str, Callable[[np.ndarray, Sequence[str] | None, BinaryIO], None]] = {
    ".npy": lambda values, labels, handle: np.save(handle, values, allow_pickle=False),
    ".pt": lambda values, labels, handle: torch.save(torch.from_numpy(np.ascontiguousarray(values)), handle),
    ".tsv": _write_text,
    ".txt": _write_text,
}
SUFFIXES = tuple(_READERS)
#: Suffixes of text files (which may carry a label column).
TEXT_SUFFIXES = (".tsv", ".txt")


def read_embeddings(path: str | Path) -> EmbeddingTable:
    """Read a matrix from ``.npy``, ``.pt`` (a single tensor) or ``.tsv``/``.txt``.

    :raises EmbeddingFileError: unknown suffix, unreadable file, or malformed row (with its line).
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise EmbeddingFileError(f"unknown file type {path.suffix!r}; use one of {list(SUFFIXES)}", str(path))
    if not path.is_file():
        raise EmbeddingFileError("no such file", str(path))
    return reader(path)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def labels_side_file(output: str | Path, source: str | Path | None = None) -> Path | None:
    """Where a binary ``output`` keeps the row labels of a text ``source`` (``OUTPUT.labels.txt``),
    or ``None`` when there is none to keep (a text output holds its labels; a binary source has none).

    :param output: the written matrix.
    :param source: the file read (``None``: assume it may carry labels).
    """
    output = Path(output)
    if output.suffix.lower() in TEXT_SUFFIXES:
        return None
    if source is not None and Path(source).suffix.lower() not in TEXT_SUFFIXES:
        return None
    return output.with_name(output.name + ".labels.txt")


def write_embeddings(path: str | Path, values: np.ndarray, labels: Sequence[str] | None = None) -> None:
    """Write ``values`` (shape ``(n, d)``) by the suffix of ``path``, atomically.

    Text files get the labels as a leading column (complex values as real/imaginary pairs).
    Binary files cannot hold labels; pass ``labels=None`` (the CLI writes them to a side file).

    :raises EmbeddingFileError: unknown suffix, labels for a binary file, or an I/O failure.
    """
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise EmbeddingFileError(f"unknown file type {path.suffix!r}; use one of {list(SUFFIXES)}", str(path))
    if labels is not None and path.suffix.lower() not in {".tsv", ".txt"}:
        raise EmbeddingFileError("labels can only be written to .tsv/.txt files", str(path))
    if labels is not None and len(labels) != len(values):
        raise EmbeddingFileError(f"{len(labels)} labels for {len(values)} rows", str(path))
    try:
        write_atomic(path, lambda handle: writer(values, labels, handle))
    except OSError as exc:
        raise EmbeddingFileError(f"cannot write: {exc.strerror or exc}", str(path)) from exc
