"""Full-episode ES (FullES): antithetic ES over whole episodes from fresh states.

Every estimate starts ``P`` fresh particles at inner step 0 and unrolls the whole
horizon ``T`` under ``theta +- eps``:

    g = 1 / (P sigma^2) sum_i eps_i L_i,     L_i = mean per-step loss of the episode.

Unbiased for the smoothed meta-objective with no truncation at all; each estimate costs
``P T`` steps and one meta-update happens per episode.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators.base import (
    Estimator,
    antithetic,
    es_scale,
    num_pairs_of,
    sample_noise,
    window_gradient,
    window_metrics,
)
from lopt.unroll import UnrolledSystem, init_particles, unroll


class FullESState(NamedTuple):
    episodes: jax.Array  # int32 scalar: estimates made so far (for bookkeeping)


def full_es(
    system: UnrolledSystem,
    num_particles: int,
    sigma: float,
    trunc_length: int | None = None,
    *,
    step_unlock: bool = False,
    loss_diff_clip: float | None = None,
    particle_chunk: int | None = None,
) -> Estimator:
    """FullES; ``trunc_length`` must be ``None`` or the horizon (whole episodes)."""
    horizon = system.horizon
    if trunc_length not in (None, horizon):
        raise ValueError(f"full_es unrolls whole episodes: set trunc_length = horizon ({horizon}), got {trunc_length}")
    del step_unlock  # episodes always start at step 0
    num_pairs = num_pairs_of(num_particles)
    scale = es_scale(num_pairs, sigma, horizon)

    def init(theta, key, data=None) -> FullESState:
        return FullESState(jnp.zeros([], jnp.int32))

    def estimate(theta, state: FullESState, key, data=None):
        key_particles, key_noise = jax.random.split(key)
        particles = init_particles(system, theta, key_particles, num_particles, data)
        eps = sample_noise(key_noise, theta, num_pairs, sigma)
        thetas = antithetic(theta, eps)
        _, window = unroll(system, thetas, thetas, particles, horizon, data, particle_chunk=particle_chunk, paired=True)
        grad = window_gradient(eps, eps, window, scale, loss_diff_clip)
        return grad, FullESState(state.episodes + 1), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * horizon)
