"""Id-based triple arrays that remember where each row came from (file and line), for error messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


@dataclass(frozen=True)
class LocatedTriples:
    """Triples as ids, each row tied to its origin so that errors can name file and line.

    :param ids: int64 array of shape (n, 3), columns (head, relation, tail) in some id space
        (global ids of a vocabulary, unless said otherwise).
    :param origin: the file the rows were read from, or a description such as
        ``"partition of FB15k-237, client 0, train"``.
    :param lines: int64 array of shape (n,), the 1-based line of each row in ``origin``; ``None``
        when rows have no line (then errors cite the 1-based row number).
    """

    ids: np.ndarray
    origin: str
    lines: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).reshape(-1, 3)
        object.__setattr__(self, "ids", ids)
        if self.lines is not None:
            lines = np.asarray(self.lines, dtype=np.int64)
            if lines.shape != (ids.shape[0],):
                raise ValueError(f"lines has shape {lines.shape}, expected ({ids.shape[0]},)")
            object.__setattr__(self, "lines", lines)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def where(self, row: int) -> str:
        """``"file:line N"`` (or ``"origin, row N"``) for the row with 0-based index ``row``."""
        if self.lines is not None:
            return f"{self.origin}:{int(self.lines[row])}"
        return f"{self.origin}, row {row + 1}"

    def select(self, mask_or_index: np.ndarray) -> LocatedTriples:
        """The rows picked by a boolean mask or an index array, keeping their origins."""
        lines = None if self.lines is None else self.lines[mask_or_index]
        return LocatedTriples(self.ids[mask_or_index], self.origin, lines)


def encode_triples(ids: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 key per triple (for set operations), ``(h * R + r) * E + t``.

    :param ids: int64 (n, 3) triples (head, relation, tail).
    :return: int64 (n,) keys; equal keys iff equal triples.
    """
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[:, 0] * num_relations + ids[:, 1]) * num_entities + ids[:, 2]


def labels_in_id_order(label_to_id: Mapping[str, int]) -> list[str]:
    """The labels of a dense mapping ``label -> id`` (ids 0..n-1) listed by id."""
    labels = [""] * len(label_to_id)
    for label, index in label_to_id.items():
        labels[index] = label
    return labels
