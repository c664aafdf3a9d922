"""FedE's per-row aggregation of entity embeddings (pure numpy, no Flower).

Each client holds a subset of the global entities. After local training it returns the
rows of the entities it holds; the server sets each global row to the mean over the
clients that returned it (FedE, Chen et al., IJCKG 2021, Eq. 4 with unit weights per
holder). Rows nobody returned this round are left unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "AggregationError",
    "aggregate_rows",
    "build_vocabulary",
]


class AggregationError(ValueError):
    """An update does not fit the global table (shape, ids, dtype or non-finite values)."""


def _validate_update(
    index: int, global_ids: np.ndarray, rows: np.ndarray, num_rows: int, width: int
) -> None:
    """Raise :class:`AggregationError` naming update ``index`` when it does not fit."""
    if global_ids.ndim != 1:
        raise AggregationError(f"update {index}: global_ids must be 1-D, got shape {global_ids.shape}")
    if not np.issubdtype(global_ids.dtype, np.integer):
        raise AggregationError(f"update {index}: global_ids must be integers, got {global_ids.dtype}")
    if rows.shape != (global_ids.shape[0], width):
        raise AggregationError(
            f"update {index}: rows have shape {rows.shape}, expected ({global_ids.shape[0]}, {width})"
        )
    if global_ids.size:
        low, high = int(global_ids.min()), int(global_ids.max())
        if low < 0 or high >= num_rows:
            raise AggregationError(
                f"update {index}: global id out of range [0, {num_rows}): min {low}, max {high}"
            )
        if np.unique(global_ids).size != global_ids.size:
            raise AggregationError(f"update {index}: global_ids contain duplicates")
    if not np.all(np.isfinite(rows)):
        raise AggregationError(f"update {index}: rows contain NaN or infinite values")


def aggregate_rows(
    table: np.ndarray,
    updates: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Return a new table whose rows are the mean over the clients that updated them.

    Parameters
    ----------
    table:
        Current global table, shape ``(num_entities, width)``. Not modified.
    updates:
        One ``(global_ids, rows)`` pair per client: ``global_ids`` int array of shape
        ``(n_k,)`` without duplicates, ``rows`` array of shape ``(n_k, width)``; row ``i``
        of ``rows`` is the client's value for global entity ``global_ids[i]``.

    Returns
    -------
    np.ndarray
        New table of the same shape and dtype as ``table``: for each row held by at least
        one client the mean of the holders' values (accumulated in float64), every other
        row copied unchanged.

    Raises
    ------
    AggregationError
        When an update's ids are out of range, duplicated, not integers, its rows have the
        wrong shape, or hold NaN / infinite values. Nothing is aggregated in that case.
    """
    if table.ndim != 2:
        raise AggregationError(f"table must be 2-D, got shape {table.shape}")
    num_rows, width = table.shape
    checked = []
    for index, (global_ids, rows) in enumerate(updates):
        global_ids = np.asarray(global_ids)
        rows = np.asarray(rows)
        _validate_update(index, global_ids, rows, num_rows, width)
        checked.append((global_ids.astype(np.int64, copy=False), rows))

    sums = np.zeros((num_rows, width), dtype=np.float64)
    counts = np.zeros(num_rows, dtype=np.int64)
    for global_ids, rows in checked:
        # ids are unique within one update, so fancy-index += is exact here.
        sums[global_ids] += rows
        counts[global_ids] += 1

    new_table = table.copy()
    held = counts > 0
    new_table[held] = (sums[held] / counts[held, None]).astype(table.dtype, copy=False)
    return new_table


def build_vocabulary(
    labels_per_client: Iterable[Sequence[str]],
) -> tuple[list[str], list[np.ndarray]]:
    """Build the global entity vocabulary from the clients' entity labels.

    Parameters
    ----------
    labels_per_client:
        For each client, its entity labels in the client's local-id order (local id ``i``
        has label ``labels[i]``). Labels must be unique within one client.

    Returns
    -------
    tuple[list[str], list[np.ndarray]]
        The sorted union of all labels (global id = position), and for each client an
        int64 array of shape ``(n_k,)`` mapping its local ids to global ids.

    Raises
    ------
    AggregationError
        When one client's labels hold a duplicate.
    """
    per_client = [list(labels) for labels in labels_per_client]
    for index, labels in enumerate(per_client):
        if len(set(labels)) != len(labels):
            seen: set[str] = set()
            duplicate = next(label for label in labels if label in seen or seen.add(label))
            raise AggregationError(f"client {index}: duplicate entity label {duplicate!r}")
    vocabulary = sorted(set().union(*per_client)) if per_client else []
    position = {label: i for i, label in enumerate(vocabulary)}
    index_arrays = [np.fromiter((position[l] for l in labels), dtype=np.int64, count=len(labels)) for labels in per_client]
    return vocabulary, index_arrays
