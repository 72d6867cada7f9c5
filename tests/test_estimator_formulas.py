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

from lopt.estimators import gpes, nres, pes, tes
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


def _run(s, t, theta, steps, horizon):
    """NumPy float64: ``steps`` steps from state ``s`` at inner step ``t`` under ``theta``,
    resetting to S0 at the horizon. Returns (state, step, losses)."""
    out = []
    for _ in range(steps):
        if t >= horizon:
            s, t = S0.copy(), 0
        s = A @ s + theta
        out.append(0.5 * np.sum((s - TARGET) ** 2))
        t += 1
    if t >= horizon:  # a reset on the window's last step is installed after it
        s, t = S0.copy(), 0
    return s, t, np.array(out)


def test_tes_windows_match_the_formula_with_the_base_advanced_unperturbed():
    """TES (step-unlocked, T = 7, K = 3, M = 2, six windows, resets inside windows): each
    window's estimate is 1 / (2 M sigma^2 K) sum_m eps_m sum_j (L+_mj - L-_mj), both copies
    run from pair m's *unperturbed* base state, which then advances K steps under theta
    itself. A base advanced under a perturbed theta, or not at all, changes the estimates of
    the later windows by O(1) of their size; the unbiasedness tests see neither (a biased
    base state only moves where TES is evaluated)."""
    sigma, pairs, trunc, horizon = 0.1, 2, 3, 7
    est = tes(LinearQuadratic(horizon), num_particles=2 * pairs, trunc_length=trunc, sigma=sigma, step_unlock=True)
    theta = jnp.asarray(THETA, jnp.float32)
    state = est.init(theta, jax.random.PRNGKey(3))
    base = [(S0.copy(), int(state.base.step[m])) for m in range(pairs)]
    assert len({t for _, t in base}) > 1  # the seed staggers the pairs
    for w in range(6):
        key = jax.random.PRNGKey(100 + w)
        grad, state, _ = est.estimate(theta, state, key)
        eps = np.asarray(sample_noise(key, theta, pairs, sigma), np.float64)
        expected = np.zeros(3)
        for m, (s, t) in enumerate(base):
            delta = _run(s, t, THETA + eps[m], trunc, horizon)[2] - _run(s, t, THETA - eps[m], trunc, horizon)[2]
            expected += eps[m] * delta.sum()
            base[m] = _run(s, t, THETA, trunc, horizon)[:2]
        expected /= 2 * pairs * sigma**2 * trunc
        # float32 vs float64, differences of O(sigma): ~1e-4 relative (see the PES test above)
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-3, atol=1e-5, err_msg=f"window {w}")


def test_gpes_draws_new_noise_every_k_prime_steps_and_at_each_reset():
    """GPES-K' with K = 2 in lockstep: the perturbation changes after exactly every K'/K
    windows (K' = 2: every window, as PES; 4: every second; 6: every third) and when an
    episode ends (T = 12). Every schedule is unbiased and the antithetic checks ignore
    theta, so only this pins K'."""
    trunc, horizon = 2, 12
    windows = horizon // trunc

    def held_after(w, per):
        """Which draw state.noise holds after window w, as (episode, block of K'/K windows):
        the draw window w ran under, or after a reset the next episode's first draw."""
        v = w + 1 if w % windows == windows - 1 else max(w, 0)
        return v // windows, v % windows // per

    theta = jnp.asarray(THETA, jnp.float32)
    for k_prime in (2, 4, 6):
        est = gpes(LinearQuadratic(horizon), num_particles=2, trunc_length=trunc, sigma=0.1,
                   noise_reuse_steps=k_prime, step_unlock=False)
        state = est.init(theta, jax.random.PRNGKey(0))
        changed = []
        for w in range(12):  # 24 steps: two episodes of six windows
            previous = np.asarray(state.noise)
            _, state, _ = est.estimate(theta, state, jax.random.PRNGKey(w + 1))
            changed.append(not np.array_equal(np.asarray(state.noise), previous))
        per = k_prime // trunc
        expected = [held_after(w, per) != held_after(w - 1, per) for w in range(12)]
        assert changed == expected, (k_prime, changed, expected)


