"""FedE's per-row mean, checked against an explicit loop over hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from client.kge.aggregation import AggregationError, aggregate_rows, build_vocabulary


def _reference_mean(table, updates):
    """Row by row: the mean over the updates holding that row, else the old row."""
    out = table.copy()
    for row in range(table.shape[0]):
        values = [rows[list(ids).index(row)] for ids, rows in updates if row in ids]
        if values:
            out[row] = np.mean(np.stack(values).astype(np.float64), axis=0)
    return out


def test_each_row_is_the_mean_over_its_holders():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, 4)).astype(np.float32)
    updates = [
        (np.array([0, 1, 2]), rng.normal(size=(3, 4)).astype(np.float32)),
        (np.array([2, 1, 4]), rng.normal(size=(3, 4)).astype(np.float32)),  # another local order
        (np.array([4, 2]), rng.normal(size=(2, 4)).astype(np.float32)),
    ]
    new = aggregate_rows(table, updates)
    np.testing.assert_allclose(new, _reference_mean(table, updates), rtol=1e-6, atol=1e-7)
    # row 2 has three holders: check one value by hand
    by_hand = (updates[0][1][2] + updates[1][1][0] + updates[2][1][1]) / 3
    np.testing.assert_allclose(new[2], by_hand, rtol=1e-6)


def test_row_of_a_single_holder_is_exactly_that_clients_and_unheld_rows_stay():
    table = np.arange(20, dtype=np.float32).reshape(5, 4)
    original = table.copy()
    a = np.full((2, 4), 7.25, dtype=np.float32)
    b = np.full((1, 4), -3.5, dtype=np.float32)
    new = aggregate_rows(table, [(np.array([0, 3]), a), (np.array([1]), b)])
    assert np.array_equal(new[0], a[0]) and np.array_equal(new[3], a[1])
    assert np.array_equal(new[1], b[0])
    assert np.array_equal(new[2], original[2]) and np.array_equal(new[4], original[4])
    assert np.array_equal(table, original), "the input table must not be modified"
    assert new.dtype == np.float32


def test_no_update_leaves_the_table_unchanged():
    table = np.ones((3, 2), dtype=np.float32)
    assert np.array_equal(aggregate_rows(table, []), table)


@pytest.mark.parametrize(
    ("ids", "rows", "message"),
    [
        (np.array([0, 5]), np.zeros((2, 2), np.float32), "out of range"),
        (np.array([-1]), np.zeros((1, 2), np.float32), "out of range"),
        (np.array([1, 1]), np.zeros((2, 2), np.float32), "duplicates"),
        (np.array([0, 1]), np.zeros((2, 3), np.float32), "shape"),
        (np.array([0.0]), np.zeros((1, 2), np.float32), "integers"),
        (np.array([0]), np.array([[np.nan, 0.0]], np.float32), "NaN"),
    ],
)
def test_bad_updates_are_rejected_naming_the_update(ids, rows, message):
    table = np.zeros((3, 2), dtype=np.float32)
    good = (np.array([0]), np.ones((1, 2), np.float32))
    with pytest.raises(AggregationError, match=message) as info:
        aggregate_rows(table, [good, (ids, rows)])
    assert "update 1" in str(info.value)


def test_vocabulary_is_the_sorted_union_and_maps_local_to_global():
    clients = [["c", "a", "b"], ["d", "a"], ["b"]]
    vocabulary, index = build_vocabulary(clients)
    assert vocabulary == ["a", "b", "c", "d"]
    for labels, ids in zip(clients, index):
        assert [vocabulary[i] for i in ids] == labels
        assert ids.dtype == np.int64


def test_vocabulary_rejects_duplicate_labels_within_a_client():
    with pytest.raises(AggregationError, match="client 1.*'x'"):
        build_vocabulary([["a"], ["x", "y", "x"]])
