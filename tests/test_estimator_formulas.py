"""Estimator arithmetic against hand-built expected values, one window at a time.

The unbiasedness tests of test_estimators.py check means over thousands of seeds, so a change
that keeps an estimator unbiased but adds variance passes them. One such: PES weighting
the steps after a reset inside a window by the whole accumulated ``xi`` instead of the new
episode's own noise (the extra terms are independent of those steps' losses and average
out). Here the PES estimate of a window straddling a reset is compared with the formula
of lopt.estimators.pes computed by hand from trajectories simulated in NumPy.

multi_task: its gradient is the *mean* of the per-task gradients (a sum differs only by a
factor that Adam's scale invariance hides in the meta-training test) and its count
metrics are summed over tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from test_estimators import S0 as _S0
from test_estimators import TARGET as _TARGET
from test_estimators import THETA as _THETA
from test_estimators import A as _A
from test_estimators import LinearQuadratic

from lopt.estimators import pes
from lopt.estimators.base import Estimator, sample_noise
from lopt.estimators.multi_task import multi_task

# the linear-quadratic system of the unbiasedness tests; NumPy float64 copies of its
# (float32) constants for the reference computed outside the engine
A, TARGET, S0, THETA = (np.asarray(v, np.float64) for v in (_A, _TARGET, _S0, _THETA))


def _losses(thetas_per_step):
    """NumPy float64 losses of one particle run from S0 under the given per-step thetas;
    ``None`` in the list marks a reset (back to S0)."""
    s, out = S0.copy(), []
    for th in thetas_per_step:
        if th is None:
            s = S0.copy()
            continue
        s = A @ s + th
        out.append(0.5 * np.sum((s - TARGET) ** 2))
    return np.array(out)


def test_pes_window_with_a_reset_inside_matches_the_formula():
    """T = 6, K = 4, lockstep, M = 2 pairs, sigma = 0.1. Window 1 runs steps 0-3 under
    theta +- eps1; window 2 runs steps 4, 5 under theta +- eps2, resets, and runs steps 0, 1
    of the new episode under theta +- eps2. PES's window-2 estimate is

        g = 1 / (2 M sigma^2 K) sum_m [ (eps1_m + eps2_m) (d_m,0 + d_m,1) + eps2_m (d_m,2 + d_m,3) ]

    with d = L+ - L- per step: the new episode's steps carry only eps2."""
    sigma, pairs, trunc = 0.1, 2, 4
    est = pes(LinearQuadratic(6), num_particles=2 * pairs, trunc_length=trunc, sigma=sigma, step_unlock=False)
    theta = jnp.asarray(THETA, jnp.float32)
    state = est.init(theta, jax.random.PRNGKey(0))
    k1, k2 = jax.random.PRNGKey(11), jax.random.PRNGKey(12)
    _, state, _ = est.estimate(theta, state, k1)
    grad, _, _ = est.estimate(theta, state, k2)
    # the noise PES draws each window (its documented source: sample_noise(key, theta, M, sigma))
    eps1 = np.asarray(sample_noise(k1, theta, pairs, sigma), np.float64)
    eps2 = np.asarray(sample_noise(k2, theta, pairs, sigma), np.float64)
    expected = np.zeros(3)
    for m in range(pairs):
        d = []
        for sign in (1.0, -1.0):
            a, b = THETA + sign * eps1[m], THETA + sign * eps2[m]
            d.append(_losses([a] * 4 + [b] * 2 + [None] + [b] * 2)[4:])  # window 2's 4 losses
        delta = d[0] - d[1]
        expected += (eps1[m] + eps2[m]) * delta[:2].sum() + eps2[m] * delta[2:].sum()
    expected /= 2 * pairs * sigma**2 * trunc
    # float32 engine vs float64 NumPy: losses of O(1) agree to ~1e-6 relative, and the
    # differences d are O(sigma), so the estimate agrees to ~1e-4 relative; 2e-3 leaves a
    # margin. The wrong weight (eps1 + eps2 on the new episode's steps) changes it by O(1).
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-3, atol=1e-5)


def _constant(grad, meta_loss, episodes_done, diverged):
    def estimate(theta, state, key, data):
        metrics = {"meta_loss": jnp.float32(meta_loss), "episodes_done": jnp.float32(episodes_done),
                   "diverged": jnp.float32(diverged)}
        return {"w": jnp.asarray(grad, jnp.float32)}, state, metrics

    return Estimator(lambda theta, key, data: (), estimate, unroll_steps=10)


def test_multi_task_averages_gradients_and_sums_counts():
    est = multi_task([_constant([1.0, 2.0], 0.5, 3, 1), _constant([3.0, -6.0], 1.5, 4, 0)])
    theta = {"w": jnp.zeros(2)}
    state = est.init(theta, jax.random.PRNGKey(0), (None, None))
    grad, _, metrics = est.estimate(theta, state, jax.random.PRNGKey(1), (None, None))
    # (1 + 3) / 2 = 2, (2 - 6) / 2 = -2: exact in float32
    np.testing.assert_array_equal(np.asarray(grad["w"]), [2.0, -2.0])
    assert float(metrics["meta_loss"]) == 1.0  # (0.5 + 1.5) / 2
    assert float(metrics["episodes_done"]) == 7.0  # counts add up: 3 + 4
    assert float(metrics["diverged"]) == 1.0
    assert float(metrics["meta_loss/0"]) == 0.5 and float(metrics["meta_loss/1"]) == 1.5
    assert est.unroll_steps == 20
