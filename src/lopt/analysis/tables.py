"""Markdown tables from evaluation summaries."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

GRID_EDGE_NOTE = "selected at an edge of the learning-rate grid: the best rate may lie outside it."
CENSORED_NOTE = (
    "+: a lower bound. No rate of tuned Adam reached the optimizer's loss within 4x the budget, so the "
    "speed-up is censored, and a mean, median, IQM or bootstrap bound over values that include one is a "
    "lower bound too (none of them falls when a value grows)."
)


def final_loss_table(summary: pd.DataFrame, splits: tuple[str, ...] = ("train", "test")) -> str:
    """Markdown table: one row per (task, optimizer), final loss mean ± sem per split.

    The best (lowest mean) entry of each task and split is bold; a tuned rate selected at
    an edge of the learning-rate grid (summary column ``lr_at_grid_edge``) gets a dagger
    and a footnote.
    """
    rows = []
    for (task, opt), grp in summary.groupby(["task", "optimizer"], sort=False):
        lr = grp["learning_rate"].iloc[0]
        edge = bool(grp["lr_at_grid_edge"].iloc[0]) if "lr_at_grid_edge" in grp else False
        row = {"task": task, "optimizer": opt, "lr": "learned" if np.isnan(lr) else f"{lr:.3g}" + " †" * edge}
        for split in splits:
            s = grp[grp["split"] == split]
            row[split] = _mean_sem(s)
        acc = grp[grp["split"] == "test"]["accuracy_mean"]
        row["test acc"] = float(acc.iloc[0]) if len(acc) else np.nan
        rows.append(row)
    best = {}
    for row in rows:
        for split in splits:
            key = (row["task"], split)
            if not np.isnan(row[split][0]) and row[split][0] < best.get(key, np.inf):
                best[key] = row[split][0]
    header = ["task", "optimizer", "lr", *[f"final {s} loss" for s in splits], "test acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["task"], row["optimizer"], row["lr"]]
        for split in splits:
            text = _loss_cell(*row[split])
            cells.append(f"**{text}**" if row[split][0] == best.get((row["task"], split)) else text)
        cells.append(f"{row['test acc']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["lr"].endswith("†") for row in rows):
        lines += ["", f"† {GRID_EDGE_NOTE}"]
    return "\n".join(lines) + "\n"


def _mean_sem(rows: pd.DataFrame) -> tuple[float, float, int, int]:
    """(mean, sem, diverged seeds, seeds) of a summary's one row for a split; NaNs if none.
    Summaries written before ``num_diverged`` existed count no diverged seeds."""
    if rows.empty:
        return np.nan, np.nan, 0, 0
    r = rows.iloc[0]
    return float(r["loss_mean"]), float(r["loss_sem"]), int(r.get("num_diverged", 0)), int(r.get("num_seeds", 0))


def _loss_cell(mean: float, sem: float, diverged: int = 0, seeds: int = 0) -> str:
    """``mean ± sem``; a mean made infinite by diverged seeds says how many diverged."""
    if np.isinf(mean) and diverged:
        return f"diverged ({diverged} of {seeds} seeds)"
    return f"{mean:.4f} ± {sem:.4f}"


def _distribution(summary: pd.DataFrame) -> pd.Series:
    # summaries written before evaluation tasks carried a distribution label
    if "distribution" not in summary:
        return pd.Series("unlabelled", index=summary.index)
    return summary["distribution"].fillna("unlabelled")


def generalization_frame(summary: pd.DataFrame, split: str = "test", learned: str = "lopt") -> pd.DataFrame:
    """Per task: the learned optimizer's final ``split`` loss against the best tuned baseline.

    Columns: task, distribution, learned_loss, best_baseline, baseline_loss, ratio
    (learned / best baseline: < 1 means the learned optimizer reached a lower loss), win.
    """
    s = summary.assign(distribution=_distribution(summary))
    s = s[s["split"] == split]
    rows = []
    for task, grp in s.groupby("task", sort=False):
        mine = grp[grp["optimizer"] == learned]
        others = grp[grp["optimizer"] != learned].dropna(subset=["loss_mean"])
        if mine.empty or others.empty:
            continue
        best = others.loc[others["loss_mean"].idxmin()]
        loss = float(mine["loss_mean"].iloc[0])
        rows.append(
            {
                "task": task,
                "distribution": mine["distribution"].iloc[0],
                "learned_loss": loss,
                "best_baseline": best["optimizer"],
                "baseline_loss": float(best["loss_mean"]),
                "ratio": loss / float(best["loss_mean"]),
                "win": loss < float(best["loss_mean"]),
            }
        )
    return pd.DataFrame(rows)


def generalization_table(summary: pd.DataFrame, split: str = "test", learned: str = "lopt") -> str:
    """Markdown: in- and out-of-distribution tasks side by side, per task and per group.

    Each task's row compares the learned optimizer's final ``split`` loss (mean over
    seeds) with the best learning-rate-tuned baseline on that task; the group rows count
    wins and give the median ratio. Nothing is filtered: every evaluated task appears.
    """
    frame = generalization_frame(summary, split, learned)
    if frame.empty:
        return f"No task has both `{learned}` and a baseline on split `{split}`.\n"
    order = {"in": 0, "out": 1}
    frame = frame.sort_values("distribution", key=lambda d: d.map(order).fillna(2), kind="stable")
    lines = [
        f"| distribution | task | {learned} final {split} loss | best tuned baseline | its loss | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        lines.append(
            f"| {r.distribution} | {r.task} | {r.learned_loss:.4f} | {r.best_baseline} | "
            f"{r.baseline_loss:.4f} | {r.ratio:.3f}{' (win)' if r.win else ''} |"
        )
    lines += ["", "| distribution | tasks | wins | median ratio |", "|---|---|---|---|"]
    for dist, grp in frame.groupby("distribution", sort=False):
        lines.append(f"| {dist} | {len(grp)} | {int(grp['win'].sum())} | {grp['ratio'].median():.3f} |")
    return "\n".join(lines) + "\n"


def tradeoffs_table(rows: pd.DataFrame) -> str:
    """Markdown of ``benchmarks/lopt_overhead.py``'s measurements (one row per optimizer and N).

    The "practical trade-offs" table of Metz et al. (2022): meta-parameters, optimizer
    state per parameter, XLA's per-update memory plan per parameter, and time per update
    relative to Adam at the same size.
    """
    lines = [
        "| optimizer | N | meta-params | state floats / param | XLA bytes / param | ms / update | time vs Adam |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows.to_dict("records"):
        lines.append(
            f"| {r['optimizer']} | {r['num_params']:.1e} | {int(r['num_meta_params']):,} | "
            f"{r['state_floats_per_param']:.2f} | {r['xla_bytes_per_param']:.0f} | "
            f"{r['ms_per_update']:.3g} | {r['time_vs_adam']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def across_tasks(metrics: pd.DataFrame, reference: str = "adam") -> pd.DataFrame:
    """Per optimizer and distribution group (and ``all``): median / IQM across tasks, 95 % CIs.

    Two per-task quantities are aggregated: ``speedup`` (VeLOdrome: steps tuned
    ``reference`` needs to reach the optimizer's loss, over the budget; censored values
    are lower bounds) and ``loss_ratio`` (the optimizer's best loss over the reference's),
    both on the split :func:`lopt.evaluate.task_metrics` used (training loss). Intervals are percentile bootstraps over tasks
    (:func:`lopt.analysis.aggregate.aggregate`), so with few tasks they are wide, as they
    should be.
    """
    from lopt.analysis.aggregate import aggregate

    m = metrics.copy()
    ref = m[m["optimizer"] == reference].set_index("task")["best_loss"]
    m["loss_ratio"] = m["best_loss"] / m["task"].map(ref)
    m = pd.concat([m, m.assign(distribution="all")], ignore_index=True)
    frames = []
    for value in ("speedup", "loss_ratio"):
        if value in m:
            frame = aggregate(m, value, ["distribution", "optimizer"]).assign(metric=value, censored=0)
            if value == "speedup" and "censored" in m:
                # a censored speed-up is a lower bound, and median, IQM and their bootstrap
                # quantiles never decrease when a value grows: with one in the group, every
                # statistic of the group is a lower bound too
                counts = m[m["speedup"].notna()].groupby(["distribution", "optimizer"])["censored"].sum()
                keys = pd.MultiIndex.from_frame(frame[["distribution", "optimizer"]])
                frame["censored"] = counts.reindex(keys).fillna(0).astype(int).to_numpy()
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def across_tasks_table(agg: pd.DataFrame, latex: bool = False) -> str:
    """Markdown (or LaTeX) of :func:`across_tasks`: IQM [95 % CI] and median per cell.

    A group with a censored speed-up marks its speed-up statistics "+" (lower bounds);
    rows over fewer than 4 tasks get a note (in LaTeX also a visible footnote line) that
    their "CI" is the range of the tasks.
    """
    rows = []
    censored = 0
    for (dist, opt), grp in agg.groupby(["distribution", "optimizer"], sort=False):
        row = {"distribution": dist, "optimizer": opt, "tasks": int(grp["n"].max())}
        for r in grp.itertuples():
            plus = "+" if getattr(r, "censored", 0) else ""
            censored = max(censored, getattr(r, "censored", 0))
            row[f"{r.metric} IQM [95% CI]"] = f"{r.iqm:.3g}{plus} [{r.iqm_low:.3g}{plus}, {r.iqm_high:.3g}{plus}]"
            row[f"{r.metric} median"] = f"{r.median:.3g}{plus}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = {"in": 0, "out": 1, "all": 2}
    frame = frame.sort_values("distribution", key=lambda d: d.map(order).fillna(3), kind="stable")
    notes = [_few_tasks_note(int(frame["tasks"].min())) if len(frame) else ""]
    if censored:
        notes.append(CENSORED_NOTE)
    notes = [n for n in notes if n]
    if latex:
        # the notes as visible text under the table, not as % comments a reader never sees
        table = frame.to_latex(index=False, escape=True)
        text = "".join(f"{{\\par\\noindent\\footnotesize {_latex_escape(n)}\\par}}\n" for n in notes)
        return table + text
    header = "| " + " | ".join(frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def _latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (for notes set as plain text)."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _few_tasks_note(fewest: int) -> str:
    """What IQM and the bootstrap interval mean for rows over fewer than 4 tasks."""
    if fewest >= 4:
        return ""
    # trim_mean(x, 0.25) cuts floor(n / 4) = 0 values when n < 4, and a percentile bootstrap
    # of n <= 3 values puts >= 1/27 > 2.5 % of its resamples at each extreme
    return (
        "Rows over fewer than 4 tasks: the IQM trims nothing (it is the mean), and the "
        "\"95% CI\" is the [min, max] range of the tasks (a range of 3 values covers the "
        "median of their distribution 75 % of the time, not 95 %)."
    )


def summary_latex(summary: pd.DataFrame, split: str = "test") -> str:
    """LaTeX of the final-losses table for ``split``, as :func:`final_loss_table` gives it in
    markdown: per task and optimizer the tuned learning rate ("learned" for the learned
    optimizer; a dagger when selected at an edge of the grid, with its note under the table),
    the final loss mean ± sem (the task's best in bold; diverged seeds named) and accuracy.
    Task and optimizer names are escaped."""
    s = summary[summary["split"] == split]
    best = s.groupby("task")["loss_mean"].min()
    rows, edge_any = [], False
    for i in range(len(s)):
        r = s.iloc[i]
        edge = bool(r.get("lr_at_grid_edge", False))
        edge_any |= edge
        lr = r["learning_rate"]
        cell = _loss_cell(*_mean_sem(s.iloc[[i]])).replace("±", "$\\pm$")
        if np.isfinite(r["loss_mean"]) and r["loss_mean"] == best[r["task"]]:
            cell = f"\\textbf{{{cell}}}"
        rows.append({
            "task": _latex_escape(str(r["task"])),
            "optimizer": _latex_escape(str(r["optimizer"])),
            "lr": "learned" if np.isnan(lr) else f"{lr:.3g}" + ("$^\\dagger$" if edge else ""),
            f"final {split} loss": cell,
            f"{split} accuracy": f"{r['accuracy_mean']:.3f}",
        })
    table = pd.DataFrame(rows).to_latex(index=False, escape=False)
    if edge_any:
        table += f"{{\\par\\noindent\\footnotesize $^\\dagger$ {_latex_escape(GRID_EDGE_NOTE)}\\par}}\n"
    return table
