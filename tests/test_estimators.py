"""Unbiasedness of PES and NRES against the exact gradient of a linear-quadratic unroll.

System: s_{t+1} = A s_t + theta, per-step loss 0.5 ||s_{t+1} - c||^2, s_0 fixed, horizon
T. The meta-objective (mean per-step loss over an episode) is quadratic in theta, and
in the per-window perturbed parameters, so its Gaussian smoothing only adds a
constant: the smoothed gradient equals the plain gradient, which autodiff gives
exactly.

Protocol: particles start locked at step 0; we run W windows of K steps without
updating theta, covering whole episodes (T*E = K*W, windows may straddle a reset), and
scale the sum of window estimates by K / (T*E). Averaged over many seeds this must lie
within 3 standard errors of the exact gradient per component (a false alarm has
probability ~0.3% per component for a correct estimator; seeds are fixed, so the test
is deterministic). A negative control (PES without its accumulator, i.e. biased
truncated ES with persistent states) must fail the same check.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.estimators import full_es, gpes, nres, pes, tbptt, tes
from lopt.tasks.systems import InfluenceBalancing
from lopt.unroll import init_particles, unpair, unroll

jax.config.update("jax_enable_x64", False)

A = jnp.array([[0.9, 0.2, 0.0], [0.0, 0.8, 0.3], [-0.1, 0.0, 0.7]])
TARGET = jnp.array([0.5, -0.3, 0.2])
S0 = jnp.array([1.0, 1.0, -1.0])
THETA = jnp.array([0.1, -0.2, 0.3])


@dataclasses.dataclass(frozen=True)
class LinearQuadratic:
    horizon: int

    def init(self, theta, key, data):
        return S0

    def step(self, theta, s, t, key, data):
        s = A @ s + theta
        return s, 0.5 * jnp.sum((s - TARGET) ** 2)


def exact_grad(horizon: int) -> np.ndarray:
    def objective(theta):
        def body(s, _):
            s = A @ s + theta
            return s, 0.5 * jnp.sum((s - TARGET) ** 2)

        _, losses = jax.lax.scan(body, S0, None, length=horizon)
        return jnp.mean(losses)

    return np.asarray(jax.grad(objective)(THETA))


def sample_estimates(factory, horizon, trunc, episodes, num_seeds, sigma=0.1, pairs=2, drop_accumulator=False):
    system = LinearQuadratic(horizon)
    est = factory(system, num_particles=2 * pairs, trunc_length=trunc, sigma=sigma, step_unlock=False)
    num_windows = horizon * episodes // trunc
    assert num_windows * trunc == horizon * episodes

    def one_seed(key):
        state = est.init(THETA, jax.random.fold_in(key, 0))

        def body(state, i):
            if drop_accumulator:
                state = state._replace(accumulator=jax.tree.map(jnp.zeros_like, state.accumulator))
            g, state, _ = est.estimate(THETA, state, jax.random.fold_in(key, i + 1))
            return state, g

        _, gs = jax.lax.scan(body, state, jnp.arange(num_windows))
        return gs.sum(0) * trunc / (horizon * episodes)

    keys = jax.random.split(jax.random.PRNGKey(1234), num_seeds)
    return np.asarray(jax.jit(jax.vmap(one_seed))(keys))


CASES = [
    # (horizon T, trunc K, episodes): K | T, K = 1, and windows straddling resets (T % K != 0)
    (20, 5, 1),
    (12, 1, 1),
    (10, 4, 2),
    (9, 9, 2),
]


UNBIASED = [
    ("pes", pes),
    ("nres", nres),
    ("gpes_nres", gpes),
    ("gpes_2k", 2),  # K' = 2K, built per case
    ("gpes_k", 1),  # K' = K: PES's redraw schedule
]


def _factory(factory, trunc):
    return functools.partial(gpes, noise_reuse_steps=factory * trunc) if isinstance(factory, int) else factory


@pytest.mark.parametrize("name,factory", UNBIASED, ids=[n for n, _ in UNBIASED])
@pytest.mark.parametrize("horizon,trunc,episodes", CASES)
def test_unbiased(name, factory, horizon, trunc, episodes):
    factory = _factory(factory, trunc)
    samples = sample_estimates(factory, horizon, trunc, episodes, num_seeds=4000)
    mean = samples.mean(0)
    sem = samples.std(0, ddof=1) / np.sqrt(len(samples))
    exact = exact_grad(horizon)
    z = (mean - exact) / sem
    assert np.all(np.abs(z) < 3.0), f"{name} T={horizon} K={trunc}: mean {mean}, exact {exact}, z {z}"
    # The check has power: the standard error is small relative to the gradient.
    assert np.all(sem < 0.1 * np.abs(exact) + 1e-3)


@dataclasses.dataclass(frozen=True)
class AgedLinearQuadratic(LinearQuadratic):
    """LinearQuadratic that also counts its episode's steps, so the exact gradient each
    step-unlocked particle's window targets is known from its state."""

    def init(self, theta, key, data):
        return S0, jnp.zeros((), jnp.int32)

    def step(self, theta, inner, t, key, data):
        s, age = inner
        s, loss = super().step(theta, s, t, key, data)
        return (s, age + 1), loss


