"""lopt.analysis.aggregate: the IQM's trimming at n = 4, the confidence level of the
percentile interval, and the documented row order of ``aggregate``.

test_eval_metrics.py checks the IQM at n = 2, 3, 6, 8 and 10, where trimming 25 % and
trimming 20 % cut the same number of values (floor(0.25 n) == floor(0.2 n)); n = 4 tells
them apart. Every interval it checks is at the default 95 %, so a confidence argument
that never reached scipy passed. Its groups were already sorted.

Two values {0, 1}: a resample's mean (= median = IQM, nothing is trimmed at n = 2) is 0,
0.5 or 1 with probabilities 1/4, 1/2, 1/4. The 95 % percentile interval spans the 2.5 %
and 97.5 % quantiles: [0, 1]; a 40 % one the 30 % and 70 % quantiles, both 0.5 (with
10 000 resamples the share of 0s is 0.25 +- 0.005, far from 0.3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lopt.analysis.aggregate import aggregate, bootstrap_ci, iqm


def test_iqm_trims_one_value_per_end_at_four():
    # floor(0.25 * 4) = 1 per end: [1, 2, 3, 100] -> mean(2, 3) = 2.5 (trimming 20 % keeps all: 26.5)
    assert iqm([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5, rel=1e-12)
    assert iqm([100.0, 3.0, np.nan, 1.0, 2.0]) == pytest.approx(2.5, rel=1e-12)


@pytest.mark.parametrize("statistic", ["iqm", "median", "mean"])
def test_the_confidence_level_sets_the_interval(statistic):
    assert bootstrap_ci([0.0, 1.0], statistic) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], statistic, confidence=0.4) == (0.5, 0.5, 0.5)


def test_confidence_must_lie_strictly_between_0_and_1():
    for bad in (0.0, 1.0, 95.0):
        with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
            bootstrap_ci([0.0, 1.0], confidence=bad)


def test_aggregate_passes_the_confidence_on_and_sorts_its_groups():
    frame = pd.DataFrame({"optimizer": ["b", "b", "a", "a", "a"], "speedup": [0.0, 1.0, 0.0, 1.0, np.nan]})
    out = aggregate(frame, "speedup", ["optimizer"], confidence=0.4)
    assert out["optimizer"].tolist() == ["a", "b"]  # sorted by the grouping column
    assert out["n"].tolist() == [2, 2]
    for col in ("median", "median_low", "median_high", "iqm", "iqm_low", "iqm_high"):
        assert out[col].tolist() == [0.5, 0.5], col
    wide = aggregate(frame, "speedup", ["optimizer"])  # 95 %
    assert wide["iqm_low"].tolist() == [0.0, 0.0] and wide["iqm_high"].tolist() == [1.0, 1.0]
