"""The CLI's evaluation jobs, a config in and files out: ``lopt baselines``
(:func:`run_baselines`) and ``lopt evaluate`` (:func:`run_evaluation`).

Each table is written whole or not at all; baseline results record the settings they
depend on (:func:`baseline_settings`), and :func:`load_baselines` refuses any recorded
under other settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lopt.atomic import write_csv, write_text
from lopt.evaluate.baselines import grid_edge_selections, tune_and_report_baselines
from lopt.evaluate.runs import report_learned
from lopt.evaluate.summary import summarise, task_metrics
from lopt.optimizers import update_rule
from lopt.tasks.base import Task
from lopt.tasks.mup import with_update_scales


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
    """:func:`~lopt.evaluate.baselines.tune_and_report_baselines` under ``cfg``; says on stderr when a rate is a grid edge."""
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


def _write_csvs(out_dir: Path, tables: dict[str, pd.DataFrame], marker: str | None = None) -> None:
    """``<name>.csv`` for each table, each written whole or not at all.

    The previous set is removed first (``marker`` before anything else): a rerun killed
    part-way leaves an incomplete set that every reader refuses, never new tables beside
    old ones (or old baselines under a settings file that no longer describes them).
    """
    for name in ([marker] if marker else []) + [f"{name}.csv" for name in tables]:
        (out_dir / name).unlink(missing_ok=True)
    for name, df in tables.items():
        write_csv(out_dir / f"{name}.csv", df)


BASELINE_TABLES = ("curves", "sweep", "reference")


def run_baselines(cfg: Any, task_name: str, out_dir: str | Path, tracker: Any = None) -> pd.DataFrame:
    """CLI entry (``lopt baselines``): tune and report the baselines on eval task ``task_name``.

    Writes ``curves.csv``, ``sweep.csv``, ``reference.csv`` (the reference's long runs, one per grid rate) and
    last ``settings.json`` (:func:`baseline_settings`) into ``out_dir``, for
    ``lopt evaluate --baselines out_dir``; returns the baselines' summary.
    """
    task, data, num_steps = _build(cfg, task_name)
    curves, sweep, reference = _baselines(cfg, task_name, task, data, num_steps)
    out_dir = Path(out_dir)
    _write_csvs(out_dir, {"curves": curves, "sweep": sweep, "reference": reference}, marker="settings.json")
    # "config": the whole resolved config, as meta-training records it, for the workflow's
    # check of pulled outputs (workflow/rules/common.smk, outdated_by_config)
    record = {"settings": baseline_settings(cfg, task_name), "config": cfg.to_dict()}
    write_text(out_dir / "settings.json", json.dumps(record, indent=1, sort_keys=True) + "\n")  # last: the marker
    summary = summarise(curves)
    if tracker is not None:
        tracker.log_table(f"baselines/{task_name}/summary", summary)
        tracker.log_table(f"baselines/{task_name}/sweep", sweep)
    return summary


def load_baselines(directory: str | Path, settings: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(curves, sweep, reference)`` written by :func:`run_baselines` into ``directory``,
    exactly as :func:`~lopt.evaluate.baselines.tune_and_report_baselines` returned them.

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
        if not isinstance(recorded, dict):
            raise TypeError(f"'settings' is a {type(recorded).__name__}, not an object")
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

    from lopt.analysis.results import BASELINE_CURVES, BASELINE_SWEEP, read_result

    def read(name: str) -> pd.DataFrame:
        # an empty, torn or foreign table is an error naming the file, never "no baselines";
        # only the reference runs may be empty (no reference optimizer configured)
        kind = BASELINE_SWEEP if name == "sweep" else BASELINE_CURVES
        df = read_result(directory / f"{name}.csv", kind, may_be_empty=name == "reference")
        if "loss" in df:
            df["loss"] = df["loss"].astype(np.float32)  # as trained: float32 (the text round-trips)
        return df

    curves, sweep, reference = (read(name) for name in BASELINE_TABLES)
    return curves, sweep, reference


def learned_optimizer(task: Task, pretrained: Any, num_steps: int) -> Any:
    """``pretrained``'s optimizer for ``num_steps`` steps of ``task``, with the task's muP
    learning-rate multipliers for it if the task is muP (:mod:`lopt.tasks.mup`)."""
    return with_update_scales(task, pretrained.to_optax(num_steps), update_rule(pretrained.lopt))


def parametrization_mismatch(pretrained: Any, task_cfg: Any) -> str | None:
    """A warning when ``pretrained`` was meta-trained on MLPs of another parametrization (or
    muP base width) than the MLP task ``task_cfg``: its steps are then off by about the
    width ratio. None when they agree, or when either side has no MLP to compare."""
    def label(t: dict) -> str:
        par, base = t.get("parametrization", "standard"), t.get("mup_base_width", 1)
        return par if par == "standard" else f"mup (base width {base})"

    seen = {label(t) for t in pretrained.metadata.get("meta_train_tasks", []) if t.get("kind") == "image_mlp"}
    if getattr(task_cfg, "kind", None) != "image_mlp" or not seen:
        return None
    here = label(task_cfg.model_dump())
    if here in seen:
        return None
    return (f"lopt: warning: this task's MLP is {here}, but the optimizer was meta-trained on {', '.join(sorted(seen))} "
            "MLPs (lopt.tasks.mup): its steps may be off by about the width ratio")


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
    if (warning := parametrization_mismatch(pretrained, _eval_spec(cfg, task_name).task)) is not None:
        print(warning, file=sys.stderr)
    learned = {"lopt": learned_optimizer(task, pretrained, num_steps)}
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
