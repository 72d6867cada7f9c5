"""Persistent Evolution Strategies (PES; Vicol, Metz & Sohl-Dickstein, ICML 2021).

Each particle keeps its own perturbed inner state. Every window draws fresh antithetic
noise ``eps_tau``, accumulates ``xi <- xi + eps_tau`` and unrolls ``K`` steps under
``theta + eps_tau``. The estimate weights each step's loss by the sum of all noise
that shaped the state it was computed from:

    g_tau = 1 / (P sigma^2) * sum_i sum_j xi_{i,j} L_{i,j} / K

with ``xi_{i,j} = xi_i + eps_i`` for steps of the ongoing episode and ``eps_i`` for
steps after a reset inside the window (the new episode saw only ``eps_i``). ``xi``
restarts at 0 when an episode ends and collects the noise of the steps the new episode
has run: ``eps_i`` when the reset fell inside the window, nothing when it fell on the
window's last step. A divergence restart (:mod:`lopt.unroll`) is treated the same way: the
steps after it carry ``eps_i`` alone, and ``xi`` restarts. As in the paper, this assumes a new episode's initial state does not
depend on theta (true of every lopt system). Unbiased for the gradient of the smoothed
objective; its variance grows with the number of windows per episode.
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


class PESState(NamedTuple):
    particles: ParticleState
    accumulator: Any  # xi of the + copy of each pair, leading axis M


def pes(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float,
    *,
    step_unlock: bool = True,
    loss_diff_clip: float | None = None,
    particle_chunk: int | None = None,
) -> Estimator:
    """PES with ``num_particles`` perturbed copies (``num_particles / 2`` pairs)."""
    num_pairs = num_pairs_of(num_particles)
    scale = es_scale(num_pairs, sigma, trunc_length)

    def init(theta, key, data=None) -> PESState:
        particles = init_particles(
            system, theta, key, num_particles, data, step_unlock=step_unlock
        )
        zeros = jax.tree.map(lambda x: jnp.zeros((num_pairs, *x.shape), x.dtype), theta)
        return PESState(particles, zeros)

    def estimate(theta, state: PESState, key, data=None):
        eps = sample_noise(key, theta, num_pairs, sigma)
        thetas = antithetic(theta, eps)
        particles, window = unroll(system, thetas, thetas, state.particles, trunc_length, data, particle_chunk=particle_chunk, paired=True)
        accumulated = jax.tree.map(jnp.add, state.accumulator, eps)
        grad = window_gradient(accumulated, eps, window, scale, loss_diff_clip, after_restart=eps)
        _, fresh, done = pair_differences(window)
        _, restarted, restarted_at_end = restart_marks(window)
        zeros = jax.tree.map(jnp.zeros_like, eps)
        # the state after the window saw: nothing (a reset or a divergence restart on its last
        # step), only eps (a reset or restart inside it), or every window's noise since the
        # episode began
        accumulator = tree_where(
            restarted_at_end | (done & ~fresh.any(axis=1)),
            zeros,
            tree_where(done | restarted, eps, accumulated),
        )
        return grad, PESState(particles, accumulator), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * trunc_length)
