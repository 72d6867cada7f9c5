"""GPES-K': the NRES paper's general class of online ES estimators.

A particle draws a new perturbation every ``noise_reuse_steps`` (K') inner steps and at
every episode start, and keeps ``xi``, the sum of the distinct perturbations drawn so far
in its episode. The loss of a step is weighted by the ``xi`` of the state it came from:

    g_tau = 1 / (P sigma^2) sum_i sum_j xi_{i,j} L_{i,j} / K

K' = K draws anew every window like PES (identical in distribution while episodes end
on window boundaries; after a reset inside a window the new episode keeps its first
draw until K steps have run under it); K' >= T gives NRES (one draw per episode; with
episodes of random length, ``meta_train.min_horizon``, K' >= the longest, ``horizon``).
K' must be a multiple of K so draws happen at window starts; a reset inside a window
starts the new episode with its own fresh draw (weights switch to it via the engine's
fresh mask). After a divergence restart (:mod:`lopt.unroll`) the steps carry the current
draw alone and ``xi`` restarts from it (or, restarted on a window's last step, from the
next window's new draw).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators.base import (
    Estimator,
    antithetic,
    es_scale,
    num_pairs_of,
    pair_differences,
    restart_marks,
    sample_noise,
    tree_where,
    window_gradient,
    window_metrics,
)
from lopt.unroll import ParticleState, UnrolledSystem, init_particles, unroll


class GPESState(NamedTuple):
    particles: ParticleState
    noise: Any  # current perturbation of the + copy of each pair, leading axis M
    accumulator: Any  # xi: sum of this episode's distinct perturbations (incl. current)
    since_draw: jax.Array  # int32[M]: inner steps run under the current perturbation


def gpes(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float,
    noise_reuse_steps: int | None = None,
    *,
    step_unlock: bool = True,
    loss_diff_clip: float | None = None,
    particle_chunk: int | None = None,
) -> Estimator:
    """GPES with a fresh perturbation every ``noise_reuse_steps`` (default: never, i.e. NRES)."""
    if noise_reuse_steps is None:
        reuse = jnp.iinfo(jnp.int32).max  # never within an episode: NRES
    elif noise_reuse_steps % trunc_length:
        raise ValueError(
            f"noise_reuse_steps ({noise_reuse_steps}) must be a multiple of trunc_length ({trunc_length})"
        )
    else:
        reuse = noise_reuse_steps
    num_pairs = num_pairs_of(num_particles)
    scale = es_scale(num_pairs, sigma, trunc_length)

    def init(theta, key, data=None) -> GPESState:
        key_particles, key_noise = jax.random.split(key)
        particles = init_particles(system, theta, key_particles, num_particles, data, step_unlock=step_unlock)
        eps = sample_noise(key_noise, theta, num_pairs, sigma)
        return GPESState(particles, eps, eps, jnp.zeros((num_pairs,), jnp.int32))

    def estimate(theta, state: GPESState, key, data=None):
        key_draw, key_reset = jax.random.split(key)
        drawn = sample_noise(key_draw, theta, num_pairs, sigma)
        reset_eps = sample_noise(key_reset, theta, num_pairs, sigma)
        redraw = state.since_draw >= reuse
        noise = tree_where(redraw, drawn, state.noise)
        xi = tree_where(redraw, jax.tree.map(jnp.add, state.accumulator, drawn), state.accumulator)
        particles, window = unroll(
            system, antithetic(theta, noise), antithetic(theta, reset_eps), state.particles, trunc_length, data,
            particle_chunk=particle_chunk, paired=True,
        )
        grad = window_gradient(xi, reset_eps, window, scale, loss_diff_clip, after_restart=noise)
        _, fresh, done = pair_differences(window)
        _, restarted, restarted_at_end = restart_marks(window)
        since = jnp.minimum(jnp.where(redraw, 0, state.since_draw), reuse - trunc_length) + trunc_length
        since = jnp.where(done, fresh.sum(axis=1).astype(jnp.int32), since)
        xi_next = tree_where(done, reset_eps, tree_where(restarted, noise, xi))
        # a divergence restart on the last step leaves a state no perturbation has touched:
        # xi restarts empty and the next window draws anew (xi = its draw), as at an episode start
        after_end = restarted_at_end & ~(done & ~fresh.any(axis=1))  # a reset on the last step covers it already
        new_state = GPESState(
            particles,
            tree_where(done, reset_eps, noise),
            tree_where(after_end, jax.tree.map(jnp.zeros_like, xi), xi_next),
            jnp.where(after_end, reuse, since).astype(jnp.int32),
        )
        return grad, new_state, window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * trunc_length)
