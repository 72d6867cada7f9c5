"""The meta-step: one jitted pure function ``(MetaState, data) -> (MetaState, metrics)``.

Its PRNG key is ``fold_in(fold_in(key, KEY_STEPS), step)``: a function of the step, so the
state holds everything else and a resumed run repeats the same draws.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.config import ExperimentConfig
from lopt.estimators import Estimator, estimator_options, make_estimator, multi_task
from lopt.optimizers import LearnedOptimizer, update_rule
from lopt.optimizers.pretrained import from_config as lopt_from_config
from lopt.tasks import build_task
from lopt.tasks.training import InnerTraining

# fold_in tags of a run's PRNG key: one branch per use. (``split(key)[i]`` equals
# ``fold_in(key, i)`` under JAX's partitionable threefry, so two uses must never take
# split/fold_in index i of the same key.)
KEY_THETA, KEY_STEPS, KEY_ESTIMATOR_INIT = 0, 1, 2


class MetaState(NamedTuple):
    """Everything the outer loop carries; exactly what a checkpoint stores."""

    theta: Any
    opt_state: Any
    estimator_state: Any
    step: jax.Array  # int32 scalar: outer steps completed


class MetaTrainer(NamedTuple):
    """The pieces of one meta-training configuration, built once."""

    lopt: LearnedOptimizer
    estimator: Estimator
    outer_opt: optax.GradientTransformation
    data: Any
    key: jax.Array
    normalize_grad: bool = False

    def init(self) -> MetaState:
        # one compiled program: op by op, the ~70 small initialisation ops each compile
        # on their own (2-3 s of every CLI start on CPU)
        return jax.jit(self._init)(self.key, self.data)

    def _init(self, key: jax.Array, data: Any) -> MetaState:
        # Key layout (see meta_step_fn): 0 -> theta, 1 -> every outer step, 2 -> estimator
        # init. Disjoint branches, so no init draw can repeat a step's draw.
        theta = self.lopt.init(jax.random.fold_in(key, KEY_THETA))
        est_state = self.estimator.init(theta, jax.random.fold_in(key, KEY_ESTIMATOR_INIT), data)
        return MetaState(theta, self.outer_opt.init(theta), est_state, jnp.zeros([], jnp.int32))


def build_trainer(cfg: ExperimentConfig) -> MetaTrainer:
    """Build the learned optimizer, inner system, estimator and outer optimizer."""
    mt = cfg.meta_train
    lopt = lopt_from_config(cfg.lopt)
    extra = estimator_options(
        mt.estimator, noise_reuse_steps=mt.noise_reuse_steps, loss_diff_clip=mt.loss_diff_clip,
        particle_chunk=mt.particle_chunk,
    )
    estimators, datas = [], []
    for task_cfg in mt.tasks():
        task, data = build_task(task_cfg, cfg.data.root, precision=cfg.compute.precision, data_cfg=cfg.data)
        system = InnerTraining(
            task, lopt.to_optax, mt.horizon, mt.meta_loss_split, min_horizon=mt.min_horizon, update_rule=update_rule(lopt)
        )
        estimators.append(
            make_estimator(
                mt.estimator,
                system,
                num_particles=mt.num_particles,
                trunc_length=mt.trunc_length,
                sigma=mt.sigma,
                step_unlock=mt.step_unlock,
                **extra,
            )
        )
        datas.append(data)
    if len(estimators) == 1:
        estimator, data = estimators[0], datas[0]
    else:  # a task family: one estimator per drawn task, gradients averaged
        estimator, data = multi_task(estimators), tuple(datas)
    outer = {"adam": optax.adam, "sgd": optax.sgd}[mt.outer_optimizer](mt.outer_lr)
    outer_opt = outer_optimizer(outer, mt.grad_clip)
    return MetaTrainer(lopt, estimator, outer_opt, data, jax.random.PRNGKey(cfg.seed), mt.normalize_grad)


def outer_optimizer(
    update: optax.GradientTransformation, grad_clip: float | None
) -> optax.GradientTransformation:
    """``update`` after an optional global-norm clip, skipping non-finite gradients.

    A non-finite meta-gradient (a diverged unroll) skips the update instead of
    poisoning theta; optax counts the skips in its state (``total_notfinite``).
    """
    chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip is not None else []
    return optax.apply_if_finite(optax.chain(*chain, update), max_consecutive_errors=1_000_000)


def meta_step_fn(
    estimator: Estimator,
    outer_opt: optax.GradientTransformation,
    key: jax.Array,
    normalize_grad: bool = False,
):
    """The pure outer step ``(MetaState, data) -> (MetaState, metrics)`` (not jitted).

    ``outer_opt`` must come from :func:`outer_optimizer` (its state counts skipped
    non-finite updates). The step's key is ``fold_in(fold_in(key, KEY_STEPS), step)``;
    initialisation draws from the other branches of ``key`` (:data:`KEY_THETA`,
    :data:`KEY_ESTIMATOR_INIT`), never from a step's.
    """

    def meta_step(state: MetaState, data: Any) -> tuple[MetaState, dict[str, jax.Array]]:
        step_key = jax.random.fold_in(jax.random.fold_in(key, KEY_STEPS), state.step)
        grad, est_state, metrics = estimator.estimate(state.theta, state.estimator_state, step_key, data)
        grad_norm = optax.global_norm(grad)
        if normalize_grad:
            # direction only: the outer learning rate sets the step length
            grad = jax.tree.map(lambda g: g / (grad_norm + 1e-12), grad)
        updates, opt_state = outer_opt.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        metrics = dict(metrics, grad_norm=grad_norm, skipped_updates=opt_state.total_notfinite)
        return MetaState(theta, opt_state, est_state, state.step + 1), metrics

    return meta_step


def make_meta_step(trainer: MetaTrainer, mesh: Any = None):
    """The jitted outer step ``(MetaState, data) -> (MetaState, metrics)``.

    With a ``mesh`` (:func:`lopt.sharding.particle_mesh`) the estimator state's particle
    axis is split over its devices and everything else replicated; pass the state through
    :func:`meta_state_shardings` / :func:`lopt.sharding.place` first.
    """
    fn = meta_step_fn(trainer.estimator, trainer.outer_opt, trainer.key, trainer.normalize_grad)
    if mesh is None:
        return jax.jit(fn)
    from lopt.sharding import jit_sharded

    return jit_sharded(fn, meta_state_shardings(trainer, mesh), mesh)


def meta_state_shardings(trainer: MetaTrainer, mesh: Any) -> Any:
    """Shardings of the :class:`MetaState`: particle / pair axes of the estimator state split."""
    from lopt.sharding import state_shardings

    return state_shardings(jax.eval_shape(trainer.init), mesh, particle_leaves)


def particle_leaves(state: MetaState) -> MetaState:
    """Which parts of a :class:`MetaState` have a leading particle / pair axis: the
    estimator state's (for :func:`lopt.sharding.state_shardings`)."""
    return MetaState(False, False, True, False)