def test_loss_difference_clip_applies_to_each_step():
    """``loss_diff_clip`` clips every step's L+ - L- (as the reference codes do), not the
    window's sum: with c at the median |difference| of the window, some steps are clipped
    and some are not. Clipping the window sums instead gives an estimate that differs by
    more than half its size (asserted below, so this test can tell the two apart)."""
    sigma, pairs, trunc, horizon = 0.1, 2, 5, 10
    theta = jnp.asarray(THETA, jnp.float32)
    base = nres(LinearQuadratic(horizon), num_particles=2 * pairs, trunc_length=trunc, sigma=sigma, step_unlock=False)
    state = base.init(theta, jax.random.PRNGKey(0))
    eps = np.asarray(state.noise, np.float64)  # the episode's noise, which window 1 runs under
    delta = np.stack([_run(S0, 0, THETA + e, trunc, horizon)[2] - _run(S0, 0, THETA - e, trunc, horizon)[2]
                      for e in eps])  # [M, K]
    clip = float(np.median(np.abs(delta)))
    scale = 1 / (2 * pairs * sigma**2 * trunc)
    per_step = scale * (eps * np.clip(delta, -clip, clip).sum(1, keepdims=True)).sum(0)
    per_window = scale * (eps * np.clip(delta.sum(1, keepdims=True), -clip, clip)).sum(0)
    assert np.abs(per_step - per_window).max() > 0.5 * np.abs(per_step).max()
    est = nres(LinearQuadratic(horizon), num_particles=2 * pairs, trunc_length=trunc, sigma=sigma,
               step_unlock=False, loss_diff_clip=clip)
    grad, _, _ = est.estimate(theta, est.init(theta, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    # float32 engine vs float64 NumPy on differences of O(sigma) (see the PES test above)
    np.testing.assert_allclose(np.asarray(grad), per_step, rtol=2e-3, atol=1e-5)


def test_pes_and_gpes_restart_their_noise_at_a_divergence_restart():
    """A divergence restart re-initialises a pair's state mid-episode, so the steps after
    it depend only on the perturbation they run under: PES weighs them by that window's
    eps alone (not xi + eps) and restarts xi from it, or from nothing when the restart
    fell on the window's last step; GPES likewise. System: the linear-quadratic one whose
    loss is capped (1e3) at inner step 3 for copies with theta[0] > 0.25, lockstep, so
    pairs drawing |eps[0]| > 0.15 restart after step 3. The window-2 estimate is checked
    against a float64 NumPy simulation of the formula, and told apart from the stale
    weighting (xi + eps on the restarted steps)."""
    from test_estimators import DivergesAboveThreshold

    sigma, pairs, horizon = 0.1, 32, 20
    theta = jnp.asarray(THETA, jnp.float32)
    cap = DivergesAboveThreshold(horizon).loss_cap

    def losses(th_per_step, start_step=0):  # one copy from S0; the cap at step 3 for th[0] > 0.25
        s, out = S0.copy(), []
        for t, th in enumerate(th_per_step, start_step):
            s = A @ s + th
            loss = 0.5 * np.sum((s - TARGET) ** 2)
            out.append(cap if (t == 3 and th[0] > 0.25) else loss)
        return np.array(out)

    # K = 3: window 1 = steps 0-2 under eps1, window 2 = steps 3-5 under eps2, restart after step 3
    est = pes(DivergesAboveThreshold(horizon), num_particles=2 * pairs, trunc_length=3, sigma=sigma, step_unlock=False)
    k1, k2 = jax.random.PRNGKey(21), jax.random.PRNGKey(22)
    state = est.init(theta, jax.random.PRNGKey(0))
    _, state, _ = est.estimate(theta, state, k1)
    grad, state, metrics = est.estimate(theta, state, k2)
    eps1, eps2 = (np.asarray(sample_noise(k, theta, pairs, sigma), np.float64) for k in (k1, k2))
    hit = (np.abs(eps2[:, 0]) > 0.15)
    assert 0 < hit.sum() < pairs and metrics["diverged"] == hit.sum()
    expected, stale = np.zeros(3), np.zeros(3)  # stale: the restarted steps weighted by xi + eps
    for m in range(pairs):
        d = []
        for sign in (1.0, -1.0):
            a, b = THETA + sign * eps1[m], THETA + sign * eps2[m]
            full = losses([a] * 3 + [b] * 3)[3:]
            if hit[m]:  # both copies restart from S0 after step 3; steps 4, 5 under b
                full[1:] = losses([b, b], start_step=4)
            d.append(full)
        delta = d[0] - d[1]
        expected += (eps1[m] + eps2[m]) * delta[0] + (eps2[m] if hit[m] else eps1[m] + eps2[m]) * delta[1:].sum()
        stale += (eps1[m] + eps2[m]) * delta.sum()
    expected /= 2 * pairs * sigma**2 * 3
    stale /= 2 * pairs * sigma**2 * 3
    # The capped step (a loss difference of ~1e3) dominates both, so compare the estimate's
    # distance to each: float32 rounding of the capped losses is ~1e-4 x 0.05 per pair,
    # far below the stale weighting's shift
    shift = np.abs(expected - stale).max()
    assert shift > 1e-3, shift
    assert np.abs(np.asarray(grad) - expected).max() < 0.05 * shift, (np.asarray(grad) - expected, shift)
    acc = np.asarray(state.accumulator)
    np.testing.assert_allclose(acc[hit], eps2[hit], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(acc[~hit], (eps1 + eps2)[~hit], rtol=1e-5, atol=1e-7)

    # K = 2: the restart falls on window 2's last step (3): the state has seen no noise yet
    est = pes(DivergesAboveThreshold(horizon), num_particles=2 * pairs, trunc_length=2, sigma=sigma, step_unlock=False)
    state = est.init(theta, jax.random.PRNGKey(0))
    _, state, _ = est.estimate(theta, state, k1)
    _, state, _ = est.estimate(theta, state, k2)
    acc = np.asarray(state.accumulator)
    assert np.all(acc[hit] == 0) and np.allclose(acc[~hit], (eps1 + eps2)[~hit], rtol=1e-5)

    # GPES, K' = K = 3 (a draw every window): xi restarts from the window's draw
    est = gpes(DivergesAboveThreshold(horizon), num_particles=2 * pairs, trunc_length=3, sigma=sigma,
               noise_reuse_steps=3, step_unlock=False)
    state = est.init(theta, jax.random.PRNGKey(0))
    _, state, _ = est.estimate(theta, state, k1)
    first = np.asarray(state.noise)
    _, state, _ = est.estimate(theta, state, k2)
    noise, xi = np.asarray(state.noise), np.asarray(state.accumulator)
    restarted = np.abs(noise[:, 0]) > 0.15
    assert 0 < restarted.sum() < pairs
    np.testing.assert_array_equal(xi[restarted], noise[restarted])
    np.testing.assert_allclose(xi[~restarted], (first + noise)[~restarted], rtol=1e-6)
    # GPES, K = 2, K' = 6: restarted on window 2's last step, xi restarts empty and window 3
    # draws anew although K' = 6 would keep the episode's first draw: xi = that draw alone
    est = gpes(DivergesAboveThreshold(horizon), num_particles=2 * pairs, trunc_length=2, sigma=sigma,
               noise_reuse_steps=6, step_unlock=False)
    state = est.init(theta, jax.random.PRNGKey(0))
    for w in range(3):
        before = np.asarray(state.noise)
        _, state, _ = est.estimate(theta, state, jax.random.PRNGKey(30 + w))
        if w == 1:
            restarted = np.abs(np.asarray(state.noise)[:, 0]) > 0.15
            assert 0 < restarted.sum() < pairs
            assert np.all(np.asarray(state.accumulator)[restarted] == 0)
    noise, xi = np.asarray(state.noise), np.asarray(state.accumulator)
    np.testing.assert_array_equal(xi[restarted], noise[restarted])
    assert not np.array_equal(noise[restarted], before[restarted])  # a new draw
    np.testing.assert_array_equal(noise[~restarted], before[~restarted])  # K' = 6: the others keep theirs
