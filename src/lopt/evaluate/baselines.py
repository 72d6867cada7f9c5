"""Tuned baselines: each optax baseline's learning rate (and schedule) picked on a log grid
by final :data:`~lopt.evaluate.runs.SELECTION_SPLIT` loss, then its reporting seeds trained.

Tuning seeds are disjoint from reporting seeds (:data:`TUNE_SEED_SHIFT`); a rate selected
at an edge of the grid is flagged, since that baseline may be under-tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from lopt.evaluate.runs import (
    SELECTION_SPLIT,
    report_curves,
    switched_program,
    tidy_curves,
    train_curves,
)
from lopt.optimizers import BASELINE_UPDATE_RULES, lr_grid, make_baseline
from lopt.tasks.base import Task
from lopt.tasks.mup import with_update_scales

TUNE_SEED_SHIFT = 100_000

Tuner = Callable[[str, str, Any, np.ndarray], np.ndarray]


def baseline_factory(
    task: Task, name: str, schedule: str, num_steps: int
) -> Callable[[Any], optax.GradientTransformation]:
    """``learning_rate -> `` the baseline ``name`` with ``schedule`` over ``num_steps``, with
    ``task``'s muP learning-rate multipliers for it if any (:mod:`lopt.tasks.mup`)."""
    rule = BASELINE_UPDATE_RULES[name]
    return lambda lr: with_update_scales(task, make_baseline(name, lr, schedule, num_steps), rule)


def baseline_tuner(
    task: Task, candidates: Sequence[tuple[str, str]], data: Any, num_steps: int, eval_every: int
) -> Tuner:
    """``final(name, schedule, hparams [H], seeds [S]) -> [H, S]``: the final
    :data:`~lopt.evaluate.runs.SELECTION_SPLIT` loss of every (rate, seed) for any (baseline, schedule) in
    ``candidates``, all from one compiled program (:func:`~lopt.evaluate.runs.switched_program`).

    A tuning run computes only what selection reads: no curves, one evaluation of one
    split at the end (the value the run's curve would end on). The reported runs are
    trained again by :func:`tune_and_report_baselines` for the selected setting only.
    """
    index = {c: i for i, c in enumerate(candidates)}
    factories = [baseline_factory(task, n, s, num_steps) for n, s in candidates]
    compiled = switched_program(task, factories, num_steps, eval_every, curves=False)

    def final(name: str, schedule: str, hparams: Any, seeds: np.ndarray) -> np.ndarray:
        out = compiled(jnp.int32(index[name, schedule]), hparams, jnp.asarray(seeds), data)
        return np.asarray(jax.device_get(out[f"{SELECTION_SPLIT}_loss"]))

    return final


def tune_baseline(
    task: Task,
    name: str,
    data: Any,
    grid: np.ndarray,
    seeds: np.ndarray,
    num_steps: int,
    eval_every: int,
    schedules: tuple[str, ...] = ("constant",),
    tuner: Tuner | None = None,
) -> tuple[float, str, pd.DataFrame]:
    """Pick ``name``'s (learning rate, schedule) by mean final :data:`~lopt.evaluate.runs.SELECTION_SPLIT` loss
    over ``seeds`` (non-finite counts as +inf).

    One vmapped call per schedule covers the whole rate grid and every tuning seed, all
    schedules from one compiled program (``tuner``: a :func:`baseline_tuner` shared with
    other baselines, built here when absent).
    Returns ``(learning_rate, schedule, sweep)``; ``sweep`` has one row per (schedule, rate)
    with its mean final loss, ``selected`` marking the winner and ``grid_edge`` the grid's
    lowest and highest rates (a winner there means the optimum may lie outside the grid).
    """
    if tuner is None:
        tuner = baseline_tuner(task, [(name, s) for s in schedules], data, num_steps, eval_every)
    frames = []
    for schedule in schedules:
        final = tuner(name, schedule, jnp.asarray(grid), seeds)
        final = np.where(np.isfinite(final), final, np.inf)
        frames.append(
            pd.DataFrame(
                {"optimizer": name, "schedule": schedule, "learning_rate": grid,
                 f"{SELECTION_SPLIT}_loss": final.mean(axis=1)}
            )
        )
    sweep = pd.concat(frames, ignore_index=True)
    best = int(np.argmin(sweep[f"{SELECTION_SPLIT}_loss"].to_numpy()))
    sweep["selected"] = np.arange(len(sweep)) == best
    sweep["grid_edge"] = np.isin(sweep["learning_rate"], [np.min(grid), np.max(grid)])
    return float(sweep["learning_rate"].iloc[best]), str(sweep["schedule"].iloc[best]), sweep


