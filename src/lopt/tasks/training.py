"""Inner training as an unrolled system: a task trained by an optimizer built from theta.

This is the bridge between tasks and the unroll engine: the state is ``(params,
opt_state)``, one step draws a training batch, applies the optimizer built from
``theta`` and reports the meta-loss: the training-batch loss at the current parameters,
or an ``outer_valid`` batch's loss at the updated ones. The optimizer factory is
injected, so tasks never import the optimizers package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.tasks.base import Task
from lopt.tasks.mup import with_update_scales

# Meta-losses above this (or non-finite) are clipped and count as divergence: one
# diverging particle must not dominate an ES estimate with an unbounded loss difference.
MAX_META_LOSS = 1e3


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class InnerTraining:
    """Train ``task`` for ``horizon`` steps with ``make_optimizer(theta, horizon)``.

    Attributes:
        task: the inner problem.
        make_optimizer: ``(theta, num_steps) -> optax.GradientTransformation``.
        horizon: T, inner steps per episode.
        meta_loss_split: ``train`` (the training loss the step already computed, at the
            parameters before its update) or ``outer_valid`` (an extra forward pass on an
            outer-valid batch at the parameters after the update, as learned_optimization's
            ``meta_loss_split``).
        loss_cap: meta-losses are clipped to this; a non-finite loss or one at the cap
            marks divergence, and the engine restarts that particle's inner run
            (:func:`lopt.unroll.unroll`).
        min_horizon: episodes of random length in ``[min_horizon, horizon]`` (log-uniform;
            see :mod:`lopt.unroll`), each run by :meth:`with_horizon`; None: every episode
            lasts ``horizon`` steps.
        update_rule: the optimizer's muP update rule (:mod:`lopt.tasks.mup`; ``adam`` for
            the learned optimizers, :func:`lopt.optimizers.update_rule`): on a muP task its
            learning-rate multipliers scale every update. Ignored on other tasks; None (no
            rule) is refused on a muP task, so a caller cannot skip the multipliers silently.
    """

    task: Task
    make_optimizer: Callable[[Any, int], optax.GradientTransformation]
    horizon: int
    meta_loss_split: str = "train"
    loss_cap: float = MAX_META_LOSS
    min_horizon: int | None = None
    update_rule: str | None = None

    def with_horizon(self, horizon: Any) -> InnerTraining:
        """This system for an episode of ``horizon`` steps (may be traced): the optimizer's
        training-fraction features then follow that episode's length."""
        return dataclasses.replace(self, horizon=horizon, min_horizon=None)  # one episode: one length

    def optimizer(self, theta: Any) -> optax.GradientTransformationExtraArgs:
        """The inner optimizer ``theta`` makes for this episode, with the task's muP multipliers."""
        opt = with_update_scales(self.task, self.make_optimizer(theta, self.horizon), self.update_rule)
        return optax.with_extra_args_support(opt)

    def init(self, theta: Any, key: jax.Array, data: Any) -> TrainState:
        params = self.task.init(key)
        return TrainState(params, self.optimizer(theta).init(params))

    def step(self, theta, inner: TrainState, t, key, data) -> tuple[TrainState, jax.Array]:
        del t  # the optimizer state carries its own step count
        key_train, key_meta = jax.random.split(key)
        batch = self.task.batch(data, key_train, "train")
        loss, grads = jax.value_and_grad(self.task.loss)(inner.params, batch)
        updates, opt_state = self.optimizer(theta).update(grads, inner.opt_state, inner.params, value=loss)
        params = optax.apply_updates(inner.params, updates)
        if self.meta_loss_split == "train":
            meta_loss = loss  # free: the pre-update training loss the step computed
        else:
            # the parameters this step's update produced (learned_optimization's
            # meta_loss_split): at the pre-update ones the last update of a window is never
            # scored, and a one-step truncation (K = 1) could not see theta at all
            meta_loss = self.task.loss(params, self.task.batch(data, key_meta, self.meta_loss_split))
        cap = self.loss_cap
        meta_loss = jnp.where(jnp.isfinite(meta_loss), jnp.minimum(meta_loss, cap), cap)
        return TrainState(params, opt_state), meta_loss
