"""Build a study's unrolled system, its starting theta and its evaluation metric.

Every study system is an :class:`lopt.unroll.UnrolledSystem` the estimators train,
plus a jittable ``evaluate(theta, data) -> scalar``: the *unperturbed* metric the
paper plots (never an ES estimate), computed from fixed evaluation keys so that all
methods and seeds are scored on the same episodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.studies.config import StudyConfig
from lopt.unroll import UnrolledSystem


class StudySystem(NamedTuple):
    """What a study run needs from its system."""

    system: UnrolledSystem
    data: Any
    theta0: Any
    evaluate: Callable[[Any, Any], jax.Array]  # (theta, data) -> scalar, jittable
    theta_names: tuple[str, ...] | None  # coordinate names of a low-dimensional theta


def episode_loss(system: UnrolledSystem, theta: Any, key: jax.Array, data: Any) -> jax.Array:
    """Mean per-step loss of one full, unperturbed episode from ``system.init``.

    Step ``t``'s key is ``fold_in(key, t)``; the init key is ``key`` itself.
    """

    def body(inner, t):
        return system.step(theta, inner, t, jax.random.fold_in(key, t), data)

    _, losses = jax.lax.scan(body, system.init(theta, key, data), jnp.arange(system.horizon))
    return jnp.mean(losses)


def mean_episode_loss(system: UnrolledSystem, num_episodes: int, seed: int) -> Callable[[Any, Any], jax.Array]:
    """``evaluate(theta, data)``: :func:`episode_loss` averaged over fixed episode keys."""
    keys = jax.random.split(jax.random.PRNGKey(seed), num_episodes)

    def evaluate(theta: Any, data: Any) -> jax.Array:
        return jnp.mean(jax.vmap(lambda k: episode_loss(system, theta, k, data))(keys))

    return evaluate


def build_system(study: StudyConfig, seed: int) -> StudySystem:
    """The study's system; ``seed`` only matters where theta0 is random (a learned optimizer)."""
    from lopt.tasks.systems import InfluenceBalancing, Lorenz, ToySchedule

    cfg, ev = study.system, study.evaluation
    if cfg.kind == "influence_balancing":
        system = InfluenceBalancing(cfg.horizon, cfg.dim, cfg.num_positive)
        steps = cfg.eval_steps
        return StudySystem(
            system, None, system.initial_theta(), lambda theta, data: system.unroll_loss(theta, steps), ("theta",)
        )
    if cfg.kind == "toy_schedule":
        system = ToySchedule(cfg.horizon)
        return StudySystem(
            system, None, system.initial_theta(), lambda theta, data: system.meta_loss(theta), ("theta0", "theta1")
        )
    if cfg.kind == "lorenz":
        system = Lorenz(cfg.horizon, cfg.dt, start_noise=cfg.start_noise, state_bound=cfg.state_bound)
        test = dataclasses.replace(system, start_noise=cfg.test_start_noise)
        return StudySystem(
            system,
            None,
            system.initial_theta(),
            mean_episode_loss(test, ev.num_episodes, ev.seed),
            ("log a", "log r"),
        )
    if cfg.kind == "lopt_training":
        from lopt.optimizers import from_config, update_rule
        from lopt.tasks import build_task
        from lopt.tasks.training import InnerTraining

        lopt = from_config(cfg.lopt)
        task, data = build_task(cfg.task, study.data.root, precision=study.compute.precision, data_cfg=study.data)
        system = InnerTraining(task, lopt.to_optax, cfg.horizon, cfg.meta_loss_split, update_rule=update_rule(lopt))
        theta0 = lopt.init(jax.random.fold_in(jax.random.PRNGKey(seed), 0))
        return StudySystem(system, data, theta0, mean_episode_loss(system, ev.num_episodes, ev.seed), None)
    raise ValueError(f"unknown system kind {cfg.kind!r}")
