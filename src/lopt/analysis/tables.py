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
