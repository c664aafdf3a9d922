"""Labelled-TSV sources: one folder with ``train.txt``/``valid.txt``/``test.txt``, or a folder of
per-client folders ``0/``, ``1/``, ... each holding those three files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from kg_datasets.errors import KGDataError, clip
from kg_datasets.textio import LabeledTripleFile, read_labeled_triples, read_lines, vocabulary_records
from kg_datasets.triples import SPLITS, LocatedTriples

#: Global vocabulary files written next to the client folders by FederatedKG.write.
ENTITY_VOCAB_FILE = "entity_to_id.tsv"
RELATION_VOCAB_FILE = "relation_to_id.tsv"


def read_split_files(folder: Path) -> dict[str, LabeledTripleFile]:
    """Read ``folder/{train,valid,test}.txt`` (each must hold at least one triple)."""
    folder = Path(folder)
    return {name: read_labeled_triples(folder / f"{name}.txt") for name in SPLITS}


def sorted_vocabularies(files: Iterable[LabeledTripleFile]) -> tuple[dict[str, int], dict[str, int]]:
    """Entity and relation vocabularies over all files, ids in sorted-label order (PyKEEN's convention)."""
    entities: set[str] = set()
    relations: set[str] = set()
    for f in files:
        entities.update(f.heads)
        entities.update(f.tails)
        relations.update(f.relations)
    return ({e: i for i, e in enumerate(sorted(entities))}, {r: i for i, r in enumerate(sorted(relations))})


def to_ids(f: LabeledTripleFile, entity_to_id: Mapping[str, int], relation_to_id: Mapping[str, int]) -> LocatedTriples:
    """Map one file's labels to ids.

    :raises KGDataError: naming file:line of the first label missing from the vocabularies.
    """
    n = len(f)
    try:
        ids = np.empty((n, 3), dtype=np.int64)
        ids[:, 0] = np.fromiter(map(entity_to_id.__getitem__, f.heads), dtype=np.int64, count=n)
        ids[:, 1] = np.fromiter(map(relation_to_id.__getitem__, f.relations), dtype=np.int64, count=n)
        ids[:, 2] = np.fromiter(map(entity_to_id.__getitem__, f.tails), dtype=np.int64, count=n)
    except KeyError:
        for row, (h, r, t) in enumerate(zip(f.heads, f.relations, f.tails)):
            for kind, label, vocab in (
                ("entity", h, entity_to_id),
                ("relation", r, relation_to_id),
                ("entity", t, entity_to_id),
            ):
                if label not in vocab:
                    raise KGDataError(
                        f"{f.path}:{int(f.lines[row])}: {kind} {clip(label)!r} is not in the vocabulary"
                    ) from None
        raise
    return LocatedTriples(ids, str(f.path), f.lines)


def read_vocabulary_file(path: Path) -> dict[str, int]:
    """Read ``label<TAB>id`` lines with dense ids 0..n-1 (as written by FederatedKG.write)."""
    mapping = {label: index for _, label, index in vocabulary_records(path, read_lines(path))}
    if set(mapping.values()) != set(range(len(mapping))):
        raise KGDataError(f"{path}: ids must be exactly 0..{len(mapping) - 1}")
    return mapping


def client_folders(root: Path) -> list[Path]:
    """The client folders ``root/0``, ``root/1``, ... (numbered from 0 without gaps).

    :raises KGDataError: when there is none, or the numbering has a gap.
    """
    # isascii(): str.isdigit() also accepts "²" (int() refuses it) and "١" (read as 1); found by
    # tests/test_loader_fuzz.py (a folder named "²" raised a bare ValueError).
    numbered = sorted(
        (int(p.name), p) for p in Path(root).iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
    )
    if not numbered:
        raise KGDataError(f"{root}: no client folders 0/, 1/, ...")
    for expected, (number, path) in enumerate(numbered):
        if number != expected:
            raise KGDataError(f"{root}: client folder {expected}/ is missing (found {path.name}/)")
    return [p for _, p in numbered]


def is_client_folder_root(path: Path) -> bool:
    return path.is_dir() and (path / "0").is_dir()


def is_labeled_folder(path: Path) -> bool:
    return path.is_dir() and (path / "train.txt").is_file()


def read_client_folder_root(root: Path) -> tuple[dict[str, int], dict[str, int], list[dict[str, LocatedTriples]]]:
    """Read every client folder of ``root``.

    Global ids come from ``root/entity_to_id.tsv`` and ``relation_to_id.tsv`` when present (so a
    written partition reads back with its ids), else from the sorted union of all labels.

    :return: ``(entity_to_id, relation_to_id, [ {"train"|"valid"|"test": LocatedTriples}, ... ])``.
    """
    root = Path(root)
    files = [read_split_files(folder) for folder in client_folders(root)]
    entity_file, relation_file = root / ENTITY_VOCAB_FILE, root / RELATION_VOCAB_FILE
    if entity_file.is_file() and relation_file.is_file():
        entity_to_id, relation_to_id = read_vocabulary_file(entity_file), read_vocabulary_file(relation_file)
    else:
        entity_to_id, relation_to_id = sorted_vocabularies(f for client in files for f in client.values())
    clients = [{name: to_ids(f, entity_to_id, relation_to_id) for name, f in client.items()} for client in files]
    return entity_to_id, relation_to_id, clients


def read_labeled_folder(folder: Path) -> tuple[dict[str, int], dict[str, int], dict[str, LocatedTriples]]:
    """Read one labelled folder; ids in sorted-label order over all three splits."""
    files = read_split_files(folder)
    entity_to_id, relation_to_id = sorted_vocabularies(files.values())
    return entity_to_id, relation_to_id, {name: to_ids(f, entity_to_id, relation_to_id) for name, f in files.items()}


def _checked_local_vocabulary(path: Path, kind: str, train_labels: set[str]) -> dict[str, int]:
    """A client's written local vocabulary, which must list exactly its train labels."""
    vocab = read_vocabulary_file(path)
    if set(vocab) != train_labels:
        extra = [clip(label) for label in sorted(set(vocab) - train_labels)[:3]]
        missing = [clip(label) for label in sorted(train_labels - set(vocab))[:3]]
        raise KGDataError(
            f"{path}: lists {len(vocab)} {kind} labels but train.txt holds {len(train_labels)} "
            f"(not in train: {extra}; missing: {missing})"
        )
    return vocab


def local_vocabularies(folder: Path, files: Mapping[str, LabeledTripleFile]) -> tuple[dict[str, int], dict[str, int]]:
    """Vocabularies for one client folder loaded alone.

    Local ids come from the folder's ``entity_to_id.tsv`` / ``relation_to_id.tsv`` when present
    (written by FederatedKG.write: the server's local order for this client), else from sorted
    train labels. Labels only valid/test hold get the ids after those (they are unseen in train
    and get reported or dropped later).
    """
    entity_to_id, relation_to_id = sorted_vocabularies([files["train"]])
    entity_file, relation_file = Path(folder) / ENTITY_VOCAB_FILE, Path(folder) / RELATION_VOCAB_FILE
    if entity_file.is_file() or relation_file.is_file():
        entity_to_id = _checked_local_vocabulary(entity_file, "entity", set(entity_to_id))
        relation_to_id = _checked_local_vocabulary(relation_file, "relation", set(relation_to_id))
    extra_e, extra_r = sorted_vocabularies([files["valid"], files["test"]])
    for label in extra_e:
        entity_to_id.setdefault(label, len(entity_to_id))
    for label in extra_r:
        relation_to_id.setdefault(label, len(relation_to_id))
    return entity_to_id, relation_to_id


def split_files_to_ids(
    files: Mapping[str, LabeledTripleFile], entity_to_id: Mapping[str, int], relation_to_id: Mapping[str, int]
) -> dict[str, LocatedTriples]:
    return {name: to_ids(f, entity_to_id, relation_to_id) for name, f in files.items()}
