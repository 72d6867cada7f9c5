"""Meta-gradients over several tasks: the mean of one estimator per task.

Meta-training on a task family (``meta_train.task_family``) draws a few tasks whose
structure differs (widths, depths, datasets), so they cannot share one vmapped unroll.
Each drawn task gets its own estimator (same kind, ``num_particles``, ``K``, ``sigma``)
over its own unrolled system and data; :func:`multi_task` combines them into one
:class:`~lopt.estimators.base.Estimator` whose gradient is

    g = (1 / n) sum_i g_i,

an unbiased estimate of the gradient of the mean of the tasks' smoothed meta-losses
whenever every ``g_i`` is unbiased for its own. All tasks run inside the same jitted
outer step (one compile), one after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lopt.estimators.base import Estimator

# Per-task metrics that are counts: summed over tasks (everything else is averaged).
_COUNTS = ("episodes_done", "diverged")


def multi_task(estimators: Sequence[Estimator]) -> Estimator:
    """One estimator over ``len(estimators)`` tasks; ``data`` and state are tuples.

    ``init(theta, key, data)`` and ``estimate(theta, state, key, data)`` take ``data``
    as a tuple with one entry per task; task ``i`` uses ``split(key, n)[i]``. Metrics
    are averaged over tasks (counts summed), plus ``meta_loss/<i>`` per task.
    """
    estimators = tuple(estimators)
    num = len(estimators)
    if num == 0:
        raise ValueError("multi_task needs at least one estimator")

    def init(theta, key, data) -> tuple[Any, ...]:
        keys = jax.random.split(key, num)
        return tuple(e.init(theta, k, d) for e, k, d in zip(estimators, keys, data, strict=True))

    def estimate(theta, state, key, data):
        keys = jax.random.split(key, num)
        outs = [
            e.estimate(theta, s, k, d)
            for e, s, k, d in zip(estimators, state, keys, data, strict=True)
        ]
        grads, states, metrics = zip(*outs, strict=True)
        grad = jax.tree.map(lambda *g: sum(g) / num, *grads)
        merged = {
            name: (jnp.sum if name in _COUNTS else jnp.mean)(jnp.stack([m[name] for m in metrics]))
            for name in metrics[0]
        }
        merged.update({f"meta_loss/{i}": m["meta_loss"] for i, m in enumerate(metrics)})
        return grad, tuple(states), merged

    return Estimator(init, estimate, unroll_steps=sum(e.unroll_steps for e in estimators))