def _step_unlocked_z(factory, horizon, trunc, windows=12, pairs=2, num_seeds=3000):
    """``(z, sem, target)``: z-scores of (estimate - exact target) per component for
    step-unlocked particles, their standard error, and the mean target.

    A step-unlocked particle's first episode starts mid-way from fresh state, so each
    window targets the mean of the exact per-step gradients ``dL_a / dtheta`` at its
    particles' episode ages ``a`` (known from :class:`AgedLinearQuadratic`'s state)."""
    system = AgedLinearQuadratic(horizon)

    def per_step(theta):
        def body(s, _):
            s = A @ s + theta
            return s, 0.5 * jnp.sum((s - TARGET) ** 2)

        return jax.lax.scan(body, S0, None, length=horizon)[1]

    step_grads = jax.jacobian(per_step)(THETA)  # [T, 3]: dL_a / dtheta
    est = factory(system, num_particles=2 * pairs, trunc_length=trunc, sigma=0.1, step_unlock=True)

    def one_seed(key):
        state = est.init(THETA, jax.random.fold_in(key, 0))

        def body(state, i):
            if hasattr(state, "base"):  # TES: one base particle per pair
                age0, t0 = state.base.inner[1], state.base.step
            else:  # the + copy of each pair
                age0, t0 = unpair(state.particles.inner[1])[0], unpair(state.particles.step)[0]
            t = t0[:, None] + jnp.arange(trunc)
            age = jnp.where(t < horizon, age0[:, None] + jnp.arange(trunc), t - horizon)
            g, state, _ = est.estimate(THETA, state, jax.random.fold_in(key, i + 1))
            target = step_grads[age].mean(axis=(0, 1))
            return state, (g - target, target)

        diff, target = jax.lax.scan(body, state, jnp.arange(windows))[1]
        return diff.mean(0), target.mean(0)

    keys = jax.random.split(jax.random.PRNGKey(99), num_seeds)
    d, target = (np.asarray(x) for x in jax.jit(jax.vmap(one_seed))(keys))
    sem = d.std(0, ddof=1) / np.sqrt(num_seeds)
    return d.mean(0) / sem, sem, target.mean(0)


@pytest.mark.parametrize("name,factory", UNBIASED, ids=[n for n, _ in UNBIASED])
@pytest.mark.parametrize("horizon,trunc", [(10, 4), (7, 3)])
def test_unbiased_step_unlocked(name, factory, horizon, trunc):
    """Step-unlocked pairs reset at different steps, so a bug that resets PES's ``xi`` or
    the noise for every pair when *any* pair resets (invisible in lockstep) biases the
    estimate: it must average to the exact target within 3 standard errors (seeds fixed;
    false-alarm rate ~0.3 % per component)."""
    z, sem, target = _step_unlocked_z(_factory(factory, trunc), horizon, trunc)
    assert np.all(np.abs(z) < 3.0), (name, z)
    # The check has power: on the largest component (measured sem 0.7-0.8 % of it), an
    # estimate scaled by a wrong factor 1 +- 6 % would sit at |z| > 3.
    i = np.argmax(np.abs(target))
    assert sem[i] < 0.02 * np.abs(target[i]), (name, sem, target)


def test_tes_step_unlocked_is_biased():
    """Negative control for the check above: truncated ES fails it by far (measured
    |z| of 16-110 per component)."""
    z = _step_unlocked_z(tes, 10, 4)[0]
    assert np.max(np.abs(z)) > 10.0, z


@pytest.mark.parametrize("horizon", [9, 20])
def test_full_es_unbiased(horizon):
    samples = sample_estimates(full_es, horizon, horizon, 1, num_seeds=4000)
    mean = samples.mean(0)
    sem = samples.std(0, ddof=1) / np.sqrt(len(samples))
    z = (mean - exact_grad(horizon)) / sem
    assert np.all(np.abs(z) < 3.0), z


