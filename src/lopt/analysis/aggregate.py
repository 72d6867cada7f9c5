"""Aggregates across tasks (or seeds) with bootstrap confidence intervals.

Following Agarwal et al. 2021 ("Deep Reinforcement Learning at the Edge of the
Statistical Precipice", the ``rliable`` library), results over a handful of tasks are
summarised by robust statistics with interval estimates rather than by a bare mean:

``median``
    ``np.median``.
``iqm``
    Interquartile mean, ``scipy.stats.trim_mean(x, 0.25)``: the mean of the values left
    after cutting 25% from each end of the sorted sample. When ``0.25 * n`` is not an
    integer scipy cuts ``floor(0.25 * n)`` values from each end (it "slices off less"),
    e.g. n = 6 keeps the middle 4; this is also ``rliable``'s IQM. (It differs from the
    "fractional" IQM that weights the boundary values partially.)

Intervals are percentile bootstrap intervals (:func:`scipy.stats.bootstrap`,
``method="percentile"``): resample the values with replacement, take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled
statistic. Not BCa: BCa's bias correction and acceleration are estimated from the
bootstrap and jackknife distributions of the statistic, which for medians and trimmed
means of a few values take only a few distinct values; the corrections are then badly
determined (scipy returns NaN with a ``DegenerateDataWarning`` when the point estimate
sits at an edge of the bootstrap distribution). The percentile interval is always
defined and is ``rliable``'s default. The point estimate is the statistic of the full
sample, not a bootstrap average.

NaN values are dropped before anything is computed (``n`` counts the rest); ``+inf``
(e.g. "never reached the target") is kept and sorts last, so median and IQM stay finite
while fewer than half / a quarter of the values are infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["STATISTICS", "aggregate", "bootstrap_ci", "iqm", "median"]


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(x, 0.25, axis=axis)


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(x, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"iqm": _iqm, "median": _median, "mean": _mean}


def _values(x) -> np.ndarray:
    """``x`` flattened to float64 with NaN dropped."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def iqm(x) -> float:
    """Interquartile mean of ``x`` (flattened, NaN dropped): ``scipy.stats.trim_mean(x, 0.25)``.

    NaN for an empty sample. See the module docstring for the trimming convention.
    """
    x = _values(x)
    return float(_iqm(x)) if x.size else float("nan")


def median(x) -> float:
    """Median of ``x`` (flattened, NaN dropped); NaN for an empty sample."""
    x = _values(x)
    return float(_median(x)) if x.size else float("nan")


def bootstrap_ci(
    x,
    statistic: str = "iqm",
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap confidence interval of ``statistic``.

    Args:
        x: sample (flattened; NaN dropped).
        statistic: ``"iqm"``, ``"median"`` or ``"mean"``.
        confidence: interval coverage in ``(0, 1)``.
        num_resamples: bootstrap resamples.
        seed: seeds the resampling (``numpy.random.default_rng(seed)``): the same inputs
            give the same interval.

    Returns:
        ``(point, low, high)``; ``low == high == point`` when one value remains, all NaN
        when none does.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; allowed: {', '.join(STATISTICS)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    fn = STATISTICS[statistic]
    x = _values(x)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(fn(x))
    if x.size == 1:
        return point, point, point
    with np.errstate(invalid="ignore"):  # +inf values make scipy's standard error NaN
        result = stats.bootstrap(
            (x,),
            fn,
            n_resamples=num_resamples,
            batch=1000,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = result.confidence_interval
    return point, float(ci.low), float(ci.high)


def aggregate(
    frame: pd.DataFrame,
    value: str,
    by: Sequence[str],
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Median and IQM of ``frame[value]`` per group of ``by``, with bootstrap intervals.

    Typically one row per task (e.g. a per-task speed-up) grouped by optimizer, so the
    interval reflects the spread across tasks.

    Args:
        frame: tidy table with columns ``value`` and ``by``.
        value: numeric column to aggregate (NaN rows are dropped per group).
        by: grouping columns; empty aggregates the whole column into one row.
        confidence, num_resamples, seed: see :func:`bootstrap_ci` (every group is
            resampled with the same ``seed``, so a group's row does not depend on the
            other groups).

    Returns:
        One row per group (sorted by ``by``) with columns
        ``by + [n, median, median_low, median_high, iqm, iqm_low, iqm_high]``; ``n`` is
        the number of non-NaN values.
    """
    by = list(by)
    missing = [c for c in [value, *by] if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in frame (has {list(frame.columns)})")
    groups = frame.groupby(by, sort=True, dropna=False, observed=True) if by else [((), frame)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        values = _values(group[value].to_numpy(dtype=np.float64))
        row = dict(zip(by, key, strict=True))
        row["n"] = int(values.size)
        for stat in ("median", "iqm"):
            point, low, high = bootstrap_ci(values, stat, confidence, num_resamples, seed)
            row[stat], row[f"{stat}_low"], row[f"{stat}_high"] = point, low, high
        rows.append(row)
    columns = [*by, "n", "median", "median_low", "median_high", "iqm", "iqm_low", "iqm_high"]
    return pd.DataFrame(rows, columns=columns)
