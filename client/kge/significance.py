"""Seeds and significance: mean +- std over seeds, and a paired bootstrap over test triples.

A gain of SimSkip is a difference of two rankings of the SAME test triples, so the test pairs
them: for every test triple ``i`` the difference ``d_i`` of its reciprocal ranks under the two
rows (averaged over seeds when there are several), resampled with replacement over triples
(:func:`paired_bootstrap`, 10,000 resamples, seeded). The interval is the percentile interval of
the resampled mean differences. PyKEEN's ``RankBasedEvaluator.finalize_with_confidence``
bootstraps one ranking's metric, not a paired difference, so this small routine is our own.

The report calls a gain significant only when its interval lies above 0 AND the refined rows also
beat the perturbation control (``perturbed``) with an interval above 0 (:func:`significant_gain`):
a gain that any random displacement of the same size gives is not SimSkip's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Interval", "mean_std", "paired_bootstrap", "significant_gain"]

#: Resamples of the paired bootstrap.
RESAMPLES = 10_000


class Interval(dict):
    """``{"mean", "lo", "hi", "n", "resamples", "confidence"}`` of a paired bootstrap (JSON-ready)."""

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0."""
        return self["lo"] > 0 or self["hi"] < 0


def paired_bootstrap(
    differences: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0, confidence: float = 0.95, chunk: int = 200
) -> Interval | list[Interval]:
    """Percentile interval of the mean of paired per-triple differences.

    :param differences: ``(n,)`` per-triple differences (e.g. reciprocal rank refined - unrefined),
        or ``(m, n)``: ``m`` difference vectors over the SAME triples, resampled with the same
        draws (one interval each; the draws are shared, so their intervals are comparable and
        the cost is that of one).
    :param resamples: bootstrap resamples.
    :param seed: seeds the resampling (``numpy.random.default_rng``): the same seed and ``n``
        give the same resamples.
    :param confidence: the interval's coverage.
    :param chunk: resamples drawn at once (memory: ``chunk x n`` counts).
    :returns: one :class:`Interval` for a 1-D input, else a list of ``m``.
    :raises ValueError: for an empty or non-finite input.
    """
    d = np.asarray(differences, dtype=np.float64)
    single = d.ndim == 1
    d = np.atleast_2d(d)
    if d.ndim != 2 or d.shape[1] == 0:
        raise ValueError(f"no differences to bootstrap (shape {np.shape(differences)})")
    if not np.isfinite(d).all():
        raise ValueError("differences hold NaN or inf")
    m, n = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, m), dtype=np.float64)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(count, n), dtype=np.int64 if count * n >= 2**31 else np.int32)
        # resample counts per triple, then one matrix product for every difference vector at once
        counts = np.bincount((index + np.arange(count, dtype=index.dtype)[:, None] * n).ravel(), minlength=count * n)
        counts = counts.reshape(count, n).astype(np.float64)
        means[start : start + count] = counts @ d.T / n
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail], axis=0)
    out = [
        Interval(
            mean=float(d[i].mean()),
            lo=float(lo[i]),
            hi=float(hi[i]),
            n=int(n),
            resamples=int(resamples),
            confidence=float(confidence),
        )
        for i in range(m)
    ]
    return out[0] if single else out


def mean_std(values: Sequence[float]) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` over seeds (std with ``ddof=1``; 0 for one seed)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values")
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "n": int(array.size),
    }


def significant_gain(vs_unrefined: Interval, vs_perturbed: Interval) -> str:
    """The report's verdict on a refined row.

    :returns: ``"gain"`` when both intervals lie above 0 (better than the unrefined rows AND than
        the perturbation control), ``"loss"`` when the interval against the unrefined rows lies
        below 0, else ``"none"`` (no significant difference, or one a random displacement gives too).
    """
    if vs_unrefined["lo"] > 0 and vs_perturbed["lo"] > 0:
        return "gain"
    if vs_unrefined["hi"] < 0:
        return "loss"
    return "none"
