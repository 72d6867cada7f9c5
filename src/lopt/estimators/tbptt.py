"""Truncated backpropagation through time (TBPTT): the autodiff baseline.

Each particle (unperturbed, independent, step-unlocked) carries its state forward;
every window the gradient of the window's mean loss is taken through the last ``K``
steps only, treating the carried state as a constant:

    g_tau = grad_theta  1/(P K) sum_i sum_{t in tau} L_{i,t}(s_{i,tau-1}, theta)

Cheap and low-variance, but biased: it ignores theta's influence on the state it
starts from (wrong sign on influence balancing for K <= 10).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators.base import Estimator, window_metrics
from lopt.unroll import ParticleState, UnrolledSystem, broadcast_theta, init_particles, unroll


class TBPTTState(NamedTuple):
    particles: ParticleState


def tbptt(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float | None = None,
    *,
    step_unlock: bool = True,
) -> Estimator:
    """TBPTT over ``num_particles`` independent unperturbed particles (``sigma`` unused)."""
    del sigma

    def init(theta, key, data=None) -> TBPTTState:
        return TBPTTState(
            init_particles(system, theta, key, num_particles, data, step_unlock=step_unlock, antithetic=False)
        )

    def estimate(theta, state: TBPTTState, key, data=None):
        del key  # deterministic given the state: the engine's keys come from the particles
        particles = jax.lax.stop_gradient(state.particles)

        def window_loss(theta):
            thetas = broadcast_theta(theta, num_particles)
            new, window = unroll(system, thetas, thetas, particles, trunc_length, data)
            return jnp.mean(window.losses), (new, window)

        grad, (new, window) = jax.grad(window_loss, has_aux=True)(theta)
        return grad, TBPTTState(jax.lax.stop_gradient(new)), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * trunc_length)
