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

Across KGE seeds (issue 33's pre-registered rule, ``docs/concepts/preregistration.md``):
:func:`seed_level_verdict` reads one (split, model) cell and downstream protocol over K KGE bases:
a 95 % t-interval over the K seed-level gains, a minimum effect of :data:`MIN_EFFECT_POINTS`, and
the per-seed paired bootstrap against ``perturbed`` in every seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MIN_EFFECT_POINTS",
    "MIN_SEEDS",
    "PREREGISTRATION",
    "SEED_VERDICTS",
    "Interval",
    "mean_std",
    "paired_bootstrap",
    "seed_level_verdict",
    "significant_gain",
]

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


#: The pre-registered minimum effect: a mean seed-level gain of at least this many MRR points (x100).
MIN_EFFECT_POINTS = 0.5

#: The pre-registered number of KGE seeds a cell needs for any verdict but "insufficient seeds".
MIN_SEEDS = 3

#: The verdicts :func:`seed_level_verdict` returns.
SEED_VERDICTS = ("gain", "loss", "no gain", "insufficient seeds")

#: Where the rule is written down (recorded in every verdict record).
PREREGISTRATION = "docs/concepts/preregistration.md"


def _finite(value: Any, name: str) -> float:
    """``value`` as a finite float, else a :class:`ValueError` naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is {number} (every value must be finite)")
    return number


def _bounds(interval: Any, name: str) -> tuple[float, float]:
    """``(lo, hi)`` of an interval mapping (an :class:`Interval` or any ``{"lo", "hi"}``), checked."""
    if not isinstance(interval, Mapping) or "lo" not in interval or "hi" not in interval:
        raise ValueError(f"{name} needs 'lo' and 'hi' (an Interval), got {interval!r}")
    lo, hi = _finite(interval["lo"], f"{name}['lo']"), _finite(interval["hi"], f"{name}['hi']")
    if lo > hi:
        raise ValueError(f"{name} has lo {lo} > hi {hi}")
    return lo, hi


def _per_seed(values: Sequence[Any] | None, n: int, name: str) -> list[Any] | None:
    """An optional per-seed sequence as a list of length ``n`` (a length mismatch names ``name``)."""
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} seed-level gains (one per KGE seed)")
    return values


def seed_level_verdict(
    gains_points: Sequence[float],
    vs_perturbed_intervals: Sequence[Mapping[str, Any]],
    vs_perturbed_points: Sequence[float] | None = None,
    *,
    vs_unrefined_intervals: Sequence[Mapping[str, Any]] | None = None,
    perturbed_gains_points: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    confidence: float = 0.95,
    min_seeds: int = MIN_SEEDS,
    min_effect: float = MIN_EFFECT_POINTS,
) -> dict[str, Any]:
    """The pre-registered verdict of one cell and downstream protocol over K KGE seeds.

    With ``g`` the K seed-level gains, ``m = mean(g)``, ``sd = sd(g, ddof=1)`` and
    ``t = t.ppf(1 - (1 - confidence) / 2, K - 1)``, the t-interval is ``m +- t * sd / sqrt(K)``:

    - ``"insufficient seeds"`` when ``K < min_seeds`` (never a gain; the statistics that exist are
      still reported);
    - ``"gain"`` iff ``m >= min_effect`` AND the t-interval's lower end ``> 0`` AND, in every seed,
      the paired-bootstrap interval of refined - perturbed lies above 0 (its ``lo > 0``);
    - ``"loss"`` iff ``m <= -min_effect`` AND the t-interval's upper end ``< 0``;
    - else ``"no gain"``.

    Comparisons are on the unrounded floats (a mean that prints as 0.50 but is below 0.5 is not a
    gain). The other inputs are reported only; they decide nothing.

    :param gains_points: ``g_s`` per KGE seed: overall test MRR (x100) of the refined rows (mean over
        SimSkip seeds) minus that of the unrefined rows.
    :param vs_perturbed_intervals: per KGE seed, the paired-bootstrap interval (over test triples) of
        refined - perturbed (:func:`paired_bootstrap`'s :class:`Interval` or any ``{"lo", "hi"}``
        mapping; only the sign of ``lo`` decides, so the unit does not matter).
    :param vs_perturbed_points: ``q_s`` per KGE seed (refined - perturbed, MRR points), reported.
    :param vs_unrefined_intervals: per KGE seed, the paired-bootstrap interval of refined - unrefined,
        reported beside ``g_s``.
    :param perturbed_gains_points: per KGE seed, the perturbed control's gain over the unrefined rows
        (MRR points); its mean is reported.
    :param seeds: the KGE seeds' names, reported (default ``0 .. K-1``, the positions).
    :param confidence: the t-interval's coverage (pre-registered: 0.95).
    :param min_seeds: fewest KGE seeds for a verdict (pre-registered: 3; at least 2).
    :param min_effect: the minimum effect in MRR points (pre-registered: :data:`MIN_EFFECT_POINTS`).
    :returns: a JSON-ready record: ``verdict``, ``n``, ``mean_points``, ``sd_points``, ``df``,
        ``t_quantile``, ``t_interval`` (``{"lo", "hi", "confidence"}``), ``perturbed_gain_mean_points``,
        ``conditions`` (each condition of the rule and whether it held; ``None`` where it cannot be
        computed), ``per_seed`` (each seed's ``g_s``, ``q_s``, intervals and whether it beat
        ``perturbed``), and the rule's parameters. Statistics that need more seeds than there are
        are ``None``.
    :raises ValueError: for a non-finite or non-numeric value (naming which), per-seed inputs of
        different lengths, an interval without ``lo``/``hi`` or with ``lo > hi``, a ``confidence``
        outside (0, 1), ``min_seeds < 2`` or a negative ``min_effect``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if min_seeds < 2:
        raise ValueError(f"min_seeds must be at least 2 (a t-interval needs 2 seeds), got {min_seeds}")
    min_effect = _finite(min_effect, "min_effect")
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    gains = [_finite(g, f"gains_points[{i}]") for i, g in enumerate(gains_points)]
    n = len(gains)
    if vs_perturbed_intervals is None:
        raise ValueError("vs_perturbed_intervals is required: one refined - perturbed interval per KGE seed")
    intervals = _per_seed(vs_perturbed_intervals, n, "vs_perturbed_intervals") or []
    perturbed_bounds = [_bounds(iv, f"vs_perturbed_intervals[{i}]") for i, iv in enumerate(intervals)]
    q_points = _per_seed(vs_perturbed_points, n, "vs_perturbed_points")
    if q_points is not None:
        q_points = [_finite(q, f"vs_perturbed_points[{i}]") for i, q in enumerate(q_points)]
    unrefined = _per_seed(vs_unrefined_intervals, n, "vs_unrefined_intervals")
    unrefined_bounds = (
        [_bounds(iv, f"vs_unrefined_intervals[{i}]") for i, iv in enumerate(unrefined)]
        if unrefined is not None
        else None
    )
    control = _per_seed(perturbed_gains_points, n, "perturbed_gains_points")
    if control is not None:
        control = [_finite(p, f"perturbed_gains_points[{i}]") for i, p in enumerate(control)]
    names = _per_seed(seeds, n, "seeds")
    names = list(range(n)) if names is None else names

    array = np.asarray(gains, dtype=np.float64)
    mean = float(array.mean()) if n else None
    sd = float(array.std(ddof=1)) if n >= 2 else None
    df = n - 1 if n >= 2 else None
    quantile = lo = hi = None
    if df is not None:
        from scipy.stats import t as student_t  # lazy: scipy.stats is slow to import, few callers need it

        quantile = float(student_t.ppf(1.0 - (1.0 - confidence) / 2.0, df))
        half = quantile * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half

    beats = [b_lo > 0 for b_lo, _ in perturbed_bounds]
    conditions: dict[str, bool | None] = {
        "enough_seeds": n >= min_seeds,
        "mean_at_least_min_effect": None if mean is None else mean >= min_effect,
        "t_interval_above_zero": None if lo is None else lo > 0,
        "every_seed_beats_perturbed": all(beats) if n else None,
        "mean_at_most_minus_min_effect": None if mean is None else mean <= -min_effect,
        "t_interval_below_zero": None if hi is None else hi < 0,
    }
    if not conditions["enough_seeds"]:
        verdict = "insufficient seeds"
    elif (
        conditions["mean_at_least_min_effect"]
        and conditions["t_interval_above_zero"]
        and conditions["every_seed_beats_perturbed"]
    ):
        verdict = "gain"
    elif conditions["mean_at_most_minus_min_effect"] and conditions["t_interval_below_zero"]:
        verdict = "loss"
    else:
        verdict = "no gain"

    per_seed = []
    for i in range(n):
        per_seed.append(
            {
                "seed": names[i],
                "gain_points": gains[i],
                "vs_unrefined_interval": None
                if unrefined_bounds is None
                else {"lo": unrefined_bounds[i][0], "hi": unrefined_bounds[i][1]},
                "vs_perturbed_points": None if q_points is None else q_points[i],
                "vs_perturbed_interval": {"lo": perturbed_bounds[i][0], "hi": perturbed_bounds[i][1]},
                "beats_perturbed": beats[i],
                "perturbed_gain_points": None if control is None else control[i],
            }
        )
    return {
        "verdict": verdict,
        "rule": PREREGISTRATION,
        "n": n,
        "min_seeds": int(min_seeds),
        "min_effect_points": min_effect,
        "confidence": float(confidence),
        "mean_points": mean,
        "sd_points": sd,
        "df": df,
        "t_quantile": quantile,
        "t_interval": {"lo": lo, "hi": hi, "confidence": float(confidence)},
        "perturbed_gain_mean_points": float(np.mean(control)) if control else None,
        "conditions": conditions,
        "per_seed": per_seed,
    }
