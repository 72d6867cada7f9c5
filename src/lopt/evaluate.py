"""Evaluation: train held-out tasks with the learned optimizer and tuned optax baselines.

Protocol (one held-out task at a time):

1. **Tune** each baseline's learning rate on a log grid: every (rate, tuning seed)
   trains for the same step budget as the learned optimizer, all in one ``vmap``; the
   rate with the lowest mean final ``inner_valid`` loss wins (non-finite counts as
   +inf). Tuning seeds are disjoint from reporting seeds. Tuning runs evaluate that
   one split once, at the end: nothing else of them is kept (:func:`baseline_tuner`).
   A rate selected at an edge of the grid is flagged (summary ``lr_at_grid_edge``, a
   dagger in the tables, a line on stderr): that baseline may be under-tuned.
2. **Report**: the learned optimizer and each tuned baseline train ``num_seeds``
   fresh seeds (vmapped; the tuned baselines are branches of one compiled program per
   task, :func:`switched_program`, the learned optimizers of another); every
   ``eval_every`` steps the loss and accuracy on the ``train``, ``inner_valid`` and
   ``test`` splits are recorded, and every step's minibatch loss as split ``train_batch``.

Nothing a baseline computes depends on the learned optimizer, so the two halves run
apart: :func:`run_baselines` (``lopt baselines``, the workflow's ``baselines`` rule) tunes
and reports the baselines of one task into ``results/<name>/baselines/<task>/``, and
:func:`run_evaluation` (``lopt evaluate --baselines DIR``) trains the learned optimizer
and joins the two. A change to the learned optimizer or its meta-training then re-runs
only its own runs, and on a cluster the baselines run beside meta-training. Without ``--baselines``
``lopt evaluate`` computes both, with the same programs and so the same numbers.

Outputs are tidy tables (one observation per row) so analysis never re-runs training.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from lopt.optimizers import lr_grid, make_baseline, select_optimizer
from lopt.tasks.base import Task

EVAL_SPLITS = ("train", "inner_valid", "test")
SELECTION_SPLIT = "inner_valid"  # baselines are tuned on its final loss
TUNE_SEED_SHIFT = 100_000


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


Tuner = Callable[[str, str, Any, np.ndarray], np.ndarray]


def baseline_factory(name: str, schedule: str, num_steps: int) -> Callable[[Any], optax.GradientTransformation]:
    """``learning_rate -> `` the baseline ``name`` with ``schedule`` over ``num_steps``."""
    return lambda lr: make_baseline(name, lr, schedule, num_steps)


def baseline_tuner(
    task: Task, candidates: Sequence[tuple[str, str]], data: Any, num_steps: int, eval_every: int
) -> Tuner:
    """``final(name, schedule, hparams [H], seeds [S]) -> [H, S]``: the final
    :data:`SELECTION_SPLIT` loss of every (rate, seed) for any (baseline, schedule) in
    ``candidates``, all from one compiled program (:func:`switched_program`).

    A tuning run computes only what selection reads: no curves, one evaluation of one
    split at the end (the value the run's curve would end on). The reported runs are
    trained again by :func:`tune_and_report_baselines` for the selected setting only.
    """
    index = {c: i for i, c in enumerate(candidates)}
    factories = [baseline_factory(n, s, num_steps) for n, s in candidates]
    compiled = switched_program(task, factories, num_steps, eval_every, curves=False)

    def final(name: str, schedule: str, hparams: Any, seeds: np.ndarray) -> np.ndarray:
        out = compiled(jnp.int32(index[name, schedule]), hparams, jnp.asarray(seeds), data)
        return np.asarray(jax.device_get(out[f"{SELECTION_SPLIT}_loss"]))

    return final


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


def _tidy(
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
    """Pick ``name``'s (learning rate, schedule) by mean final :data:`SELECTION_SPLIT` loss
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
    the reported runs of every tuned baseline (:func:`switched_program`) and the
    reference's long run.

    Args:
        baselines: names from :data:`lopt.optimizers.BASELINES`.
        grid_cfg: :class:`lopt.config.LRGridConfig`.
        schedules: learning-rate schedules tuned jointly with the rate.
        reference: the baseline the speed-up is measured against; after tuning it also
            trains ``reference_mult`` times longer (same rate, schedule stretched over the
            longer run), so speed-ups above 1 are measurable
            (:func:`lopt.analysis.metrics.speedup`).

    Returns:
        ``(curves, sweep, reference)`` tidy DataFrames; curves carry ``learning_rate`` and
        ``schedule``; ``reference`` holds the long reference run (empty without one).
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
    reported = [(name, lr, schedule, baseline_factory(name, schedule, num_steps)) for name, (lr, schedule) in tuned.items()]
    curves = _report(task, task_name, data, reported, seeds, num_steps, eval_every)

    long_frames = []
    if reference in tuned:
        lr, schedule = tuned[reference]
        steps = reference_mult * num_steps
        make = baseline_factory(reference, schedule, steps)
        long = train_curves(task, make, jnp.asarray([lr]), seeds, data, steps, eval_every)
        long_frames.append(_tidy(jax.tree.map(lambda x: x[0], long), task_name, reference, lr, seeds, eval_every, schedule))
    sweep_df = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()
    if not sweep_df.empty:
        sweep_df.insert(0, "task", task_name)
    reference_df = pd.concat(long_frames, ignore_index=True) if long_frames else pd.DataFrame()
    return curves, sweep_df, reference_df


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
    return _report(task, task_name, data, reported, seeds, num_steps, eval_every)


def _report(task, task_name, data, reported, seeds, num_steps, eval_every) -> pd.DataFrame:
    """Curves of every ``(name, rate, schedule, factory)`` in ``reported``, from one program."""
    if not reported:
        return pd.DataFrame()
    program = switched_program(task, [r[3] for r in reported], num_steps, eval_every)
    frames = []
    for i, (name, lr, schedule, _) in enumerate(reported):
        hparams = jnp.asarray([0.0 if np.isnan(lr) else lr], jnp.float32)
        curves = jax.device_get(program(jnp.int32(i), hparams, jnp.asarray(seeds), data))
        frames.append(_tidy(jax.tree.map(lambda x: x[0], curves), task_name, name, lr, seeds, eval_every, schedule))
    return pd.concat(frames, ignore_index=True)


def task_metrics(curves: pd.DataFrame, reference: pd.DataFrame, budget: int, split: str = "train") -> pd.DataFrame:
    """Per optimizer on one task: best loss, steps-to-target, and speed-up over the reference.

    The target is the tuned reference optimizer's (Adam's) mean best-so-far ``split`` loss
    at the budget, from its budget-length run in ``curves`` (the run every table shows; the
    long run is another program whose float rounding, amplified over the steps, can leave
    it slightly off, so Adam would miss its own target); ``steps_to_target`` is the first evaluated step at which an
    optimizer's seed-mean best-so-far curve reaches it (inf if never). ``speedup`` is
    VeLOdrome's: the steps the long reference run needs to reach the optimizer's
    seed-mean best loss at the budget, over the budget; ``censored`` marks lower bounds
    (the reference never got there within ``reference_mult`` budgets).

    ``split`` is ``train`` by default, as in VeLO: these metrics credit an optimizer with
    its best loss so far, and a best-so-far *test* loss picks each run's stopping point on
    the test set (optimistic, and most for whichever optimizer overfits). Test loss is
    reported at the budget instead (:func:`summarise`), where nothing is selected.
    """
    from lopt.analysis.metrics import best_loss_at, best_so_far, speedup, steps_to_target

    def matrix(df):
        df = df[df["split"] == split].pivot_table(index="seed", columns="step", values="loss")
        return df.columns.to_numpy(), df.to_numpy()

    rows = []
    task = curves["task"].iloc[0]
    if not reference.empty:
        ref_steps, ref_losses = matrix(reference)
        own = curves[curves["optimizer"] == reference["optimizer"].iloc[0]]
        target_steps, target_losses = matrix(own) if not own.empty else (ref_steps, ref_losses)
        target = float(np.mean(best_loss_at(target_steps, target_losses, budget)))
    for name, grp in curves.groupby("optimizer", sort=False):
        steps, losses = matrix(grp)
        final = best_loss_at(steps, losses, budget)
        row = {"task": task, "optimizer": name, "split": split, "best_loss": float(np.mean(final))}
        if not reference.empty:
            mean_curve = best_so_far(losses).mean(axis=0)
            row["target"] = target
            row["steps_to_target"] = float(steps_to_target(steps, mean_curve, target))
            value, censored = speedup(ref_steps, ref_losses, row["best_loss"], budget)
            row["speedup"], row["censored"] = float(value), bool(censored)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Final-step loss/accuracy per (task, optimizer, split): mean, std, sem over seeds."""
    evals = curves[curves["split"] != "train_batch"]
    last = evals[evals["step"] == evals.groupby(["task", "optimizer"])["step"].transform("max")]
    keys = [k for k in ("task", "optimizer", "learning_rate", "schedule", "split") if k in last]  # older curves: no schedule
    g = last.groupby(keys, dropna=False)
    out = g.agg(
        loss_mean=("loss", "mean"),
        loss_std=("loss", "std"),
        accuracy_mean=("accuracy", "mean"),
        num_seeds=("seed", "nunique"),
    ).reset_index()
    out["loss_sem"] = out["loss_std"] / np.sqrt(out["num_seeds"])
    return out


class BaselinesError(ValueError):
    """Baseline results (``lopt baselines``) that do not fit the evaluation asking for them;
    the message names the file, the differing settings and the fix."""


def baseline_settings(cfg: Any, task_name: str) -> dict[str, Any]:
    """Everything the baselines of evaluation task ``task_name`` depend on, as JSON values.

    :func:`run_baselines` records it; :func:`run_evaluation` refuses baseline results
    recorded under other settings. The data root is left out: the same data can be read
    from another place (a job's copy under a Snakemake storage provider).
    """
    ev = cfg.evaluation
    spec = _eval_spec(cfg, task_name)
    return {
        "task_name": task_name,
        "task": spec.task.model_dump(mode="json"),
        "num_steps": spec.num_steps or ev.num_steps,
        "data": {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "root"},
        "precision": cfg.compute.precision,
        **{k: v for k, v in ev.model_dump(mode="json").items() if k not in ("tasks", "num_steps")},
    }


def _eval_spec(cfg: Any, task_name: str) -> Any:
    spec = {t.name: t for t in cfg.evaluation.tasks}
    if task_name not in spec:
        raise ValueError(f"unknown evaluation task {task_name!r}; configured: {', '.join(spec)}")
    return spec[task_name]


def _build(cfg: Any, task_name: str) -> tuple[Task, Any, int]:
    """The evaluation task ``task_name``, its data and its step budget."""
    from lopt.tasks import build_task

    ev, spec = cfg.evaluation, _eval_spec(cfg, task_name)
    task, data = build_task(
        spec.task, cfg.data.root, ev.eval_batch_size, precision=cfg.compute.precision, data_cfg=cfg.data
    )
    return task, data, spec.num_steps or ev.num_steps


def _baselines(cfg: Any, task_name: str, task: Task, data: Any, num_steps: int):
    """:func:`tune_and_report_baselines` under ``cfg``; says on stderr when a rate is a grid edge."""
    ev = cfg.evaluation
    curves, sweep, reference = tune_and_report_baselines(
        task, task_name, data, list(ev.baselines), ev.lr_grid, num_steps, ev.num_seeds, ev.seed_offset,
        ev.eval_every, tuple(ev.schedules),
    )
    for name, lr in grid_edge_selections(sweep).items():
        # the comparison is only as fair as the tuning: say so where the tuning runs
        print(
            f"lopt: {task_name}: tuned {name} selected learning rate {lr:.3g}, an edge of "
            f"evaluation.lr_grid [{ev.lr_grid.low:g}, {ev.lr_grid.high:g}]; the best rate may lie "
            "outside it (widen evaluation.lr_grid to check)",
            file=sys.stderr,
        )
    return curves, sweep, reference


def _write_csvs(out_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """``<name>.csv`` for each table, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        tmp = out_dir / f".{name}.csv.tmp"
        df.to_csv(tmp, index=False)
        tmp.replace(out_dir / f"{name}.csv")


BASELINE_TABLES = ("curves", "sweep", "reference")


def run_baselines(cfg: Any, task_name: str, out_dir: str | Path, tracker: Any = None) -> pd.DataFrame:
    """CLI entry (``lopt baselines``): tune and report the baselines on eval task ``task_name``.

    Writes ``curves.csv``, ``sweep.csv``, ``reference.csv`` (the reference's long run) and
    last ``settings.json`` (:func:`baseline_settings`) into ``out_dir``, for
    ``lopt evaluate --baselines out_dir``; returns the baselines' summary.
    """
    task, data, num_steps = _build(cfg, task_name)
    curves, sweep, reference = _baselines(cfg, task_name, task, data, num_steps)
    out_dir = Path(out_dir)
    _write_csvs(out_dir, {"curves": curves, "sweep": sweep, "reference": reference})
    tmp = out_dir / ".settings.json.tmp"
    # "config": the whole resolved config, as meta-training records it, for the workflow's
    # check of pulled outputs (workflow/rules/common.smk, outdated_by_config)
    record = {"settings": baseline_settings(cfg, task_name), "config": cfg.to_dict()}
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(out_dir / "settings.json")  # last: a directory without it is incomplete
    summary = summarise(curves)
    if tracker is not None:
        tracker.log_table(f"baselines/{task_name}/summary", summary)
        tracker.log_table(f"baselines/{task_name}/sweep", sweep)
    return summary


def load_baselines(directory: str | Path, settings: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(curves, sweep, reference)`` written by :func:`run_baselines` into ``directory``,
    exactly as :func:`tune_and_report_baselines` returned them.

    Raises :class:`BaselinesError` when ``directory``'s ``settings.json`` differs from
    ``settings`` (naming the differing keys), ``FileNotFoundError`` when it has none.
    """
    directory = Path(directory)
    recorded_path = directory / "settings.json"
    if not recorded_path.is_file():
        raise FileNotFoundError(f"{recorded_path}: not found; write the baselines with "
                                f"`lopt baselines --task {settings['task_name']} --out {directory}`")
    try:
        recorded = json.loads(recorded_path.read_text())["settings"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BaselinesError(f"{recorded_path}: unreadable ({type(exc).__name__}: {exc}); "
                             "re-run `lopt baselines`") from None
    differ = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
    if differ:
        def show(d: dict[str, Any], k: str) -> str:
            return repr(d[k]) if k in d else "absent"

        diffs = "; ".join(f"{k}: {show(recorded, k)} there, {show(settings, k)} here" for k in differ)
        raise BaselinesError(f"{recorded_path}: baselines computed under other settings ({diffs}); "
                             "re-run `lopt baselines` with this config (snakemake does)")

    def read(name: str) -> pd.DataFrame:
        try:
            df = pd.read_csv(directory / f"{name}.csv")
        except pd.errors.EmptyDataError:  # an empty table (no reference optimizer) has no header
            return pd.DataFrame()
        if "loss" in df:
            df["loss"] = df["loss"].astype(np.float32)  # as trained: float32 (the text round-trips)
        return df

    curves, sweep, reference = (read(name) for name in BASELINE_TABLES)
    return curves, sweep, reference


def run_evaluation(
    cfg: Any, task_name: str, pretrained: Any, out_dir: str | Path, tracker: Any = None,
    baselines: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """CLI entry: evaluate the trained optimizer and baselines on eval task ``task_name``.

    ``pretrained`` is a :class:`~lopt.optimizers.pretrained.Pretrained`, loaded with
    ``load_pretrained(path, fallback=cfg.lopt)``: the architecture comes from the
    checkpoint's own metadata, so any saved optimizer evaluates under this config's tasks,
    whatever this config's ``lopt:`` section says (see :mod:`lopt.artifacts` for resolving
    DVC and W&B references to a local file). ``baselines``: this task's baselines under
    this config, as :func:`load_baselines` returns them (it checks that); without them the
    baselines are tuned and trained here, with the same programs and results.

    Writes ``curves.csv``, ``sweep.csv``, ``summary.csv`` and ``metrics.csv`` into
    ``out_dir``; returns the summary.
    """
    task, data, num_steps = _build(cfg, task_name)
    ev, distribution = cfg.evaluation, _eval_spec(cfg, task_name).distribution
    learned = {"lopt": pretrained.to_optax(num_steps)}
    curves = report_learned(task, task_name, data, learned, num_steps, ev.num_seeds, ev.seed_offset, ev.eval_every)
    base_curves, sweep, reference = baselines or _baselines(cfg, task_name, task, data, num_steps)
    curves = pd.concat([curves, base_curves], ignore_index=True)
    summary = summarise(curves)
    summary.insert(1, "distribution", distribution)
    summary["lr_at_grid_edge"] = summary["optimizer"].isin(grid_edge_selections(sweep))
    speed = task_metrics(curves, reference, num_steps)
    speed.insert(1, "distribution", distribution)
    _write_csvs(Path(out_dir), {"curves": curves, "sweep": sweep, "summary": summary, "metrics": speed})
    if tracker is not None:
        tracker.log_table(f"eval/{task_name}/summary", summary)
        tracker.log_table(f"eval/{task_name}/sweep", sweep)
        tracker.log_table(f"eval/{task_name}/metrics", speed)
        for row in summary.itertuples():
            tracker.summary({f"eval/{task_name}/{row.optimizer}/{row.split}_loss": row.loss_mean})
    return summary
