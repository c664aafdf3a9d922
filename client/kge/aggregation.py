"""FedE's per-row aggregation of entity embeddings (pure numpy, no Flower).

Each client holds a subset of the global entities. After local training it returns the
rows of the entities it holds; the server sets each global row to the mean over the
clients that returned it (FedE, Chen et al., IJCKG 2021, Eq. 4 with unit weights per
holder). Rows nobody returned this round are left unchanged.

The mean lets one party move every row it shares by any amount. Two robust rules
(run-config key ``aggregation``, :data:`AGGREGATIONS`) replace it coordinate by coordinate,
per row, over that row's holders (Yin et al., ICML 2018):

``median``
    the coordinate-wise median of the holders' values;
``trimmed-mean``
    the coordinate-wise mean after dropping the ``floor(trim * c)`` largest and as many
    smallest of the ``c`` holders' values (``aggregation-trim``; scipy's ``trim_mean`` rule).

Rows with one or two holders get their mean under every rule: the median of two values is
their mean and nothing can be trimmed. A robust rule therefore protects only rows that at
least three parties hold; with ``c`` holders the median tolerates up to ``(c - 1) // 2``
arbitrary ones, the trimmed mean ``floor(trim * c)``. (Flower's ``FedMedian`` /
``FedTrimmedAvg`` aggregate whole models; FedE's rows have a different holder set each, so
the rule is applied here per row.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "AGGREGATIONS",
    "AggregationError",
    "aggregate_rows",
    "build_vocabulary",
    "check_rule",
    "robust_aggregate",
]

#: Per-row aggregation rules (run-config key ``aggregation``).
AGGREGATIONS: tuple[str, ...] = ("mean", "median", "trimmed-mean")
#: Global rows per block of the robust rules: bounds the (block, clients, width) float64 buffer.
ROBUST_BLOCK_ROWS = 2048


class AggregationError(ValueError):
    """An update does not fit the global table (shape, ids, dtype or non-finite values)."""


def _validate_update(index: int, global_ids: np.ndarray, rows: np.ndarray, num_rows: int, width: int) -> None:
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
            raise AggregationError(f"update {index}: global id out of range [0, {num_rows}): min {low}, max {high}")
        if np.unique(global_ids).size != global_ids.size:
            raise AggregationError(f"update {index}: global_ids contain duplicates")
    if not np.all(np.isfinite(rows)):
        raise AggregationError(f"update {index}: rows contain NaN or infinite values")


def check_rule(rule: str, trim: float) -> None:
    """Raise :class:`AggregationError` for an unknown rule or a trim fraction outside [0, 0.5)."""
    if rule not in AGGREGATIONS:
        raise AggregationError(f"aggregation must be one of {list(AGGREGATIONS)}, got {rule!r}")
    if not 0.0 <= float(trim) < 0.5:
        raise AggregationError(f"aggregation-trim must be in [0, 0.5), got {trim!r}")


def robust_aggregate(values: np.ndarray, counts: np.ndarray, rule: str, trim: float = 0.0) -> np.ndarray:
    """Coordinate-wise median or trimmed mean over each row's first ``counts[i]`` values.

    :param values: ``(rows, clients, width)``; row ``i`` holds its ``counts[i]`` values first
        (any order), the rest is padding (ignored).
    :param counts: ``(rows,)`` number of values of each row, at least 1.
    :param rule: ``median`` or ``trimmed-mean`` (``mean`` averages the values too).
    :param trim: the fraction cut from each end by ``trimmed-mean``.
    :returns: ``(rows, width)`` float64.
    """
    counts = np.asarray(counts, dtype=np.int64)
    slots = np.arange(values.shape[1])[None, :, None]
    # padding sorts last: +inf never precedes a real value (all values are finite)
    ordered = np.sort(np.where(slots < counts[:, None, None], values, np.inf), axis=1)
    if rule == "median":
        low = np.take_along_axis(ordered, ((counts - 1) // 2)[:, None, None], axis=1)[:, 0]
        high = np.take_along_axis(ordered, (counts // 2)[:, None, None], axis=1)[:, 0]
        return (low + high) / 2.0
    cut = np.floor(float(trim) * counts).astype(np.int64) if rule == "trimmed-mean" else np.zeros_like(counts)
    keep = (slots >= cut[:, None, None]) & (slots < (counts - cut)[:, None, None])
    return np.where(keep, ordered, 0.0).sum(axis=1) / (counts - 2 * cut)[:, None]


def aggregate_rows(
    table: np.ndarray,
    updates: Sequence[tuple[np.ndarray, np.ndarray]],
    rule: str = "mean",
    trim: float = 0.0,
) -> np.ndarray:
    """Return a new table whose rows are the mean (or a robust rule) over the clients that updated them.

    Parameters
    ----------
    table:
        Current global table, shape ``(num_entities, width)``. Not modified.
    updates:
        One ``(global_ids, rows)`` pair per client: ``global_ids`` int array of shape
        ``(n_k,)`` without duplicates, ``rows`` array of shape ``(n_k, width)``; row ``i``
        of ``rows`` is the client's value for global entity ``global_ids[i]``.
    rule:
        ``mean`` (FedE), ``median`` or ``trimmed-mean``, per row over its holders (see the
        module docstring for rows with one or two holders).
    trim:
        Fraction cut from each end by ``trimmed-mean``, in [0, 0.5).

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
        wrong shape, or hold NaN / infinite values, or the rule is unknown. Nothing is
        aggregated in that case.
    """
    check_rule(rule, trim)
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
    if rule != "mean":
        _robust_rows(new_table, checked, counts, rule, trim)
    return new_table


def _robust_rows(
    table: np.ndarray, checked: Sequence[tuple[np.ndarray, np.ndarray]], counts: np.ndarray, rule: str, trim: float
) -> None:
    """Overwrite the rows held by three or more clients with ``rule`` over their holders, in place."""
    contested = np.flatnonzero(counts >= 3)
    if contested.size == 0:
        return
    position = np.full(table.shape[0], -1, dtype=np.int64)
    position[contested] = np.arange(contested.size)
    for begin in range(0, contested.size, ROBUST_BLOCK_ROWS):
        end = min(begin + ROBUST_BLOCK_ROWS, contested.size)
        values = np.zeros((end - begin, len(checked), table.shape[1]), dtype=np.float64)
        filled = np.zeros(end - begin, dtype=np.int64)
        for global_ids, rows in checked:  # each row's values first, in client order
            where = position[global_ids]
            mine = (where >= begin) & (where < end)
            block = where[mine] - begin
            values[block, filled[block]] = rows[mine]
            filled[block] += 1
        rows_out = contested[begin:end]
        table[rows_out] = robust_aggregate(values, filled, rule, trim).astype(table.dtype, copy=False)


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
    index_arrays = [
        np.fromiter((position[label] for label in labels), dtype=np.int64, count=len(labels)) for labels in per_client
    ]
    return vocabulary, index_arrays