def grid_edge_selections(sweep: pd.DataFrame) -> dict[str, float]:
    """Baselines whose selected rate is the lowest or highest of the grid: name -> rate.

    Such a baseline may be under-tuned (its best rate may lie outside the grid), so the
    tables mark it (:func:`lopt.analysis.tables.final_loss_table`).
    """
    if sweep.empty or "grid_edge" not in sweep:  # sweeps written before the column existed
        return {}
    hits = sweep[sweep["selected"] & sweep["grid_edge"]]
    return dict(zip(hits["optimizer"], hits["learning_rate"].astype(float)))


def tune_and_report_baselines(
    task: Task,
    task_name: str,
    data: Any,
    baselines: list[str],
    grid_cfg: Any,
    num_steps: int,
    num_seeds: int,
    seed_offset: int,
    eval_every: int,
    schedules: tuple[str, ...] = ("constant",),
    reference: str = "adam",
    reference_mult: int = 4,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tune every baseline on one task, then train its reporting seeds at the selected setting.

    Three compiled programs: the tuning runs of every baseline (:func:`baseline_tuner`),
    the reported runs of every tuned baseline (:func:`~lopt.evaluate.runs.switched_program`) and the
    reference's long run.

    Args:
        baselines: names from :data:`lopt.optimizers.BASELINES`.
        grid_cfg: :class:`lopt.config.LRGridConfig`.
        schedules: learning-rate schedules tuned jointly with the rate.
        reference: the baseline the speed-up is measured against; after tuning it also
            trains ``reference_mult`` times longer at *every* rate of the grid (its
            selected schedule, stretched over the longer run), so speed-ups above 1 are
            measurable and each is over the fastest rate for its target
            (:func:`lopt.analysis.metrics.speedup`, VeLOdrome's learning-rate-tuned Adam).

    Returns:
        ``(curves, sweep, reference)`` tidy DataFrames; curves carry ``learning_rate`` and
        ``schedule``; ``reference`` holds the long reference runs, one per grid rate
        (empty without one).
    """
    seeds = seed_offset + np.arange(num_seeds)
    grid = lr_grid(grid_cfg.low, grid_cfg.high, grid_cfg.num)
    tuner = baseline_tuner(task, [(n, s) for n in baselines for s in schedules], data, num_steps, eval_every)
    tuned, sweeps = {}, []
    for name in baselines:
        lr, schedule, sweep = tune_baseline(
            task, name, data, grid, seeds + TUNE_SEED_SHIFT, num_steps, eval_every, schedules, tuner=tuner
        )
        tuned[name] = (lr, schedule)
        sweeps.append(sweep)
    reported = [(name, lr, schedule, baseline_factory(task, name, schedule, num_steps)) for name, (lr, schedule) in tuned.items()]
    curves = report_curves(task, task_name, data, reported, seeds, num_steps, eval_every)

    long_frames = []
    if reference in tuned:
        _, schedule = tuned[reference]
        steps = reference_mult * num_steps
        make = baseline_factory(task, reference, schedule, steps)
        long = train_curves(task, make, jnp.asarray(grid), seeds, data, steps, eval_every)
        for h, lr in enumerate(grid):
            frame = tidy_curves(jax.tree.map(lambda x, h=h: x[h], long), task_name, reference, float(lr), seeds,
                                eval_every, schedule)
            # the speed-up reads evaluated losses only; every step's minibatch loss at every
            # rate would be most of the file
            long_frames.append(frame[frame["split"] != "train_batch"])
    sweep_df = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()
    if not sweep_df.empty:
        sweep_df.insert(0, "task", task_name)
    reference_df = pd.concat(long_frames, ignore_index=True) if long_frames else pd.DataFrame()
    return curves, sweep_df, reference_df
