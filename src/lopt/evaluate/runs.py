"""Training runs: every (hyperparameter, seed) of an optimizer on one task in one compiled,
vmapped program, recorded as tidy curves.

A run evaluates the ``train``, ``inner_valid`` and ``test`` splits every ``eval_every``
steps and records every step's minibatch loss (split ``train_batch``); candidate
optimizers share one program and differ in a ``lax.switch`` branch
(:func:`switched_program`), since on small tasks compilation dominates evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from lopt.optimizers import select_optimizer
from lopt.tasks.base import Task

EVAL_SPLITS = ("train", "inner_valid", "test")
SELECTION_SPLIT = "inner_valid"  # baselines are tuned on its final loss


def train_curves(
    task: Task,
    make_opt: Callable[[Any], optax.GradientTransformation],
    hparams: Any,
    seeds: np.ndarray,
    data: Any,
    num_steps: int,
    eval_every: int,
) -> dict[str, np.ndarray]:
    """Train ``task`` for every (hparam, seed) in one compiled, vmapped program.

    Args:
        make_opt: hparam -> optax optimizer (hparam may be traced).
        hparams: pytree with leading axis H (e.g. learning rates ``[H]``).
        seeds: int array ``[S]``; seed ``s`` fixes init and batch order.
        num_steps: inner steps; must be a multiple of ``eval_every``.

    Returns:
        ``train_batch``: ``[H, S, num_steps]`` minibatch losses; for each split in
        :data:`EVAL_SPLITS` ``<split>_loss`` / ``<split>_accuracy``: ``[H, S, E]`` at steps
        ``0, eval_every, ..., num_steps`` (E = num_steps / eval_every + 1).
    """
    program = curves_program(task, make_opt, num_steps, eval_every)
    return jax.device_get(program(hparams, jnp.asarray(seeds), data))


def curves_program(
    task: Task, make_opt: Callable[[Any], optax.GradientTransformation], num_steps: int, eval_every: int
) -> Callable[[Any, jax.Array, Any], dict[str, jax.Array]]:
    """The jitted ``(hparams [H], seeds [S], data) -> curves`` program of :func:`train_curves`.

    ``data`` is an argument, not a closure: a closed-over dataset would be baked into the
    program as constants (the digits program's HLO is 5x larger that way) and a new
    dataset of the same shapes would need a new compile.
    """
    return jax.jit(_over_hparams_and_seeds(training_run(task, make_opt, num_steps, eval_every)))


def _over_hparams_and_seeds(run: Callable) -> Callable:
    return jax.vmap(jax.vmap(run, in_axes=(None, 0, None)), in_axes=(0, None, None))


Optimizers = Sequence[Callable[[Any], optax.GradientTransformation]]


def switched_program(
    task: Task, optimizers: Optimizers, num_steps: int, eval_every: int, *, curves: bool = True
) -> Callable[[jax.Array, Any, jax.Array, Any], dict[str, jax.Array]]:
    """The jitted ``(choice, hparams [H], seeds [S], data) -> outputs`` program that trains
    ``optimizers[choice]`` (a factory ``hparam -> optax optimizer``) for every (hparam, seed).

    Compilation dominates evaluation on small tasks (benchmarks/RESULTS.md), and most of a
    program is the task (init, forward/backward, batches, evaluations), so the candidates
    share one program and differ in a ``lax.switch`` branch
    (:func:`lopt.optimizers.select_optimizer`); each call runs only its candidate.
    With ``curves`` the outputs are :func:`train_curves`' curves; without, only
    :data:`SELECTION_SPLIT`'s final loss ``[H, S]`` (:func:`training_run`).
    """

    def program(choice, hparams, seeds, data):
        def make(hparam):
            return select_optimizer(choice, [factory(hparam) for factory in optimizers])

        run = training_run(task, make, num_steps, eval_every, curves=curves)
        return _over_hparams_and_seeds(run)(hparams, seeds, data)

    return jax.jit(program)


def training_run(
    task: Task,
    make_opt: Callable[[Any], optax.GradientTransformation],
    num_steps: int,
    eval_every: int,
    *,
    curves: bool = True,
) -> Callable[[Any, jax.Array, Any], dict[str, jax.Array]]:
    """``run(hparam, seed, data)``: one training run's curves (unbatched, not jitted).

    :func:`curves_program` vmaps it over hyperparameters and seeds; the shapes are those
    of ``train_curves`` without the leading ``[H, S]``. With ``curves=False`` the run
    returns only ``{SELECTION_SPLIT + "_loss": scalar}`` after ``num_steps``: the same
    training steps, and the same evaluation (same key) as the curve's last point, and
    nothing else (what tuning needs; on small tasks the periodic evaluations of three
    splits cost as much as the training).
    """
    if num_steps % eval_every:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of eval_every ({eval_every})")
    num_chunks = num_steps // eval_every

    def run(hparam, seed, data):
        key = jax.random.PRNGKey(seed)
        key_init, key_steps, key_eval = jax.random.split(key, 3)
        params = task.init(key_init)
        # extra-args form: learned optimizers that read the loss get it as ``value``
        opt = optax.with_extra_args_support(make_opt(hparam))
        opt_state = opt.init(params)

        def evaluate(params, chunk, splits=EVAL_SPLITS):
            out = {}
            for split in splits:
                k = jax.random.fold_in(jax.random.fold_in(key_eval, chunk), EVAL_SPLITS.index(split))
                metrics = task.evaluate(params, data, k, split)
                out[f"{split}_loss"] = metrics["loss"]
                out[f"{split}_accuracy"] = jnp.asarray(metrics.get("accuracy", jnp.nan), jnp.float32)
            return out

        def train_step(carry, t):
            params, opt_state = carry
            batch = task.batch(data, jax.random.fold_in(key_steps, t), "train")
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, opt_state = opt.update(grads, opt_state, params, value=loss)
            return (optax.apply_updates(params, updates), opt_state), loss

        if not curves:
            (params, _), _ = jax.lax.scan(train_step, (params, opt_state), jnp.arange(num_steps))
            final = evaluate(params, num_chunks, (SELECTION_SPLIT,))
            return {f"{SELECTION_SPLIT}_loss": final[f"{SELECTION_SPLIT}_loss"]}

        def chunk_step(carry, chunk):
            ts = chunk * eval_every + jnp.arange(eval_every)
            carry, losses = jax.lax.scan(train_step, carry, ts)
            return carry, (losses, evaluate(carry[0], chunk + 1))

        first = evaluate(params, 0)
        _, (losses, evals) = jax.lax.scan(chunk_step, (params, opt_state), jnp.arange(num_chunks))
        out = {k: jnp.concatenate([first[k][None], v]) for k, v in evals.items()}
        out["train_batch"] = losses.reshape(-1)
        return out

    return run


def tidy_curves(
    curves: dict[str, np.ndarray],
    task_name: str,
    optimizer: str,
    lr: float,
    seeds: np.ndarray,
    eval_every: int,
    schedule: str = "constant",
) -> pd.DataFrame:
    """Tidy rows (task, optimizer, learning_rate, schedule, seed, step, split, loss, accuracy)."""
    frames = []
    num_steps = curves["train_batch"].shape[-1]
    for i, seed in enumerate(seeds):
        frames.append(
            pd.DataFrame(
                {
                    "step": np.arange(num_steps),
                    "split": "train_batch",
                    "loss": curves["train_batch"][i],
                    "accuracy": np.nan,
                    "seed": int(seed),
                }
            )
        )
        steps = np.arange(curves["test_loss"].shape[-1]) * eval_every
        for split in EVAL_SPLITS:
            frames.append(
                pd.DataFrame(
                    {
                        "step": steps,
                        "split": split,
                        "loss": curves[f"{split}_loss"][i],
                        "accuracy": curves[f"{split}_accuracy"][i],
                        "seed": int(seed),
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "schedule", schedule)
    df.insert(0, "learning_rate", lr)
    df.insert(0, "optimizer", optimizer)
    df.insert(0, "task", task_name)
    return df


def report_learned(
    task: Task,
    task_name: str,
    data: Any,
    learned: dict[str, optax.GradientTransformation],
    num_steps: int,
    num_seeds: int,
    seed_offset: int,
    eval_every: int,
) -> pd.DataFrame:
    """The reported runs of learned optimizers (name -> optax optimizer, built from
    meta-parameters) on one task: the baselines' seeds, one compiled program."""
    seeds = seed_offset + np.arange(num_seeds)
    reported = [(name, np.nan, "learned", lambda _, opt=opt: opt) for name, opt in learned.items()]
    return report_curves(task, task_name, data, reported, seeds, num_steps, eval_every)


def report_curves(task, task_name, data, reported, seeds, num_steps, eval_every) -> pd.DataFrame:
    """Curves of every ``(name, rate, schedule, factory)`` in ``reported``, from one program."""
    if not reported:
        return pd.DataFrame()
    program = switched_program(task, [r[3] for r in reported], num_steps, eval_every)
    frames = []
    for i, (name, lr, schedule, _) in enumerate(reported):
        hparams = jnp.asarray([0.0 if np.isnan(lr) else lr], jnp.float32)
        curves = jax.device_get(program(jnp.int32(i), hparams, jnp.asarray(seeds), data))
        frames.append(tidy_curves(jax.tree.map(lambda x: x[0], curves), task_name, name, lr, seeds, eval_every, schedule))
    return pd.concat(frames, ignore_index=True)
