"""Spread across meta-training seeds: how much of a learned optimizer's result is its draw.

Meta-training is chaotic (the README's family section: the same configuration, rounded
differently, gives a different optimizer), so one meta-trained optimizer is one draw. With
``num_meta_seeds: n`` the pipeline meta-trains ``n`` optimizers from seeds ``seed .. seed +
n - 1`` and evaluates each against the same tuned baselines (the baselines do not depend on
the meta-seed); this module puts their per-task results side by side.

Per (meta-seed, task): the final test-loss ratio to the best tuned baseline
(:func:`lopt.analysis.tables.generalization_frame`) and the speed-up over tuned Adam
(``metrics.csv``, :func:`lopt.evaluate.task_metrics`). Across meta-seeds: the mean and
sample standard deviation (ddof 1) of each, and how many seeds win. A diverged optimizer's
ratio is +inf and makes the mean +inf: a seed that breaks is not averaged away.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from lopt.analysis.aggregate import iqm
from lopt.analysis.tables import generalization_frame

COLUMNS = ["meta_seed", "task", "distribution", "ratio", "win", "best_baseline", "speedup", "censored"]


def meta_seed_frame(
    summaries: Mapping[int, pd.DataFrame],
    metrics: Mapping[int, pd.DataFrame],
    split: str = "test",
    learned: str = "lopt",
) -> pd.DataFrame:
    """One row per (meta-seed, task) with the columns :data:`COLUMNS`.

    Args:
        summaries: meta-seed -> the evaluation summaries of that seed's optimizer (all
            tasks concatenated; the ``summary.csv`` columns).
        metrics: meta-seed -> the per-task metrics (``metrics.csv`` columns); the
            ``learned`` row's ``speedup`` and ``censored`` are taken.
        split: the split the loss ratio compares (final loss, as the generalization table).
    """
    frames = []
    for seed in sorted(summaries):
        frame = generalization_frame(summaries[seed], split, learned)
        if frame.empty:
            continue
        m = metrics[seed]
        mine = m[m["optimizer"] == learned].set_index("task")
        frames.append(
            frame.assign(
                meta_seed=seed,
                speedup=frame["task"].map(mine["speedup"]).astype(float),
                censored=frame["task"].map(mine["censored"]).fillna(False).astype(bool),
            )[COLUMNS]
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample s.d. (ddof 1; NaN for one seed); +inf when a seed's value is +inf."""
    values = np.asarray(values, dtype=float)
    if np.isinf(values).any():
        return float("inf"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")


def _number(x: float) -> str:
    return "diverged" if np.isinf(x) else f"{x:.3g}"


def _speedup(x: float, censored: bool) -> str:
    return f"{x:.3g}+" if censored else f"{x:.3g}"


def meta_seed_table(frame: pd.DataFrame, split: str = "test") -> str:
    """Markdown: per task, each meta-seed's loss ratio and speed-up, their mean ± s.d. and wins;
    per distribution group, each seed's win count, median ratio and IQM speed-up."""
    if frame.empty:
        return "No meta-seed has both a learned optimizer and a baseline on any task.\n"
    seeds = sorted(frame["meta_seed"].unique())
    seed_list = " / ".join(map(str, seeds))
    lines = [
        (f"{len(seeds)} optimizers meta-trained from seeds {seed_list}, each evaluated against the same tuned "
        f"baselines. Ratio: final {split} loss over the best tuned baseline's (< 1: the learned optimizer "
        "is better); speed-up: over learning-rate-tuned Adam on training loss (+: a lower bound). "
        "Mean ± sample s.d. across meta-seeds."),
        "",
        (f"| distribution | task | ratio, seed {seed_list} | ratio mean ± s.d. | wins | "
        f"speed-up, seed {seed_list} | speed-up mean ± s.d. |"),
        "|---|---|---|---|---|---|---|",
    ]
    order = {"in": 0, "out": 1}
    tasks = frame.drop_duplicates("task")[["task", "distribution"]]
    tasks = tasks.sort_values("distribution", key=lambda d: d.map(order).fillna(2), kind="stable")
    for task, dist in tasks.itertuples(index=False):
        rows = frame[frame["task"] == task].sort_values("meta_seed")
        ratio_mean, ratio_sd = _mean_sd(rows["ratio"].to_numpy())
        speed_mean, speed_sd = _mean_sd(rows["speedup"].to_numpy())
        lines.append(
            f"| {dist} | {task} | {' / '.join(_number(r) for r in rows['ratio'])} | "
            f"{_number(ratio_mean)} ± {ratio_sd:.2g} | {int(rows['win'].sum())} of {len(rows)} | "
            f"{' / '.join(_speedup(s, c) for s, c in zip(rows['speedup'], rows['censored']))} | "
            f"{_number(speed_mean)} ± {speed_sd:.2g} |"
        )
    lines += [
        "",
        (f"| distribution | tasks | wins, seed {seed_list} | median ratio, seed {seed_list} | "
        f"IQM speed-up, seed {seed_list} | IQM speed-up mean ± s.d. |"),
        "|---|---|---|---|---|---|",
    ]
    for dist, grp in group_statistics(frame).groupby("distribution", sort=False):
        mean, sd = _mean_sd(grp["iqm_speedup"].to_numpy())
        lines.append(
            f"| {dist} | {int(grp['tasks'].iloc[0])} | {' / '.join(str(int(w)) for w in grp['wins'])} | "
            f"{' / '.join(_number(r) for r in grp['median_ratio'])} | "
            f"{' / '.join(f'{s:.3g}' for s in grp['iqm_speedup'])} | {_number(mean)} ± {sd:.2g} |"
        )
    return "\n".join(lines) + "\n"


def group_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (distribution group incl. ``all``, meta-seed): tasks, wins, median loss ratio and
    IQM speed-up over the group's tasks (censored speed-ups count at their lower bound, as
    in :func:`lopt.analysis.tables.across_tasks`)."""
    both = pd.concat([frame, frame.assign(distribution="all")], ignore_index=True)
    rows = []
    for (dist, seed), grp in both.groupby(["distribution", "meta_seed"], sort=False):
        rows.append({
            "distribution": dist,
            "meta_seed": seed,
            "tasks": len(grp),
            "wins": int(grp["win"].sum()),
            "median_ratio": float(np.median(grp["ratio"])),
            "iqm_speedup": iqm(grp["speedup"]),
        })
    order = {"in": 0, "out": 1, "all": 2}
    out = pd.DataFrame(rows)
    return out.sort_values(["distribution", "meta_seed"], key=lambda c: c.map(order).fillna(1.5) if c.name == "distribution" else c,
                           kind="stable", ignore_index=True)
