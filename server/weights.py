"""FedAvg of named weight lists (the SimSkip encoder and head), pure NumPy.

Flower's FedAvg averages whole ``ArrayRecord``s; the SimSkip phase needs the same mean over
``[(name, array), ...]`` lists as :meth:`simskip_core.SimSkipTrainer.get_weights` exports them,
checked name by name so a client with another encoder shape fails with a clear message instead
of being broadcast into the average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NamedArrays", "WeightsAggregationError", "fedavg_named"]

NamedArrays = list[tuple[str, np.ndarray]]


class WeightsAggregationError(ValueError):
    """The updates cannot be averaged (no update, bad weight, names/shapes differ, NaN)."""


def fedavg_named(updates: Sequence[tuple[Sequence[tuple[str, np.ndarray]], int | float]]) -> NamedArrays:
    """Weighted mean of named weight lists: ``sum_k n_k * W_k / sum_k n_k``, entry by entry.

    :param updates: ``[(weights_k, n_k), ...]``; ``weights_k`` is an ordered list of
        ``(name, array)``; ``n_k > 0`` is client k's number of embeddings (rows it refined).
    :returns: the averaged list, same names, order, shapes and dtypes as the first update
        (accumulated in float64, cast back).
    :raises WeightsAggregationError: naming the client index and entry that does not fit.
    """
    if not updates:
        raise WeightsAggregationError("no updates to average")
    reference = list(updates[0][0])
    sums = [np.zeros(np.shape(array), dtype=np.float64) for _, array in reference]
    total = 0.0
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
                raise WeightsAggregationError(f"update {index}: entry {position} is {name!r}, update 0 has {ref_name!r}")
            if array.shape != np.shape(ref_array):
                raise WeightsAggregationError(
                    f"update {index}: {name} has shape {array.shape}, update 0 has {np.shape(ref_array)}"
                )
            if not np.isfinite(array).all():
                raise WeightsAggregationError(f"update {index}: {name} holds NaN or infinite values")
            sums[position] += count * array.astype(np.float64)
        total += count
    return [
        (name, (summed / total).astype(np.asarray(ref_array).dtype))
        for (name, ref_array), summed in zip(reference, sums, strict=True)
    ]