def test_gpes_with_k_prime_equal_k_is_pes_in_distribution():
    """K' = K redraws every window like PES: same mean and same variance.

    Two episodes in lockstep with K | T, so the first episode ends on a window's last
    step: PES must then restart ``xi`` at 0 (the new episode has run under no noise
    yet), as GPES's fresh draw does. Tolerances from the samples themselves: the means
    within 4 standard errors of their difference; the variances within 4 standard errors
    of their log-ratio, using each sample's measured kurtosis (these estimates are
    heavy-tailed, kurtosis 4-7, so the Gaussian 2/(n-1) would understate the error).
    """
    n = 16000
    a = sample_estimates(pes, 20, 5, 2, num_seeds=n)
    b = sample_estimates(functools.partial(gpes, noise_reuse_steps=5), 20, 5, 2, num_seeds=n)
    se_mean = np.sqrt(a.var(0, ddof=1) / n + b.var(0, ddof=1) / n)
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se_mean), (a.mean(0), b.mean(0), se_mean)

    def rel_se_var(x):  # s.e. of log(sample variance): sqrt((kurtosis - 1) / n)
        c = x - x.mean(0)
        return np.sqrt(((c**4).mean(0) / (c**2).mean(0) ** 2 - 1) / len(x))

    log_ratio = np.log(a.var(0) / b.var(0))
    assert np.all(np.abs(log_ratio) < 4 * np.hypot(rel_se_var(a), rel_se_var(b))), log_ratio
    # the check has power: a 15 % variance difference would be caught
    assert np.all(4 * np.hypot(rel_se_var(a), rel_se_var(b)) < 0.15)


def test_pes_restarts_xi_at_each_episode():
    """xi after a window = the noise the current episode has run under, 0 after a reset on
    the window's last step (Vicol et al.: reset state and xi when the episode ends)."""
    system = LinearQuadratic(6)
    est = pes(system, num_particles=4, trunc_length=3, sigma=0.1, step_unlock=False)
    state = est.init(THETA, jax.random.PRNGKey(0))
    for i in range(2):  # windows ending at t = 3 and t = 6 = T (a reset on the last step)
        _, state, _ = est.estimate(THETA, state, jax.random.PRNGKey(i + 1))
    np.testing.assert_array_equal(state.accumulator, 0.0)
    # a reset inside the window: the new episode ran its first steps under this eps
    est = pes(system, num_particles=4, trunc_length=4, sigma=0.1, step_unlock=False)
    state = est.init(THETA, jax.random.PRNGKey(0))
    _, state, _ = est.estimate(THETA, state, jax.random.PRNGKey(1))  # t = 4
    _, state, _ = est.estimate(THETA, state, jax.random.PRNGKey(2))  # reset at 6, t = 2
    eps = jax.random.normal(jax.random.split(jax.random.PRNGKey(2), 1)[0], (2, 3)) * 0.1
    np.testing.assert_allclose(state.accumulator, eps, rtol=1e-6)


def test_biased_control_is_rejected():
    """Truncated ES with persistent states (PES without xi) is biased here; the test sees it."""
    samples = sample_estimates(pes, 20, 2, 1, num_seeds=4000, drop_accumulator=True)
    mean = samples.mean(0)
    sem = samples.std(0, ddof=1) / np.sqrt(len(samples))
    z = (mean - exact_grad(20)) / sem
    assert np.max(np.abs(z)) > 10.0


def test_antithetic_pairs_share_keys_and_resets():
    system = LinearQuadratic(7)
    state = init_particles(system, THETA, jax.random.PRNGKey(0), 6, step_unlock=True)
    # particles 2m and 2m + 1 are pair m: same key, same start offset; pairs differ
    np.testing.assert_array_equal(state.key[0::2], state.key[1::2])
    np.testing.assert_array_equal(state.step[0::2], state.step[1::2])
    assert len({tuple(np.asarray(k)) for k in state.key[0::2]}) == 3
    assert np.all((state.step >= 0) & (state.step < 7))
    thetas = jnp.broadcast_to(THETA, (6, 3))
    new, window = unroll(system, thetas, thetas, state, 7)
    # every particle crosses exactly one reset within a window of length T
    assert window.done.all()
    np.testing.assert_array_equal(new.step, state.step)
    np.testing.assert_array_equal(new.episode, np.ones(6))
    # fresh marks exactly the steps after the reset
    expected_fresh = np.arange(7)[None, :] >= (7 - np.asarray(state.step))[:, None]
    np.testing.assert_array_equal(window.fresh, expected_fresh)


