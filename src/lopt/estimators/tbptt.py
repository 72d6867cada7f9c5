"""Truncated backpropagation through time (TBPTT): the autodiff baseline.

Each particle (unperturbed, independent, step-unlocked) carries its state forward;
every window the gradient of the window's mean loss is taken through the last ``K``
steps only, treating the carried state as a constant:

    g_tau = grad_theta  1/(P K) sum_i sum_{t in tau} L_{i,t}(s_{i,tau-1}, theta)

Cheap and low-variance, but biased: it ignores theta's influence on the state it
starts from (wrong sign on influence balancing for K <= 10).

``window_loss="end"`` differentiates only the loss of the window's last step,
``1/P sum_i L_{i,tau_end}``, as the PES code's influence-balancing script does (its
unroll returns the loss of the state after ``K`` steps). The two differ in which
truncated sensitivities they weigh: on influence balancing the ``k``-step sensitivity
is ``+k`` up to ``k = 10`` and about ``-6`` by ``k = 100``, so with ``K = 100`` the
window-end loss points the right way while the mean over the window's steps (``+0.58``)
does not. The default ``"mean"`` is lopt's convention for every estimator.

Divergence: the engine caps a diverged particle's loss and restarts it, but
backpropagating through its non-finite forward values still yields NaN (0 x inf), so the
gradient is taken per particle (w.r.t. each particle's copy of theta, one joint unroll)
and a particle whose gradient is non-finite is left out: the estimate is the mean over
the remaining ones. Only when every particle's is non-finite is the gradient NaN (and
the outer optimizer skips the step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopt.estimators.base import Estimator, window_metrics
from lopt.unroll import ParticleState, UnrolledSystem, broadcast_theta, init_particles, unroll

WINDOW_LOSSES = ("mean", "end")


class TBPTTState(NamedTuple):
    particles: ParticleState


def tbptt(
    system: UnrolledSystem,
    num_particles: int,
    trunc_length: int,
    sigma: float | None = None,
    *,
    step_unlock: bool = True,
    window_loss: str = "mean",
    particle_chunk: int | None = None,
) -> Estimator:
    """TBPTT over ``num_particles`` independent unperturbed particles (``sigma`` unused).

    ``window_loss``: ``"mean"`` (every step of the window, lopt's convention) or ``"end"``
    (the window's last step only).
    """
    del sigma
    if window_loss not in WINDOW_LOSSES:
        raise ValueError(f"window_loss must be one of {WINDOW_LOSSES}, got {window_loss!r}")

    def init(theta, key, data=None) -> TBPTTState:
        return TBPTTState(
            init_particles(system, theta, key, num_particles, data, step_unlock=step_unlock, antithetic=False)
        )

    def estimate(theta, state: TBPTTState, key, data=None):
        del key  # deterministic given the state: the engine's keys come from the particles
        particles = jax.lax.stop_gradient(state.particles)

        def objective(thetas):
            new, window = unroll(system, thetas, thetas, particles, trunc_length, data, particle_chunk=particle_chunk)
            losses = window.losses if window_loss == "mean" else window.losses[:, -1]  # [P, K] / [P]
            return jnp.mean(losses), (new, window)

        # d/d thetas_i is particle i's share of the gradient (sum_i = grad of the mean)
        per_particle, (new, window) = jax.grad(objective, has_aux=True)(broadcast_theta(theta, num_particles))
        rows = lambda g: g.reshape(num_particles, -1)
        finite = jnp.all(jnp.stack([jnp.isfinite(rows(g)).all(axis=1) for g in jax.tree.leaves(per_particle)]), axis=0)
        rescale = num_particles / jnp.sum(finite)  # inf when none is finite: a NaN gradient
        grad = jax.tree.map(lambda g: rescale * jnp.where(finite[:, None], rows(g), 0.0).sum(0).reshape(g.shape[1:]),
                            per_particle)
        return grad, TBPTTState(jax.lax.stop_gradient(new)), window_metrics(window)

    return Estimator(init, estimate, unroll_steps=num_particles * trunc_length)
