"""Noise-Reuse Evolution Strategies (NRES; Li, Harrison, Sohl-Dickstein, Smith & Metz, NeurIPS 2023).

NRES is the member of the GPES family that draws one perturbation per particle per
episode and reuses it in every window of that episode (ES-Single, Vicol et al. 2023,
is the same estimator). Nothing accumulates:

    g_tau = 1 / (P sigma^2) * sum_i sum_j eps_{i,j} L_{i,j} / K

where ``eps_{i,j}`` is the particle's current-episode noise, or the newly drawn noise
for steps after a reset inside the window. Unbiased, and its variance does not grow
with the number of windows per episode.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from lopt.estimators.base import (
    Estimator,
    antithetic,
    es_scale,
    num_pairs_of,
    sample_noise,
    tree_where,
    window_gradient,
    window_metrics,
)
from lopt.unroll import ParticleState, UnrolledSystem, init_particles, unpair, unroll


class NRESState(NamedTuple):
    particles: ParticleState
    noise: Any  # current-episode eps of the + copy of each pair, leading axis M


def nres(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float,
    *,
    step_unlock: bool = True,
    loss_diff_clip: float | None = None,
    particle_chunk: int | None = None,
) -> Estimator:
    """NRES with ``num_particles`` perturbed copies (``num_particles / 2`` pairs)."""
    num_pairs = num_pairs_of(num_particles)
    scale = es_scale(num_pairs, sigma, trunc_length)

    def init(theta, key, data=None) -> NRESState:
        key_particles, key_noise = jax.random.split(key)
        particles = init_particles(
            system, theta, key_particles, num_particles, data, step_unlock=step_unlock
        )
        return NRESState(particles, sample_noise(key_noise, theta, num_pairs, sigma))

    def estimate(theta, state: NRESState, key, data=None):
        # Noise for episodes that begin inside this window; unused otherwise.
        new_eps = sample_noise(key, theta, num_pairs, sigma)
        particles, window = unroll(
            system,
            antithetic(theta, state.noise),
            antithetic(theta, new_eps),
            state.particles,
            trunc_length,
            data,
            particle_chunk=particle_chunk, paired=True,
        )
        grad = window_gradient(state.noise, new_eps, window, scale, loss_diff_clip)
        noise = tree_where(unpair(window.done)[0], new_eps, state.noise)  # a pair resets together
        return grad, NRESState(particles, noise), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * trunc_length)
