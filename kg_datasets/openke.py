"""OpenKE id files: ``entity2id.txt`` / ``relation2id.txt`` (``label<TAB>id``) and
``train2id.txt`` / ``valid2id.txt`` / ``test2id.txt`` (``head tail relation`` ids, OpenKE's h t r
order), each starting with a count line. CRLF and a BOM are tolerated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kg_datasets.errors import KGDataError, clip
from kg_datasets.textio import parse_count_header, read_lines, vocabulary_records
from kg_datasets.triples import SPLITS, LocatedTriples

ENTITY_FILE = "entity2id.txt"
RELATION_FILE = "relation2id.txt"
TRIPLE_FILES = {name: f"{name}2id.txt" for name in SPLITS}


def is_openke_folder(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in (ENTITY_FILE, RELATION_FILE, TRIPLE_FILES["train"]))


def read_openke_dictionary(path: Path) -> dict[str, int]:
    """Read a ``label<TAB>id`` dictionary with a count header; ids must be exactly 0..n-1.

    :raises KGDataError: wrong column count, non-integer or repeated id or label, count mismatch (file:line).
    """
    path = Path(path)
    lines = read_lines(path)
    count = parse_count_header(path, lines)
    mapping: dict[str, int] = {}
    for number, label, index in vocabulary_records(path, lines[1:], split_on_spaces=True):
        if not 0 <= index < count:
            raise KGDataError(f"{path}:{number}: id {index} outside 0..{count - 1} (count header {count})")
        mapping[label] = index
    if len(mapping) != count:
        raise KGDataError(f"{path}: header says {count} records, found {len(mapping)}")
    return mapping


def read_openke_triples(path: Path, num_entities: int, num_relations: int) -> LocatedTriples:
    """Read an OpenKE ``*2id.txt`` triple file (``h t r`` per line) into (head, relation, tail) ids.

    :raises KGDataError: non-integer fields, wrong column count, ids out of range, count mismatch (file:line).
    """
    path = Path(path)
    lines = read_lines(path)
    count = parse_count_header(path, lines)
    body = lines[1:]
    try:
        # Fast path; on any problem, the slow scan below finds the offending line.
        hrt = np.array([text.split() for _, text in body], dtype=np.int64).reshape(len(body), 3)
    except (ValueError, OverflowError):  # numpy raises OverflowError for an id beyond int64
        rows = []
        for number, text in body:
            parts = text.split()
            if len(parts) != 3:
                raise KGDataError(
                    f"{path}:{number}: expected 3 ids 'head tail relation', found {len(parts)} fields"
                ) from None
            row = []
            for p in parts:
                try:
                    value = int(p)
                except ValueError:
                    raise KGDataError(f"{path}:{number}: {clip(p, 80)!r} is not an integer id") from None
                if not -(2**63) <= value < 2**63:
                    raise KGDataError(
                        f"{path}:{number}: id {clip(p, 80)} is too large (not a 64-bit integer)"
                    ) from None
                row.append(value)
            rows.append(row)
        # Every line checked: build the array from Python ints rather than re-raise numpy's error
        # (found by tests/test_loader_fuzz.py: an id beyond int64 raised a bare OverflowError).
        hrt = np.array(rows, dtype=np.int64).reshape(len(body), 3)
    numbers = np.asarray([n for n, _ in body], dtype=np.int64)
    for column, limit, kind in (
        (0, num_entities, "head entity"),
        (1, num_entities, "tail entity"),
        (2, num_relations, "relation"),
    ):
        bad = np.flatnonzero((hrt[:, column] < 0) | (hrt[:, column] >= limit))
        if bad.size:
            row = int(bad[0])
            raise KGDataError(
                f"{path}:{int(numbers[row])}: {kind} id {int(hrt[row, column])} outside 0..{limit - 1} "
                f"({bad.size} such line(s))"
            )
    if len(body) != count:
        raise KGDataError(f"{path}: header says {count} triples, found {len(body)}")
    if not body:
        raise KGDataError(f"{path}: empty file (no triples)")
    return LocatedTriples(hrt[:, [0, 2, 1]], str(path), numbers)


def read_openke_folder(folder: Path) -> tuple[dict[str, int], dict[str, int], dict[str, LocatedTriples]]:
    """Read an OpenKE folder; global ids are the files' ids.

    :return: ``(entity_to_id, relation_to_id, {"train"|"valid"|"test": LocatedTriples})``.
    """
    folder = Path(folder)
    entity_to_id = read_openke_dictionary(folder / ENTITY_FILE)
    relation_to_id = read_openke_dictionary(folder / RELATION_FILE)
    splits = {
        name: read_openke_triples(folder / fname, len(entity_to_id), len(relation_to_id))
        for name, fname in TRIPLE_FILES.items()
    }
    return entity_to_id, relation_to_id, splits
