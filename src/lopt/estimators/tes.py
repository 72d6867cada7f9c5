"""Truncated ES (TES): ES over one window from a shared unperturbed state.

Each antithetic pair starts every window from its own *unperturbed* base state (the
state reached under ``theta``), unrolls ``K`` steps under ``theta +- eps`` with fresh
noise, and the base state is then advanced ``K`` steps under ``theta``:

    g_tau = 1 / (P sigma^2) sum_i eps_i L_tau^(i)

Biased: it ignores how ``theta`` shaped the state the window starts from (the same
truncation bias as TBPTT, with ES noise). Costs 1.5x PES per window (the base advance).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from lopt.estimators.base import (
    Estimator,
    antithetic,
    es_scale,
    num_pairs_of,
    sample_noise,
    window_gradient,
    window_metrics,
)
from lopt.unroll import (
    ParticleState,
    UnrolledSystem,
    broadcast_theta,
    init_particles,
    pair_up,
    unroll,
)


class TESState(NamedTuple):
    base: ParticleState  # M unperturbed particles, one per antithetic pair


def tes(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float,
    *,
    step_unlock: bool = True,
    loss_diff_clip: float | None = None,
    particle_chunk: int | None = None,
) -> Estimator:
    """TES with ``num_particles`` perturbed copies (``num_particles / 2`` pairs)."""
    num_pairs = num_pairs_of(num_particles)
    scale = es_scale(num_pairs, sigma, trunc_length)

    def init(theta, key, data=None) -> TESState:
        return TESState(
            init_particles(system, theta, key, num_pairs, data, step_unlock=step_unlock, antithetic=False)
        )

    def estimate(theta, state: TESState, key, data=None):
        eps = sample_noise(key, theta, num_pairs, sigma)
        thetas = antithetic(theta, eps)
        # + and - copies of pair m start from base particle m (same key, same data)
        pairs = jax.tree.map(lambda x: pair_up(x, x), state.base)
        _, window = unroll(system, thetas, thetas, pairs, trunc_length, data, particle_chunk=particle_chunk, paired=True)
        grad = window_gradient(eps, eps, window, scale, loss_diff_clip)
        plain = broadcast_theta(theta, num_pairs)
        base, _ = unroll(system, plain, plain, state.base, trunc_length, data, particle_chunk=particle_chunk)
        return grad, TESState(base), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=(num_particles + num_pairs) * trunc_length)
