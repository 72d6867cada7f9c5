"""``lopt.analysis.variance.variance_summary``: the reported variance is the trace of the
covariance (not a per-coordinate average), and its standard error is calibrated.
"""

from __future__ import annotations

import numpy as np
import pytest

from lopt.analysis.variance import variance_summary


def test_variance_is_the_trace_of_the_sample_covariance():
    # hand case: replicas (0, 0), (1, 2), (2, 4): per-coordinate sample variances 1 and 4
    var, _, mean = variance_summary(np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]))
    assert var == pytest.approx(5.0, rel=1e-12)
    np.testing.assert_allclose(mean, [1.0, 2.0])
    # windows pooled: [R, W, D] is the covariance trace of all R x W rows (ddof 1)
    samples = np.random.default_rng(0).normal(size=(7, 5, 3)) * np.array([1.0, 2.0, 3.0])
    var, _, _ = variance_summary(samples)
    assert var == pytest.approx(np.trace(np.cov(samples.reshape(-1, 3), rowvar=False)), rel=1e-10)


def test_variance_standard_error_matches_the_spread_over_repeats():
    # 400 independent experiments of 50 replicas each, D = 3 with stds 1, 2, 3 (trace 14).
    # The empirical std of the 400 variance estimates estimates the true standard error with
    # relative error ~ 1 / sqrt(2 x 399) = 3.5 %; the mean reported se is far tighter. The
    # bounds 0.8 .. 1.25 on their ratio are > 5 of those errors wide, while an se not
    # divided by sqrt(replicas) is off by sqrt(50) ~ 7x.
    rng = np.random.default_rng(1)
    scale = np.array([1.0, 2.0, 3.0])
    results = np.array([variance_summary(rng.normal(size=(50, 3)) * scale)[:2] for _ in range(400)])
    assert results[:, 0].mean() == pytest.approx(14.0, rel=0.05)  # unbiased: se of the mean ~ 1 %
    ratio = results[:, 0].std(ddof=1) / results[:, 1].mean()
    assert 0.8 < ratio < 1.25, ratio
