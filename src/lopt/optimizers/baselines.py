"""Hand-designed baselines: optax optimizers indexed by name, with a learning rate.

Each entry maps a (possibly traced) learning rate -- or an optax schedule built from
one -- to an optax optimizer, so a whole learning-rate sweep is one ``vmap`` over the
rate.

Baselines (``BASELINES``; every other hyperparameter is optax's default unless noted):

``sgd``        ``optax.sgd(lr)``
``momentum``   ``optax.sgd(lr, momentum=0.9)``
``adam``       ``optax.adam(lr)``
``rmsprop``    ``optax.rmsprop(lr)``
``adamw``      ``optax.adamw(lr, weight_decay=1e-4)``
``nadamw``     ``optax.nadamw(lr, weight_decay=1e-4)``
``lion``       ``optax.lion(lr, b1=0.9, b2=0.99, weight_decay=0.0)``
``adafactor``  ``optax.adafactor(lr)``. Note its defaults: updates are clipped to RMS
               1 and multiplied by the parameter's RMS (``multiply_by_parameter_scale``),
               so its learning rate is a *relative* step size.

Learning-rate schedules (``SCHEDULES``), each over ``num_steps`` training steps:

``constant``       ``lr`` (``num_steps`` not needed)
``cosine``         ``optax.cosine_decay_schedule(lr, num_steps)``: ``lr`` -> 0
``linear``         ``optax.linear_schedule(lr, 0, num_steps)``: ``lr`` -> 0
``warmup_cosine``  ``optax.warmup_cosine_decay_schedule(0, lr, warmup_steps, num_steps)``
                   with ``warmup_steps = max(1, int(warmup_fraction * num_steps))``:
                   0 -> ``lr`` linearly, then cosine ``lr`` -> 0 at ``num_steps``
                   (``num_steps`` includes the warm-up, as in optax).

``warmup_cosine`` is evaluated as ``lr * optax.warmup_cosine_decay_schedule(0, 1, ...)``:
the same function (the schedule is linear in its peak when it starts and ends at 0),
because optax's version branches in Python on ``peak_value == 0`` and so cannot take a
traced learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lopt.config.evaluation import BASELINE_UPDATE_RULES  # noqa: F401  (re-exported; jax-free for the config)

BASELINES: dict[str, Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
    "nadamw": lambda lr: optax.nadamw(lr, weight_decay=1e-4),
    "lion": lambda lr: optax.lion(lr, b1=0.9, b2=0.99, weight_decay=0.0),
    "adafactor": lambda lr: optax.adafactor(lr),
}

SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")


def make_schedule(
    learning_rate,
    schedule: str = "constant",
    num_steps: int | None = None,
    warmup_fraction: float = 0.05,
) -> optax.ScalarOrSchedule:
    """The learning rate, or the optax schedule ``schedule`` peaking at ``learning_rate``.

    Args:
        learning_rate: peak learning rate; a Python float or a (possibly traced) JAX scalar.
        schedule: one of :data:`SCHEDULES` (see the module docstring).
        num_steps: training steps the schedule decays over (the learning rate is 0 at
            step ``num_steps``); required by every schedule but ``constant``.
        warmup_fraction: for ``warmup_cosine``, the fraction of ``num_steps`` spent in
            linear warm-up from 0 (at least one step), in ``[0, 1)``.

    Returns:
        ``learning_rate`` itself for ``constant``, else a function step -> learning rate.

    Raises:
        ValueError: unknown ``schedule`` (the message lists :data:`SCHEDULES`), missing or
            non-positive ``num_steps``, ``warmup_fraction`` outside ``[0, 1)``, or a
            warm-up that leaves no decay steps.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return learning_rate
    if num_steps is None:
        raise ValueError(
            f"schedule {schedule!r} needs num_steps (the training steps it decays over); "
            "only 'constant' works without it"
        )
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    num_steps = int(num_steps)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, num_steps)
    if schedule == "linear":
        return optax.linear_schedule(learning_rate, 0.0, num_steps)
    # warmup_cosine
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    warmup_steps = max(1, int(warmup_fraction * num_steps))
    if warmup_steps >= num_steps:
        raise ValueError(
            f"warmup_cosine with num_steps={num_steps} and warmup_fraction={warmup_fraction} "
            f"leaves no decay steps (warm-up is {warmup_steps} steps, at least 1); "
            "use num_steps >= 2 and a smaller warmup_fraction"
        )
    unit = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=warmup_steps, decay_steps=num_steps
    )
    return lambda count: learning_rate * unit(count)


def make_baseline(
    name: str,
    learning_rate,
    schedule: str = "constant",
    num_steps: int | None = None,
    warmup_fraction: float = 0.05,
) -> optax.GradientTransformation:
    """The optax optimizer ``name`` with (a ``schedule`` of) ``learning_rate``.

    Args:
        name: one of :data:`BASELINES`.
        learning_rate: (peak) learning rate; may be a traced JAX scalar, so a sweep over
            rates is one ``jax.vmap``.
        schedule, num_steps, warmup_fraction: see :func:`make_schedule`.

    Raises:
        ValueError: unknown ``name`` or ``schedule`` (the message lists the allowed
            values), or invalid schedule arguments (see :func:`make_schedule`).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
    return BASELINES[name](make_schedule(learning_rate, schedule, num_steps, warmup_fraction))


def lr_grid(low: float, high: float, num: int) -> np.ndarray:
    """``num`` log-spaced learning rates from ``low`` to ``high`` inclusive."""
    return np.geomspace(low, high, num).astype(np.float32)


def select_optimizer(
    choice: jax.Array, optimizers: Sequence[optax.GradientTransformation]
) -> optax.GradientTransformationExtraArgs:
    """The optimizer ``optimizers[choice]``, with ``choice`` a traced int32 scalar.

    One compiled program then serves every candidate: XLA compiles the training loop
    once and each optimizer's ``init`` / ``update`` as one branch of a ``lax.switch`` (a
    real branch as long as ``choice`` is not batched), instead of one program per
    optimizer. The state is one flat float32 buffer as large as the largest candidate's
    state (each branch reads and writes its own layout): carrying every candidate's
    state side by side would copy them all through the branch on every step. Extra
    arguments (``value=loss``) reach optimizers that accept them.
    """
    opts = [optax.with_extra_args_support(o) for o in optimizers]

    def layouts(params):
        """Per candidate: (state size, flat -> state); shapes only, nothing is computed."""
        out = []
        for o in opts:
            shapes = jax.eval_shape(o.init, params)
            _, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
            out.append((sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)), unravel))
        return out, max(n for n, _ in out)

    def flat(state, size):
        vec = ravel_pytree(state)[0].astype(jnp.float32)  # int counts stay exact below 2**24
        return jnp.pad(vec, (0, size - vec.size))

    def init(params):
        _, size = layouts(params)
        return jax.lax.switch(choice, [lambda p, o=o: flat(o.init(p), size) for o in opts], params)

    def update(updates, state, params=None, **extra):
        layout, size = layouts(updates)

        def branch(i):
            def run(operands):
                u, buf, p = operands
                n, unravel = layout[i]
                u, new = opts[i].update(u, unravel(buf[:n]), p, **extra)
                return u, flat(new, size)

            return run

        return jax.lax.switch(choice, [branch(i) for i in range(len(opts))], (updates, state, params))

    return optax.GradientTransformationExtraArgs(init, update)
