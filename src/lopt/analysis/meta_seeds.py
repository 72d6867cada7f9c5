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
from lopt.analysis.tables import CENSORED_NOTE, generalization_frame

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
    """Mean and sample s.d. (ddof 1; NaN for one value) of the non-NaN ``values``; +inf when one
    is +inf (a diverged seed is not averaged away)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if np.isinf(values).any():
        return float("inf"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")


def _cell(x: float, lower_bound: bool = False) -> str:
    """A number to 3 significant digits; "-" when absent, "diverged" when +inf, "+" when a lower bound."""
    if np.isnan(x):
        return "-"
    if np.isinf(x):
        return "diverged"
    return f"{x:.3g}{'+' if lower_bound else ''}"


def _spread(mean: float, sd: float, lower_bound: bool = False) -> str:
    return _cell(mean, lower_bound) + ("" if np.isnan(sd) else f" ± {sd:.2g}")




def meta_seed_table(frame: pd.DataFrame, split: str = "test") -> str:
    """Markdown: per task, each meta-seed's loss ratio and speed-up (``-`` where a seed lacks
    the task), their mean ± s.d. and wins; per distribution group and seed, the tasks it has,
    its wins, median ratio and IQM speed-up."""
    if frame.empty:
        return "No meta-seed has both a learned optimizer and a baseline on any task.\n"
    seeds = sorted(frame["meta_seed"].unique())
    seed_list = " / ".join(map(str, seeds))
    lines = [
        (f"{len(seeds)} optimizers meta-trained from seeds {seed_list}, each evaluated against the same tuned "
         f"baselines. Ratio: final {split} loss over the best tuned baseline's (< 1: the learned optimizer "
         "is better); speed-up: over learning-rate-tuned Adam on training loss. "
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
        rows = frame[frame["task"] == task].set_index("meta_seed").reindex(seeds)  # a seed without it: NaN
        censored = rows["censored"].fillna(False).astype(bool)
        ratio_mean, ratio_sd = _mean_sd(rows["ratio"].to_numpy())
        speed_mean, speed_sd = _mean_sd(rows["speedup"].to_numpy())
        lines.append(
            f"| {dist} | {task} | {' / '.join(_cell(r) for r in rows['ratio'])} | "
            f"{_spread(ratio_mean, ratio_sd)} | {int(rows['win'].fillna(False).astype(bool).sum())} of "
            f"{int(rows['ratio'].notna().sum())} | "
            f"{' / '.join(_cell(v, c) for v, c in zip(rows['speedup'], censored))} | "
            f"{_spread(speed_mean, speed_sd, bool(censored.any()))} |"
        )
    lines += [
        "",
        (f"| distribution | tasks, seed {seed_list} | wins, seed {seed_list} | median ratio, seed {seed_list} | "
         f"IQM speed-up, seed {seed_list} | IQM speed-up mean ± s.d. |"),
        "|---|---|---|---|---|---|",
    ]
    groups = group_statistics(frame)
    for dist, grp in groups.groupby("distribution", sort=False):
        grp = grp.set_index("meta_seed").reindex(seeds)
        mean, sd = _mean_sd(grp["iqm_speedup"].to_numpy())
        lines.append(
            f"| {dist} | {' / '.join(_cell(t) for t in grp['tasks'])} | "
            f"{' / '.join(_cell(w) for w in grp['wins'])} | "
            f"{' / '.join(_median_cell(m, d) for m, d in zip(grp['median_ratio'], grp['diverged']))} | "
            f"{' / '.join(_cell(v, c > 0) for v, c in zip(grp['iqm_speedup'], grp['censored']))} | "
            f"{_spread(mean, sd, bool((grp['censored'] > 0).any()))} |"
        )
    if frame["censored"].any():
        lines += ["", CENSORED_NOTE]
    return "\n".join(lines) + "\n"


def _median_cell(median: float, diverged: float) -> str:
    """The group's median ratio; when diverged tasks make it infinite, how many diverged."""
    if np.isinf(median):
        return f"inf ({int(diverged)} diverged)"
    return _cell(median)


def group_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (distribution group incl. ``all``, meta-seed): tasks, wins, diverged tasks (ratio
    +inf), median loss ratio, IQM speed-up over the group's tasks (censored speed-ups count at
    their lower bound, as in :func:`lopt.analysis.tables.across_tasks`) and how many were
    censored (the IQM is then a lower bound)."""
    both = pd.concat([frame, frame.assign(distribution="all")], ignore_index=True)
    rows = []
    for (dist, seed), grp in both.groupby(["distribution", "meta_seed"], sort=False):
        rows.append({
            "distribution": dist,
            "meta_seed": seed,
            "tasks": len(grp),
            "wins": int(grp["win"].sum()),
            "diverged": int(np.isinf(grp["ratio"]).sum()),
            "median_ratio": float(np.median(grp["ratio"])),
            "iqm_speedup": iqm(grp["speedup"]),
            "censored": int(grp["censored"].sum()),
        })
    order = {"in": 0, "out": 1, "all": 2}
    out = pd.DataFrame(rows)
    return out.sort_values(["distribution", "meta_seed"], key=lambda c: c.map(order).fillna(1.5) if c.name == "distribution" else c,
                           kind="stable", ignore_index=True)
