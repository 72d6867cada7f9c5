"""Matplotlib figures from result tables (headless, deterministic file output)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lopt.atomic import replace_with

# Fixed order and colours so every figure of every experiment reads the same way.
_COLOURS = {
    "lopt": "C3",
    "sgd": "C0",
    "momentum": "C2",
    "adam": "C1",
    "rmsprop": "C4",
    "adamw": "C5",
    "nadamw": "C6",
    "lion": "C7",
    "adafactor": "C8",
}


def _band(values: pd.core.groupby.DataFrameGroupBy, kind: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    mean = values.mean()
    if kind == "minmax":
        return mean, values.min(), values.max()
    spread = values.std().fillna(0.0)
    if kind == "sem":
        spread = spread / np.sqrt(values.count())
    return mean, mean - spread, mean + spread


def _save(fig: plt.Figure, path: Path, dpi: int) -> None:
    # Fixed metadata keeps PNG bytes stable across runs; the format is the real name's
    # (the temporary file's suffix is .tmp).
    path = Path(path)
    try:
        replace_with(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight",
                                                   metadata={"Software": None}))
    finally:
        plt.close(fig)


def plot_meta_training(metrics: pd.DataFrame, path: Path, *, title: str = "", dpi: int = 120, smooth: int = 10) -> None:
    """Meta-loss and meta-gradient norm against outer step (raw and moving average)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, col in zip(axes, ("meta_loss", "grad_norm")):
        ax.plot(metrics["step"], metrics[col], color="0.75", lw=0.8, label="per step")
        window = max(1, min(smooth, len(metrics)))
        ax.plot(metrics["step"], metrics[col].rolling(window, min_periods=1).mean(), color="C3", label=f"mean of {window}")
        ax.set_xlabel("outer step")
        ax.set_ylabel(col.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False)
    fig.suptitle(title or "meta-training")
    _save(fig, path, dpi)


def plot_eval_curves(curves: pd.DataFrame, path: Path, *, band: str = "sem", dpi: int = 120) -> None:
    """One row per task: train-minibatch loss, test loss and test accuracy vs step.

    Lines are seed means; shaded bands are ``band`` (sem, std or minmax) over seeds.
    """
    tasks = list(dict.fromkeys(curves["task"]))
    panels = (("train_batch", "loss", "train loss (minibatch)"), ("test", "loss", "test loss"), ("test", "accuracy", "test accuracy"))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(12, 3.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        sub = curves[curves["task"] == task]
        for col, (split, metric, label) in enumerate(panels):
            ax = axes[row, col]
            for opt in list(dict.fromkeys(sub["optimizer"])):
                d = sub[(sub["optimizer"] == opt) & (sub["split"] == split)]
                if d.empty or d[metric].isna().all():
                    continue
                mean, lo, hi = _band(d.groupby("step")[metric], band)
                lr = d["learning_rate"].iloc[0]
                name = opt if np.isnan(lr) else f"{opt} (lr={lr:.2g})"
                colour = _COLOURS.get(opt)
                ax.plot(mean.index, mean.values, color=colour, label=name)
                ax.fill_between(mean.index, lo.values, hi.values, color=colour, alpha=0.2, lw=0)
            ax.set_title(f"{task}: {label}", fontsize=9)
            ax.set_xlabel("inner step")
            if metric == "loss":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[row, 0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_generalization(frame: pd.DataFrame, path: Path, *, split: str = "test", dpi: int = 120) -> None:
    """Bars of learned / best-tuned-baseline final loss per task, in- and out-of-distribution panels.

    ``frame`` is :func:`lopt.analysis.tables.generalization_frame`'s output; a bar left of
    the dashed line at 1 means the learned optimizer reached a lower loss.
    """
    groups = [g for g in ("in", "out", "unlabelled") if g in set(frame.get("distribution", []))]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5 * max(len(groups), 1), 0.5 + 0.45 * max(len(frame), 1)), squeeze=False)
    titles = {"in": "in-distribution", "out": "out-of-distribution", "unlabelled": "unlabelled"}
    for ax, group in zip(axes[0], groups):
        sub = frame[frame["distribution"] == group]
        y = np.arange(len(sub))
        colors = ["tab:green" if w else "tab:red" for w in sub["win"]]
        ax.barh(y, sub["ratio"], color=colors)
        ax.set_yticks(y, sub["task"])
        ax.axvline(1.0, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"final {split} loss: learned / best tuned baseline")
        ax.set_title(titles[group])
    _save(fig, path, dpi)


def plot_speedups(agg: pd.DataFrame, path: Path, *, dpi: int = 120) -> None:
    """Bars of the IQM speed-up over tuned Adam with 95 % bootstrap CIs, one panel per group.

    ``agg`` is :func:`lopt.analysis.tables.across_tasks`'s output; the dashed line at 1
    is Adam's own speed.
    """
    sub = agg[agg["metric"] == "speedup"]
    groups = [g for g in ("in", "out", "all") if g in set(sub["distribution"])]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4 * max(len(groups), 1), 3.2), squeeze=False, sharey=True)
    titles = {"in": "in-distribution", "out": "out-of-distribution", "all": "all tasks"}
    for ax, group in zip(axes[0], groups):
        g = sub[sub["distribution"] == group]
        x = np.arange(len(g))
        err = np.stack([g["iqm"] - g["iqm_low"], g["iqm_high"] - g["iqm"]])
        ax.bar(x, g["iqm"], yerr=err, capsize=4, color="tab:blue")
        ax.set_xticks(x, g["optimizer"], rotation=30, ha="right")
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_title(f"{titles[group]} (n = {int(g['n'].max())} tasks)")
    axes[0][0].set_ylabel("speed-up over tuned Adam (IQM, 95% CI)")
    _save(fig, path, dpi)
