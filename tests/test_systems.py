"""The PES / NRES reference systems: their math, and that they run in the engine."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.estimators import nres
from lopt.tasks.systems import InfluenceBalancing, Lorenz, ToySchedule
from lopt.unroll import broadcast_theta, init_particles, unroll

# --------------------------------------------------------------------------- influence


def test_influence_balancing_step_matches_dense_matrix():
    system = InfluenceBalancing(horizon=10**9)
    theta = jnp.array([0.3])
    s = jax.random.normal(jax.random.PRNGKey(0), (23,))
    new, loss = system.step(theta, s, 0, None, None)
    expected = system.matrix @ s + 0.3 * system.signs
    np.testing.assert_allclose(new, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * (expected[0] - 1.0) ** 2, rtol=1e-6)
    assert float(system.signs.sum()) == 10 - 13
    np.testing.assert_array_equal(system.init(theta, None, None), np.ones(23))


def test_influence_balancing_k_step_sensitivity():
    system = InfluenceBalancing(horizon=10**9)
    assert system.k_step_sensitivity(1) == pytest.approx(1.0, abs=1e-5)
    assert system.k_step_sensitivity(10) == pytest.approx(10.0, abs=1e-4)
    assert system.k_step_sensitivity(100) == pytest.approx(-6.0, abs=1e-3)
    profile = system.k_step_sensitivities(100)
    assert profile.shape == (100,)
    assert profile[[0, 9, 99]] == pytest.approx([1.0, 10.0, -6.0], abs=1e-3)
    assert profile.mean() == pytest.approx(0.58, abs=0.01)  # the README's mean over k = 1..100


def test_influence_balancing_fixed_point():
    system = InfluenceBalancing(horizon=10**9)
    for theta in (0.5, -0.2, 1.0):
        s_star = system.fixed_point(jnp.array([theta]))
        assert float(s_star[0]) == pytest.approx(-6.0 * theta, rel=1e-5)
        # It is a fixed point of the step.
        new, _ = system.step(jnp.array([theta]), s_star, 0, None, None)
        np.testing.assert_allclose(new, s_star, atol=1e-5)
    # theta* = -1/6 drives the long-run loss (the paper's metric) to ~0 from s_0 = 1.
    assert float(system.unroll_loss(jnp.array([-1.0 / 6.0]))) < 1e-8
    assert float(system.unroll_loss(system.initial_theta())) == pytest.approx(8.0, rel=1e-4)


# --------------------------------------------------------------------------- toy schedule


def test_toy_schedule_meta_loss():
    system = ToySchedule()
    f0 = float(system.inner_loss(jnp.array([1.0, 1.0])))
    assert f0 == pytest.approx(
        math.sqrt(6) - math.sqrt(5) + math.sin(1) ** 2 * math.exp(-5) + 24.75
    )
    small = float(system.meta_loss(system.initial_theta()))
    assert small == pytest.approx(f0, rel=0.01)  # exp(-4) barely moves x
    assert small < f0
    larger = float(system.meta_loss(jnp.array([1.0, 1.0])))
    assert np.isfinite(larger) and larger < small - 1.0
    grad = jax.grad(system.meta_loss)(system.initial_theta())
    assert grad.shape == (2,) and np.all(np.isfinite(grad))


def test_toy_schedule_step_and_learning_rate():
    system = ToySchedule(horizon=100)
    theta = jnp.array([math.log(0.1), math.log(0.3)])
    np.testing.assert_allclose(system.learning_rate(theta, 0), 0.1, rtol=1e-6)
    np.testing.assert_allclose(system.learning_rate(theta, 50), 0.2, rtol=1e-6)
    x = jnp.array([1.0, 1.0])
    new, loss = system.step(theta, x, jnp.int32(50), None, None)
    np.testing.assert_allclose(new, x - 0.2 * jax.grad(system.inner_loss)(x), rtol=1e-6)
    np.testing.assert_allclose(loss, system.inner_loss(new), rtol=1e-6)


def _toy_episode_numpy(theta, horizon):
    """Mean loss of one ToySchedule episode in float64 NumPy, gradients written out by hand:
    df/dx0 = x0 / sqrt(x0^2 + 5) - 10 x0 sin(x1)^2 exp(-5 x0^2),
    df/dx1 = 2 sin(x1) cos(x1) exp(-5 x0^2) + 0.25 sign(x1 - 100); lr_t for t = 0 .. T - 1."""
    x0, x1, losses = 1.0, 1.0, []
    for t in range(horizon):
        lr = math.exp(theta[0]) * (1 - t / horizon) + math.exp(theta[1]) * t / horizon
        g0 = x0 / math.sqrt(x0**2 + 5) - 10 * x0 * math.sin(x1) ** 2 * math.exp(-5 * x0**2)
        g1 = 2 * math.sin(x1) * math.cos(x1) * math.exp(-5 * x0**2) + 0.25 * math.copysign(1.0, x1 - 100)
        x0, x1 = x0 - lr * g0, x1 - lr * g1
        losses.append(math.sqrt(x0**2 + 5) - math.sqrt(5) + math.sin(x1) ** 2 * math.exp(-5 * x0**2) + 0.25 * abs(x1 - 100))
    return float(np.mean(losses))


def test_toy_schedule_meta_loss_matches_a_numpy_episode():
    """The episode's steps are t = 0 .. T - 1 (lr from exp(theta0) towards exp(theta1)); with
    T = 10 a schedule shifted by one step moves every rate by a tenth of its range, which
    moves the meta-loss by ~1e-3 relative, against float32 rounding of ~1e-7."""
    system = ToySchedule(horizon=10)
    for theta in ((0.0, math.log(1e-3)), (math.log(0.5), math.log(2.0))):
        got = float(system.meta_loss(jnp.asarray(theta, jnp.float32)))
        assert got == pytest.approx(_toy_episode_numpy(theta, 10), rel=1e-5)


# --------------------------------------------------------------------------- lorenz


def test_lorenz_loss_zero_at_truth_positive_at_paper_init():
    system = Lorenz()
    assert float(system.meta_loss(system.true_theta())) == 0.0
    init_loss = float(system.meta_loss(system.initial_theta()))
    assert np.isfinite(init_loss) and init_loss > 1.0


def test_lorenz_short_horizon_gradient_is_finite():
    system = Lorenz(horizon=200)
    grad = jax.grad(system.meta_loss)(system.initial_theta())
    assert grad.shape == (2,) and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_lorenz_euler_step():
    system = Lorenz()
    state = system.init(system.initial_theta(), None, None)
    new, loss = system.step(system.initial_theta(), state, 0, None, None)
    a, r = math.exp(3.116), math.exp(3.7)
    x, y, z = 1.2, 1.3, 1.6
    expected = [
        x + 0.005 * a * (y - x),
        y + 0.005 * (x * (r - z) - y),
        z + 0.005 * (x * y - 8 / 3 * z),
    ]
    np.testing.assert_allclose(new[0], expected, rtol=1e-5)
    np.testing.assert_allclose(loss, (new[0, 2] - new[1, 2]) ** 2, rtol=1e-6)


def test_lorenz_start_noise_and_overflow_guard():
    noisy = Lorenz(horizon=300, start_noise=1.0)
    s1 = noisy.init(None, jax.random.PRNGKey(1), None)
    s2 = noisy.init(None, jax.random.PRNGKey(2), None)
    assert not np.allclose(s1[0], s2[0])
    np.testing.assert_array_equal(s1[0], s1[1])  # both trajectories share the start
    assert float(noisy.meta_loss(noisy.true_theta(), jax.random.PRNGKey(1))) == 0.0
    with pytest.raises(ValueError):
        noisy.meta_loss(noisy.true_theta())
    # A wildly unstable theta gives a large but finite loss and a finite gradient.
    system = Lorenz(horizon=300)
    for theta in ([8.0, 3.0], [100.0, 100.0], [-100.0, 5.0]):
        loss, grad = jax.value_and_grad(system.meta_loss)(jnp.array(theta))
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        assert float(loss) <= (2 * system.state_bound) ** 2


def test_lorenz_meta_loss_matches_a_numpy_euler_reference():
    """200 Euler steps of both trajectories in float64 NumPy from the paper's start, paper
    init against truth. The trajectories swing to negative x and y, where the overflow
    guard (|coordinate| <= 1000) must not act; float32 stays within ~1e-6 of the float64
    reference over this short (not yet chaotic) stretch."""

    def trajectory(a, r, steps, b=8 / 3, dt=0.005):
        x, y, z, out = 1.2, 1.3, 1.6, []
        for _ in range(steps):
            x, y, z = x + dt * a * (y - x), y + dt * (x * (r - z) - y), z + dt * (x * y - b * z)
            out.append((x, y, z))
        return np.asarray(out)

    learned, true = trajectory(math.exp(3.116), math.exp(3.7), 200), trajectory(10.0, 28.0, 200)
    assert learned[:, :2].min() < -10 and true[:, :2].min() < -8
    expected = np.mean((learned[:, 2] - true[:, 2]) ** 2)  # about 467.4
    system = Lorenz(horizon=200)
    assert float(system.meta_loss(system.initial_theta())) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- engine


SYSTEMS = [
    ("influence", InfluenceBalancing(horizon=10**9), jnp.array([0.5])),
    ("influence_reset", InfluenceBalancing(horizon=15), jnp.array([0.5])),  # every particle resets
    ("toy", ToySchedule(horizon=25), jnp.array([-4.0, -4.0])),
    ("lorenz", Lorenz(horizon=40), jnp.array([3.116, 3.7])),
    ("lorenz_noise", Lorenz(horizon=40, start_noise=1.0), jnp.array([3.116, 3.7])),
]


@pytest.mark.parametrize("name,system,theta", SYSTEMS, ids=[s[0] for s in SYSTEMS])
def test_runs_in_engine(name, system, theta):
    num_particles, num_steps = 6, 15
    state = init_particles(system, theta, jax.random.PRNGKey(0), num_particles, step_unlock=True)
    noise = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (num_particles // 2, *theta.shape))
    thetas = theta + jnp.concatenate([noise, -noise])
    assert broadcast_theta(theta, num_particles).shape == thetas.shape
    run = jax.jit(lambda ta, tb, st: unroll(system, ta, tb, st, num_steps))
    state, window = run(thetas, thetas, state)
    assert window.losses.shape == (num_particles, num_steps)
    assert window.fresh.shape == (num_particles, num_steps)
    assert np.all(np.isfinite(window.losses))
    # The pair's + and - copies differ only through theta.
    assert not np.allclose(window.losses[:3], window.losses[3:])
    state, window = run(thetas, thetas, state)
    assert np.all(np.isfinite(window.losses))
    # a window longer than an episode would need two resets: refused, not silently wrong
    with pytest.raises(ValueError, match="longer than the horizon"):
        unroll(system, thetas, thetas, state, system.horizon + 1)


@pytest.mark.parametrize("name,system,theta", SYSTEMS, ids=[s[0] for s in SYSTEMS])
def test_nres_gradient(name, system, theta):
    est = nres(system, num_particles=4, trunc_length=10, sigma=0.04, step_unlock=True)
    state = est.init(theta, jax.random.PRNGKey(0))
    estimate = jax.jit(est.estimate)
    for i in range(3):
        grad, state, _ = estimate(theta, state, jax.random.PRNGKey(i + 1))
        assert grad.shape == theta.shape
        assert np.all(np.isfinite(grad))


def test_meta_losses_jit_and_vmap():
    toy, lorenz = ToySchedule(horizon=20), Lorenz(horizon=50)
    assert hash(toy) == hash(ToySchedule(horizon=20))  # usable as a static argument
    thetas = jnp.array([[-4.0, -4.0], [0.0, 0.0], [1.0, -1.0]])
    batched = jax.jit(jax.vmap(toy.meta_loss))(thetas)
    np.testing.assert_allclose(batched, [toy.meta_loss(t) for t in thetas], rtol=1e-5)
    thetas = jnp.array([[3.116, 3.7], [math.log(10.0), math.log(28.0)]])
    batched = jax.jit(jax.vmap(lorenz.meta_loss))(thetas)
    np.testing.assert_allclose(batched, [lorenz.meta_loss(t) for t in thetas], rtol=1e-5)
    assert float(batched[1]) == 0.0
