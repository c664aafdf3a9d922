"""FedAvg of named weight lists (the SimSkip encoder and head), pure NumPy.

Flower's FedAvg averages whole ``ArrayRecord``s; the SimSkip phase needs the same mean over
``[(name, array), ...]`` lists as :meth:`simskip_core.SimSkipTrainer.get_weights` exports them,
checked name by name so a client with another encoder shape fails with a clear message instead
of being broadcast into the average. The robust rules of :mod:`client.kge.aggregation` (``median``,
``trimmed-mean``; run-config key ``aggregation``) apply entry by entry as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from client.kge.aggregation import AggregationError, check_rule, robust_aggregate

__all__ = ["NamedArrays", "WeightsAggregationError", "fedavg_named"]

NamedArrays = list[tuple[str, np.ndarray]]


class WeightsAggregationError(ValueError):
    """The updates cannot be averaged (no update, bad weight, names/shapes differ, NaN)."""


def fedavg_named(
    updates: Sequence[tuple[Sequence[tuple[str, np.ndarray]], int | float]], rule: str = "mean", trim: float = 0.0
) -> NamedArrays:
    """Weighted mean of named weight lists: ``sum_k n_k * W_k / sum_k n_k``, entry by entry.

    :param updates: ``[(weights_k, n_k), ...]``; ``weights_k`` is an ordered list of
        ``(name, array)``; ``n_k > 0`` is client k's number of embeddings (rows it refined).
    :param rule: ``mean`` (the weighted mean above), ``median`` or ``trimmed-mean``: the
        coordinate-wise median / trimmed mean of the clients' values, unweighted (a weight would
        let one client claim any share). With fewer than three updates every rule is the mean.
    :param trim: the fraction cut from each end by ``trimmed-mean``.
    :returns: the averaged list, same names, order, shapes and dtypes as the first update
        (accumulated in float64, cast back).
    :raises WeightsAggregationError: naming the client index and entry that does not fit, or a bad rule.
    """
    if not updates:
        raise WeightsAggregationError("no updates to average")
    try:
        check_rule(rule, trim)
    except AggregationError as err:
        raise WeightsAggregationError(str(err)) from None
    reference = list(updates[0][0])
    sums = [np.zeros(np.shape(array), dtype=np.float64) for _, array in reference]
    total = 0.0
    checked: list[list[np.ndarray]] = []  # each update's arrays in the reference's order
    for index, (weights, count) in enumerate(updates):
        count = float(count)
        if not np.isfinite(count) or count <= 0:
            raise WeightsAggregationError(f"update {index}: weight (number of embeddings) must be > 0, got {count}")
        weights = list(weights)
        if len(weights) != len(reference):
            raise WeightsAggregationError(
                f"update {index}: {len(weights)} weight arrays, update 0 has {len(reference)}"
            )
        for position, ((name, array), (ref_name, ref_array)) in enumerate(zip(weights, reference, strict=True)):
            array = np.asarray(array)
            if name != ref_name:
                raise WeightsAggregationError(
                    f"update {index}: entry {position} is {name!r}, update 0 has {ref_name!r}"
                )
            if array.shape != np.shape(ref_array):
                raise WeightsAggregationError(
                    f"update {index}: {name} has shape {array.shape}, update 0 has {np.shape(ref_array)}"
                )
            if not np.isfinite(array).all():
                raise WeightsAggregationError(f"update {index}: {name} holds NaN or infinite values")
            sums[position] += count * array.astype(np.float64)
        checked.append([np.asarray(array) for _, array in weights])
        total += count
    if rule != "mean" and len(updates) >= 3:
        counts = np.asarray([len(updates)])
        return [
            (
                name,
                robust_aggregate(
                    np.stack([np.asarray(arrays[position], dtype=np.float64).reshape(-1) for arrays in checked])[None],
                    counts,
                    rule,
                    trim,
                )[0]
                .reshape(np.shape(ref_array))
                .astype(np.asarray(ref_array).dtype),
            )
            for position, (name, ref_array) in enumerate(reference)
        ]
    return [
        (name, (summed / total).astype(np.asarray(ref_array).dtype))
        for (name, ref_array), summed in zip(reference, sums, strict=True)
    ]
