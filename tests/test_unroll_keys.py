"""The engine's randomness and step-unlocking, checked against their documented definitions.

lopt.unroll documents: the init key of episode ``e`` is ``split(fold_in(k, e))[0]`` and
the key of inner step ``t`` of episode ``e`` is ``fold_in(split(fold_in(k, e))[1], t)``.
The estimator tests use systems that ignore keys or compare only a pair's two copies
(which share every key), so an episode that reused the previous episode's keys, a reset
inside a window that drew the old episode's step keys, or an episode counter that did not
advance on a reset would pass them. Here a system reports, in every step's loss, both its
episode's init draw and its step key's draw; the expected losses are rebuilt outside the
engine from the documented formulas by stepping (episode, step) by hand.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.unroll import init_particles, unroll


@dataclasses.dataclass(frozen=True)
class KeyProbe:
    """State: the episode's init draw u0 in [0, 1); loss of a step: u0 + 2 u(step key)."""

    horizon: int

    def init(self, theta, key, data):
        return jax.random.uniform(key)

    def step(self, theta, s, t, key, data):
        return s, s + 2.0 * jax.random.uniform(key)


def _expected_losses(keys, offsets, horizon, num_steps):
    """Per particle, the losses of ``num_steps`` consecutive steps from (episode 0, offset)."""
    out = np.zeros((len(keys), num_steps))
    for p, (k, t) in enumerate(zip(keys, offsets)):
        e, t = 0, int(t)
        for j in range(num_steps):
            init_key, step_key = jax.random.split(jax.random.fold_in(k, e))
            u0 = jax.random.uniform(init_key)
            out[p, j] = float(u0 + 2.0 * jax.random.uniform(jax.random.fold_in(step_key, t)))
            t += 1
            if t == horizon:
                e, t = e + 1, 0
    return out


@pytest.mark.parametrize(
    "horizon,trunc,step_unlock",
    [
        (5, 3, True),  # staggered: resets inside windows (the general path) and at window ends
        (6, 3, False),  # lockstep, K | T: every window takes the fast path, resets at its last step
    ],
)
def test_every_step_draws_from_its_episode_and_step_key(horizon, trunc, step_unlock):
    system = KeyProbe(horizon)
    theta = jnp.zeros(())
    state = init_particles(system, theta, jax.random.PRNGKey(0), 6, step_unlock=step_unlock, antithetic=False)
    if step_unlock:  # the staggered case must actually hold resets inside windows
        assert len(set(np.asarray(state.step).tolist())) > 1
    thetas = jnp.zeros((6,))
    run = jax.jit(lambda st: unroll(system, thetas, thetas, st, trunc))
    windows = 5  # 15 steps: 2-3 episodes per particle
    expected = _expected_losses(np.asarray(state.key), np.asarray(state.step), horizon, windows * trunc)
    got = []
    for _ in range(windows):
        state, window = run(state)
        got.append(np.asarray(window.losses))
    # The same threefry bits on both sides, so the draws agree exactly; rtol 1e-6 only
    # allows float32 rounding of u0 + 2u. A wrong key gives an unrelated uniform draw
    # (differences of order 0.1-1).
    np.testing.assert_allclose(np.concatenate(got, axis=1), expected, rtol=1e-6)
    assert np.asarray(state.episode).min() >= 2


def test_step_unlock_spreads_pairs_over_the_whole_horizon():
    """step_unlock starts each pair at a uniform step in [0, T): with 400 pairs and T = 10
    every step occurs (a given step is missed with probability 0.9**400 ~ 5e-19) and each
    count is within 5 binomial standard deviations of 40 (sd 6); the two copies of a pair
    share it; without step_unlock every particle starts at 0."""
    system = KeyProbe(10)
    theta = jnp.zeros(())
    state = init_particles(system, theta, jax.random.PRNGKey(3), 800, step_unlock=True)
    steps = np.asarray(state.step)
    np.testing.assert_array_equal(steps[0::2], steps[1::2])
    counts = np.bincount(steps[0::2], minlength=10)
    assert len(counts) == 10, counts
    assert np.all(np.abs(counts - 40) < 5 * 6), counts
    locked = init_particles(system, theta, jax.random.PRNGKey(3), 800, step_unlock=False)
    np.testing.assert_array_equal(np.asarray(locked.step), 0)
