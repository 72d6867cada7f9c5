"""The estimator interface and the antithetic-ES arithmetic every ES estimator shares.

An estimator is a NamedTuple of two pure functions (optax style):

    init(theta, key, data) -> state
    estimate(theta, state, key, data) -> (grad, state, metrics)

``grad`` has the structure of ``theta`` and estimates the gradient of the
Gaussian-smoothed meta-objective: the mean per-step loss over an episode (with episodes of
random length, over the steps of all lengths: a length-weighted mix; see :mod:`lopt.unroll`). ``state``
is a NamedTuple holding the engine's :class:`~lopt.unroll.ParticleState` plus the
estimator's own accumulators. ``metrics`` is a dict of scalars. Everything is
jittable; ``key`` is fresh every call.

Conventions (see also :mod:`lopt.config`):

- ``num_particles`` = P counts every perturbed copy: ``M = P / 2`` antithetic pairs.
- The loss of a window is the *mean* over its ``K`` steps, so for a perturbation
  weight ``w`` per step the estimate is

      g = 1 / (2 M sigma^2) * sum_m sum_j w_{m,j} (L+_{m,j} - L-_{m,j}) / K,

  i.e. ``1/(P sigma^2) sum_i eps_i L_i`` with particles ``2m`` and ``2m + 1`` carrying
  ``+eps_m`` and ``-eps_m`` (:func:`lopt.unroll.pair_up`).

Every estimator factory also takes ``particle_chunk`` (default None), passed to
:func:`lopt.unroll.unroll`: how many particles to unroll at a time. It changes the
working set, not the estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.unroll import Window, pair_up, unpair

Theta = Any


class Estimator(NamedTuple):
    """A meta-gradient estimator: ``init`` and ``estimate`` (see the module docstring)."""

    init: Callable[..., Any]
    estimate: Callable[..., tuple[Theta, Any, dict[str, jax.Array]]]
    # Inner steps one ``estimate`` call simulates, over all particles (forward steps
    # only): the x-axis "total unroll steps" of the NRES paper's comparisons.
    unroll_steps: int = 0


def sample_noise(key: jax.Array, theta: Theta, num: int, sigma: float) -> Theta:
    """``num`` draws of ``N(0, sigma^2 I)`` shaped like ``theta`` (leading axis ``num``)."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    noise = [sigma * jax.random.normal(k, (num, *x.shape), x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noise)


def antithetic(theta: Theta, eps: Theta) -> Theta:
    """Per-particle parameters ``theta + eps_m``, ``theta - eps_m`` for every pair ``m``
    (leading axis ``2M``, :func:`lopt.unroll.pair_up` layout)."""
    return jax.tree.map(lambda t, e: pair_up(t + e, t - e), theta, eps)


def pair_differences(window: Window) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair loss differences and masks of a window of antithetic particles.

    Returns ``(delta [M, K], fresh [M, K], done [M])`` where ``delta = L+ - L-``. The
    masks of the two copies are identical by construction (shared key and offset).
    """
    plus, minus = unpair(window.losses)
    return plus - minus, unpair(window.fresh)[0], unpair(window.done)[0]


def weighted_sum(weights: Theta, coef: jax.Array) -> Theta:
    """``sum_m coef_m * weights_m`` over the leading (pair) axis."""
    return jax.tree.map(lambda w: jnp.tensordot(coef, w, axes=1), weights)


def restart_marks(window: Window) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per pair, where a divergence restart (:mod:`lopt.unroll`) cut the dependence on
    earlier perturbations: ``(cut [M, K], any [M], at_end [M])``. ``cut`` marks steps that
    ran after a restart earlier in the window, ``any`` pairs restarted in the window,
    ``at_end`` pairs whose state after the window is a restart's (nothing perturbed it yet).
    Both copies of a pair restart together, so the + copy's marks are the pair's."""
    restarted = unpair(window.restarted)[0]
    cut = (jnp.cumsum(restarted, axis=1) - restarted) > 0
    return cut, restarted.any(axis=1), restarted[:, -1]


def window_gradient(
    before_reset: Theta,
    after_reset: Theta,
    window: Window,
    scale: float,
    loss_diff_clip: float | None = None,
    after_restart: Theta | None = None,
) -> Theta:
    """The antithetic ES estimate of one window, given each pair's perturbation weights.

    ``before_reset`` weighs steps of the episode current at the window start (PES: the
    accumulated ``xi``; NRES: the episode's noise), ``after_reset`` the steps after a
    reset inside the window (the new episode's noise); both have leading axis ``M``:

        g = scale * sum_m [before_m sum_{j not fresh} delta_mj + after_m sum_{j fresh} delta_mj]

    ``after_restart`` (optional) weighs instead the steps of the old episode that ran after
    a divergence restart in this window (:func:`restart_marks`): PES and GPES pass the
    perturbation those steps ran under, since the restarted state saw no earlier one.

    ``loss_diff_clip`` (optional, off by default) clips each per-step difference
    ``delta = L+ - L-`` to ``[-c, c]`` so one diverging pair cannot dominate; this biases
    the estimate whenever it binds.
    """
    delta, fresh, _ = pair_differences(window)
    if loss_diff_clip is not None:
        delta = jnp.clip(delta, -loss_diff_clip, loss_diff_clip)
    before = weighted_sum(before_reset, (delta * ~fresh).sum(axis=1) * scale)
    after = weighted_sum(after_reset, (delta * fresh).sum(axis=1) * scale)
    grad = jax.tree.map(jnp.add, before, after)
    if after_restart is None:
        return grad

    def reweigh():
        # move the old episode's steps after a restart from before_reset to after_restart;
        # a real branch, taken only in windows with a restart (on systems whose step costs a
        # few flops, the [M, K] masks would otherwise be a visible share of every window)
        cut_delta = (delta * (restart_marks(window)[0] & ~fresh)).sum(axis=1) * scale
        moved = jax.tree.map(jnp.subtract, weighted_sum(after_restart, cut_delta), weighted_sum(before_reset, cut_delta))
        return jax.tree.map(jnp.add, grad, moved)

    return jax.lax.cond(window.restarted.any(), reweigh, lambda: grad)


def num_pairs_of(num_particles: int) -> int:
    """``M = P / 2``: the antithetic pairs of ``P`` perturbed copies (``P`` even, >= 2)."""
    if num_particles < 2 or num_particles % 2:
        raise ValueError(f"num_particles counts the + and - copies of antithetic pairs: "
                         f"an even number >= 2, got {num_particles}")
    return num_particles // 2


def es_scale(num_pairs: int, sigma: float, num_steps: int) -> float:
    """``1 / (2 M sigma^2 K)``: the normaliser of the antithetic window estimate."""
    return 1.0 / (2.0 * num_pairs * sigma**2 * num_steps)


def window_metrics(window: Window) -> dict[str, jax.Array]:
    """Scalars every estimator reports: mean window loss, episodes finished, and the
    particle-steps that diverged (and were restarted by the engine)."""
    return {
        "meta_loss": jnp.mean(window.losses),
        "episodes_done": jnp.sum(window.done).astype(jnp.float32),
        "diverged": jnp.sum(window.diverged).astype(jnp.float32),
    }


def tree_where(pred: jax.Array, on_true: Theta, on_false: Theta) -> Theta:
    """Select per pair (leading axis) between two pytrees of per-pair values."""

    def sel(a, b):
        return jnp.where(pred.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(sel, on_true, on_false)