@dataclasses.dataclass(frozen=True)
class NoisyIndependentOfTheta:
    """A stochastic system whose state and loss depend on the step's key but not on theta."""

    horizon: int

    def init(self, theta, key, data):
        return jax.random.normal(key, (2,))

    def step(self, theta, s, t, key, data):
        s = 0.5 * s + jax.random.normal(key, (2,))
        return s, jnp.sum(s**2)


ES_ESTIMATORS = [("pes", pes), ("nres", nres), ("gpes_2k", functools.partial(gpes, noise_reuse_steps=6)), ("tes", tes)]


@pytest.mark.parametrize("name,factory", ES_ESTIMATORS, ids=[n for n, _ in ES_ESTIMATORS])
def test_antithetic_copies_share_keys_data_and_resets_in_every_window(name, factory):
    """The + and - copies of a pair must see the same keys, initial state and reset steps in
    every window, resets inside windows included (step-unlocked, T = 7, K = 3): on a
    system whose loss ignores theta, each pair's loss difference, and so every estimate, is
    then exactly 0. Any desynchronised draw gives a non-zero difference (the unbiasedness
    tests cannot see one: their systems ignore keys)."""
    system = NoisyIndependentOfTheta(7)
    theta = jnp.zeros(2)
    est = factory(system, num_particles=8, trunc_length=3, sigma=0.1, step_unlock=True)
    state = est.init(theta, jax.random.PRNGKey(0))
    estimate = jax.jit(est.estimate)
    for i in range(15):  # 45 steps: every pair resets several times, mostly mid-window
        g, state, metrics = estimate(theta, state, jax.random.PRNGKey(i + 1))
        assert float(metrics["meta_loss"]) > 0.1  # the copies do see a random loss
        np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=f"{name}, window {i}")
    full = full_es(system, num_particles=8, sigma=0.1)
    g, _, _ = full.estimate(theta, full.init(theta, None), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


def _influence_estimates(factory, trunc, windows, seeds, num_particles=2):
    """Window estimates on influence balancing at theta = 0.5, starting at the fixed point."""
    system = InfluenceBalancing(horizon=10**9)  # the paper never resets
    theta = jnp.array([0.5])
    fixed = system.fixed_point(theta)
    est = factory(system, num_particles=num_particles, trunc_length=trunc, sigma=0.1, step_unlock=False)

    def one(key):
        state = est.init(theta, key)
        field = "base" if hasattr(state, "base") else "particles"
        particles = getattr(state, field)
        particles = particles._replace(inner=jnp.broadcast_to(fixed, particles.inner.shape))
        state = state._replace(**{field: particles})

        def body(state, i):
            g, state, _ = est.estimate(theta, state, jax.random.fold_in(key, i))
            return state, g

        return jax.lax.scan(body, state, jnp.arange(windows))[1]

    keys = jax.random.split(jax.random.PRNGKey(7), seeds)
    return np.asarray(jax.jit(jax.vmap(one))(keys))[..., 0]


def test_truncation_bias_points_the_wrong_way_on_influence_balancing():
    """PES paper, influence balancing: at theta = 0.5 the long-run gradient is +24
    (loss 0.5 (s0 - 1)^2 at the fixed point s0 = -6 theta: (s0 - 1) * -6), so descent
    lowers theta towards theta* = -1/6. TBPTT and TES with K = 1 and 10 see only the
    positive short-horizon sensitivity (+1, +10) and estimate a negative gradient;
    PES and NRES, averaged over a long run of windows, recover the positive sign.
    """
    exact = (-6 * 0.5 - 1) * -6
    assert exact == 24
    for trunc in (1, 10):
        g_tbptt = _influence_estimates(tbptt, trunc, 1, 1, num_particles=1)
        assert g_tbptt.mean() < 0, (trunc, g_tbptt.mean())
        g_tes = _influence_estimates(tes, trunc, 1, 2000)
        sem = g_tes.std() / np.sqrt(g_tes.size)
        assert g_tes.mean() + 5 * sem < 0, (trunc, g_tes.mean(), sem)
    for factory in (pes, nres):
        # windows 200..400 after the start: PES's accumulator has long forgotten its zero init
        g = _influence_estimates(factory, 1, 400, 500)[:, 200:].mean(axis=1)
        sem = g.std() / np.sqrt(g.size)
        assert g.mean() - 5 * sem > 0
        # From window 200 on the state sits at its fixed point and the t-step sensitivity
        # equals its limit -6 to float precision, so +24 is the exact per-window gradient
        # and 4 s.e. over 500 independent seeds is the whole tolerance (false alarm 6e-5;
        # measured: PES 23.7 +- 2.8, NRES 25.0 +- 1.5)
        assert abs(g.mean() - exact) < 4 * sem, (factory, g.mean(), sem)


def test_loss_difference_clipping_bounds_the_estimate_and_is_off_by_default():
    """With clip c every |delta| <= c, so |g| <= c * sum_m |w_m| / (2 M sigma^2); a clip
    far above every difference reproduces the unclipped estimate exactly."""
    system = LinearQuadratic(10)
    key = jax.random.PRNGKey(3)
    grads = {}
    for clip in (None, 1e9, 1e-4):
        est = nres(system, num_particles=4, trunc_length=5, sigma=0.1, step_unlock=False, loss_diff_clip=clip)
        state = est.init(THETA, key)
        grads[clip], _, _ = est.estimate(THETA, state, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(grads[None], grads[1e9])
    bound = 1e-4 * np.abs(np.asarray(state.noise)).sum(0) / (2 * 2 * 0.1**2)
    assert np.all(np.abs(np.asarray(grads[1e-4])) <= bound + 1e-9)
    assert np.all(np.abs(np.asarray(grads[None])) > bound)


@dataclasses.dataclass(frozen=True)
class BlowsUp(LinearQuadratic):
    """LinearQuadratic whose loss is inf at step 3 for particles drawn to blow up."""

    loss_cap: float = 1e6

    def init(self, theta, key, data):
        return S0, jax.random.uniform(key) < 0.3

    def step(self, theta, inner, t, key, data):
        s, blow = inner
        s, loss = super().step(theta, s, t, key, data)
        return (s, blow), loss * jnp.where(blow & (t == 3), jnp.inf, 1.0)


@dataclasses.dataclass(frozen=True)
class StateBlowsUp(LinearQuadratic):
    """No ``loss_cap``; the *state* of particles drawn to blow up turns inf at step 3."""

    def init(self, theta, key, data):
        return S0, jax.random.uniform(key) < 0.3

    def step(self, theta, inner, t, key, data):
        s, blow = inner
        s = jnp.where(blow & (t == 3), jnp.inf, s)
        s, loss = super().step(theta, s, t, key, data)
        return (s, blow & (t != 3)), loss


def test_uncapped_divergence_restarts_the_particle():
    """Without a cap non-finite steps are flagged and that window's estimate is non-finite
    (skipped), but a particle whose window ends non-finite restarts after it: the next
    windows are finite again instead of NaN until the episode ends."""
    system = StateBlowsUp(20)
    state = init_particles(system, THETA, jax.random.PRNGKey(0), 8, antithetic=False)
    blown = np.asarray(state.inner[1])
    assert 0 < blown.sum() < 8, blown
    thetas = jnp.broadcast_to(THETA, (8, 3))
    state, first = unroll(system, thetas, thetas, state, 5)
    losses = np.asarray(first.losses)
    np.testing.assert_array_equal(~np.isfinite(losses), blown[:, None] & (np.arange(5) >= 3))
    np.testing.assert_array_equal(np.asarray(first.diverged), ~np.isfinite(losses))
    state, second = unroll(system, thetas, thetas, state, 5)
    assert np.isfinite(np.asarray(second.losses)).all()
    assert not np.asarray(second.diverged).any()
    # a window ending exactly at the horizon resets there: the fresh episode is kept
    late = StateBlowsUp(8)
    st = init_particles(late, THETA, jax.random.PRNGKey(0), 8, antithetic=False)
    st, w = unroll(late, thetas, thetas, st, 8)  # steps 0-7, blow-up at 3, reset at the end
    assert np.asarray(w.done).all() and np.isfinite(np.asarray(st.inner[0])).all()


def test_tbptt_leaves_out_diverged_particles_instead_of_losing_the_step():
    """One particle's inf loss must not turn the whole TBPTT gradient into NaN (0 x inf in
    its backward pass): the estimate is the mean over the other particles, here exactly
    the gradient without the blow-up, since every particle follows the same deterministic
    trajectory."""
    est = tbptt(BlowsUp(10), num_particles=8, trunc_length=5, step_unlock=False)
    state = est.init(THETA, jax.random.PRNGKey(0))
    blown = int(state.particles.inner[1].sum())
    assert 0 < blown < 8, blown  # the seed draws some of each
    grad, _, metrics = est.estimate(THETA, state, None)
    assert metrics["diverged"] == blown
    calm = tbptt(LinearQuadratic(10), num_particles=8, trunc_length=5, step_unlock=False)
    expected, _, _ = calm.estimate(THETA, calm.init(THETA, jax.random.PRNGKey(0)), None)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    # every particle diverged: a NaN gradient, which the outer optimizer skips
    everyone = state._replace(particles=state.particles._replace(inner=(state.particles.inner[0], jnp.ones(8, bool))))
    grad, _, _ = est.estimate(THETA, everyone, None)
    assert np.all(np.isnan(grad))


@dataclasses.dataclass(frozen=True)
class DivergesAboveThreshold(LinearQuadratic):
    """LinearQuadratic whose loss is inf at step 3 for copies with theta[0] > 0.25: with
    theta[0] = 0.1 and sigma = 0.1 the + copy diverges alone in some pairs."""

    loss_cap: float = 1e3

    def step(self, theta, s, t, key, data):
        s, loss = super().step(theta, s, t, key, data)
        return s, jnp.where((theta[0] > 0.25) & (t == 3), jnp.inf, loss)


@pytest.mark.parametrize("chunk", [None, 1], ids=["all", "chunked"])
def test_divergence_restarts_both_copies_of_a_pair(chunk):
    """When one copy of an antithetic pair diverges, the engine restarts both (same init key),
    so the pair stays antithetic: after a restart at step 3 and one more step (4) under
    theta +- eps, s+ - s- = 2 eps exactly (s' = A s + theta from the same s). Restarting
    only the diverged copy leaves s+ - s- of order one, and every later loss difference of
    that pair O(1) instead of O(sigma). Pairs that did not diverge keep their five-step
    difference, sum_k A^k 2 eps."""
    from lopt.estimators.base import antithetic, sample_noise

    pairs, sigma = 64, 0.1
    system = DivergesAboveThreshold(20)
    state = init_particles(system, THETA, jax.random.PRNGKey(0), 2 * pairs)
    eps = sample_noise(jax.random.PRNGKey(1), THETA, pairs, sigma)
    thetas = antithetic(THETA, eps)
    state, window = unroll(system, thetas, thetas, state, 5, particle_chunk=chunk, paired=True)
    plus, minus = (np.asarray(x) for x in unpair(state.inner))
    div_plus, div_minus = (np.asarray(x).any(axis=1) for x in unpair(window.diverged))
    hit, alone = div_plus | div_minus, div_plus ^ div_minus
    assert 0 < alone.sum() and hit.sum() < pairs, (alone.sum(), hit.sum())
    e = np.asarray(eps)
    np.testing.assert_allclose(plus[hit] - minus[hit], 2 * e[hit], rtol=1e-4, atol=1e-6)
    spread = sum(np.linalg.matrix_power(np.asarray(A), k) for k in range(5))
    np.testing.assert_allclose(plus[~hit] - minus[~hit], 2 * e[~hit] @ spread.T, rtol=1e-4, atol=1e-6)
    # a diverged copy reports the cap; its partner its own loss
    losses = np.stack([np.asarray(x)[:, 3] for x in unpair(window.losses)], 1)  # [M, 2] at step 3
    diverged = np.stack([div_plus, div_minus], 1)
    assert (losses[diverged] == 1e3).all() and (losses[~diverged] < 10).all()


def test_uncapped_divergence_restarts_both_copies_of_a_pair():
    """Without a cap, a pair whose window ends non-finite in one copy restarts in both."""
    system = StateBlowsUp(20)
    state = init_particles(system, THETA, jax.random.PRNGKey(0), 16)
    blown = np.asarray(unpair(state.inner[1])[0])
    assert 0 < blown.sum() < 8
    # only the + copies carry the blow-up flag
    state = state._replace(inner=(state.inner[0], jnp.asarray(np.stack([blown, np.zeros(8, bool)], 1).reshape(16))))
    thetas = jnp.broadcast_to(THETA, (16, 3))
    state, _ = unroll(system, thetas, thetas, state, 5, paired=True)
    plus, minus = (np.asarray(x) for x in unpair(state.inner[0]))
    assert np.isfinite(plus).all()
    np.testing.assert_array_equal(plus, minus)  # same theta, same restart key: the same state
