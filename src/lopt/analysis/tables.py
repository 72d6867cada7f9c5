"""Markdown tables from evaluation summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd


def final_loss_table(summary: pd.DataFrame, splits: tuple[str, ...] = ("train", "test")) -> str:
    """Markdown table: one row per (task, optimizer), final loss mean ± sem per split.

    The best (lowest mean) entry of each task and split is bold.
    """
    rows = []
    for (task, opt), grp in summary.groupby(["task", "optimizer"], sort=False):
        lr = grp["learning_rate"].iloc[0]
        row = {"task": task, "optimizer": opt, "lr": "learned" if np.isnan(lr) else f"{lr:.3g}"}
        for split in splits:
            s = grp[grp["split"] == split]
            row[split] = (float(s["loss_mean"].iloc[0]), float(s["loss_sem"].iloc[0])) if len(s) else (np.nan, np.nan)
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
            mean, sem = row[split]
            text = f"{mean:.4f} ± {sem:.4f}"
            cells.append(f"**{text}**" if mean == best.get((row["task"], split)) else text)
        cells.append(f"{row['test acc']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
