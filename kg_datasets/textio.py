"""Reading text data files with errors that name file and line.

Handles a UTF-8 byte-order mark and CRLF line endings; undecodable bytes, wrong column counts,
empty labels and empty files raise :class:`~kg_datasets.errors.KGDataError`. Labels are kept
verbatim: ``nan``, ``NULL`` or ``None`` stay labels (no pandas NA conversion).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kg_datasets.errors import KGDataError, clip

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_text(path: Path) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark.

    :raises KGDataError: when the file is missing, unreadable or not valid UTF-8 (naming the line).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KGDataError(f"{path}: file not found") from None
    except OSError as exc:
        raise KGDataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.startswith(_UTF16_BOMS):
        raise KGDataError(f"{path}:1: file is UTF-16 (byte-order mark found); save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise KGDataError(
            f"{path}:{line}: undecodable bytes {data[exc.start : exc.end]!r} at byte column {column} "
            f"(the file must be UTF-8)"
        ) from None
    return text


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file with their 1-based line numbers.

    A leading UTF-8 BOM is removed and a trailing ``\\r`` is stripped from each line.

    :param path: the file to read.
    :return: ``[(line_number, text), ...]`` without blank (whitespace-only) lines.
    :raises KGDataError: when the file is missing, unreadable or not valid UTF-8 (naming the line).
    """
    return _nonblank_lines(read_text(path))


def _nonblank_lines(text: str) -> list[tuple[int, str]]:
    # split("\n") rather than splitlines(): labels may contain \x1c, \x85 or \u2028, which
    # splitlines() would treat as line breaks.
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip():
            out.append((number, line))
    return out


@dataclass(frozen=True)
class LabeledTripleFile:
    """Labelled triples of one file, as three label columns.

    :param path: the file.
    :param heads: head labels in file order (n,).
    :param relations: relation labels (n,).
    :param tails: tail labels (n,).
    :param lines: int64 (n,) the 1-based line of each triple.
    """

    path: Path
    heads: list[str]
    relations: list[str]
    tails: list[str]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.heads)


def _split_regular(text: str) -> tuple[list[str], list[str], list[str]] | None:
    """Fast path for the usual file (every line ``h<TAB>r<TAB>t``, no blank line, no empty label):
    three label columns from C-level string operations, or ``None`` to take the checked path."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:  # a lone CR: let the line-by-line path decide
            return None
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        return None
    lines = text.split("\n")
    # A whitespace-only line (e.g. " \t \t" or "\x85\t\x85\t\x85") is a blank line, which the
    # checked path skips: leave it to that path rather than read it as a triple of blank labels
    # (found by tests/test_loader_fuzz.py: the two paths disagreed).
    if text.count("\t") != 2 * len(lines) or any(line.count("\t") != 2 or line.isspace() for line in lines):
        return None
    tokens = text.replace("\n", "\t").split("\t")
    if "" in tokens:
        return None
    return tokens[0::3], tokens[1::3], tokens[2::3]


def read_labeled_triples(path: Path) -> LabeledTripleFile:
    """Read ``head<TAB>relation<TAB>tail`` lines, validating as it parses.

    Blank lines are skipped; a trailing ``\\r`` (CRLF) and a UTF-8 BOM are removed.

    :param path: the file.
    :raises KGDataError: wrong column count, empty label, empty file, undecodable bytes (file:line).
    """
    path = Path(path)
    text = read_text(path)
    columns = _split_regular(text)
    if columns is not None:
        heads, relations, tails = columns
        return LabeledTripleFile(path, heads, relations, tails, np.arange(1, len(heads) + 1, dtype=np.int64))
    heads, relations, tails, numbers = [], [], [], []
    for number, line in _nonblank_lines(text):
        parts = line.split("\t")
        if len(parts) != 3:
            raise KGDataError(
                f"{path}:{number}: expected 3 tab-separated columns (head, relation, tail), "
                f"found {len(parts)}: {clip(line)!r}"
            )
        if not (parts[0] and parts[1] and parts[2]):
            column = ("head", "relation", "tail")[[bool(p) for p in parts].index(False)]
            raise KGDataError(f"{path}:{number}: empty {column} label: {clip(line)!r}")
        heads.append(parts[0])
        relations.append(parts[1])
        tails.append(parts[2])
        numbers.append(number)
    if not heads:
        raise KGDataError(f"{path}: empty file (no triples)")
    return LabeledTripleFile(path, heads, relations, tails, np.asarray(numbers, dtype=np.int64))


def vocabulary_records(
    path: Path, lines: Iterable[tuple[int, str]], *, split_on_spaces: bool = False
) -> Iterator[tuple[int, str, int]]:
    """``(line_number, label, id)`` of each ``label<TAB>id`` line of a vocabulary file.

    The range of the ids (dense 0..n-1, or a count header's) is the caller's to check.

    :param lines: ``(line_number, text)`` pairs, as from :func:`read_lines`.
    :param split_on_spaces: split a line that does not hold exactly one TAB on whitespace instead
        (some OpenKE dictionaries separate with spaces; labels there hold no whitespace).
    :raises KGDataError: wrong column count, non-integer id, repeated label or id (file:line).
    """
    labels: set[str] = set()
    line_of_id: dict[int, int] = {}
    for number, line in lines:
        parts = line.split("\t")
        if len(parts) != 2 and split_on_spaces:
            parts = line.split()
        if len(parts) != 2:
            raise KGDataError(f"{path}:{number}: expected 'label<TAB>id', found {len(parts)} columns: {clip(line)!r}")
        label, raw = parts
        try:
            index = int(raw)
        except ValueError:  # also a number of over 4,300 digits (Python's int() limit)
            raise KGDataError(f"{path}:{number}: id {clip(raw, 80)!r} is not an integer") from None
        if label in labels:
            raise KGDataError(f"{path}:{number}: label {clip(label)!r} listed twice")
        if index in line_of_id:
            raise KGDataError(f"{path}:{number}: id {index} already given on line {line_of_id[index]}")
        labels.add(label)
        line_of_id[index] = number
        yield number, label, index


def parse_count_header(path: Path, lines: list[tuple[int, str]]) -> int:
    """The integer count on the first line of an OpenKE file.

    :raises KGDataError: when the file is empty or the first line is not a non-negative integer.
    """
    if not lines:
        raise KGDataError(f"{path}: empty file (expected a count on the first line)")
    number, text = lines[0]
    try:
        count = int(text.strip())
    except ValueError:
        raise KGDataError(f"{path}:{number}: expected the number of records, found {clip(text, 80)!r}") from None
    if count < 0:
        raise KGDataError(f"{path}:{number}: negative count {count}")
    return count
