"""Matplotlib figures from result tables (headless, deterministic file output)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

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
# Adam's variants often trace Adam's curve at the same tuned rate: dashed so Adam stays visible.
_LINESTYLES = {"adamw": "--", "nadamw": ":"}


def _band(values: pd.core.groupby.DataFrameGroupBy, kind: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Seed mean and band per step; the mean is NaN (not drawn) from where any seed is NaN, so a
    diverged seed ends the line instead of leaving a mean of the seeds that survived."""
    mean = values.mean().where(values.count() == values.size())
    if kind == "minmax":
        return mean, values.min().where(mean.notna()), values.max().where(mean.notna())
    spread = values.std().fillna(0.0)
    if kind == "sem":
        spread = spread / np.sqrt(values.count())
    return mean, mean - spread, mean + spread


def _log_axis(ax: plt.Axes, axis: str = "x") -> None:
    """A log scale labelled in plain numbers ("0.5", "2", "10"), more densely the narrower the
    range, so a range inside one decade still gets labels and none overlap as "2x10^0" ones do."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    # as many labels per decade as fit: within one decade 1-1.5-2-3-5-7, within two 1-2-5, else 1
    span = high / low
    subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if span < 10 else (1.0, 2.0, 5.0) if span < 100 else (1.0,)
    target.set_major_locator(ticker.LogLocator(subs=subs))
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(ticker.NullFormatter())


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
    """Meta-loss and meta-gradient norm (as estimated, before any clipping or normalisation;
    log scale) against outer step, raw and as a moving average."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = {"meta_loss": "meta-loss", "grad_norm": "meta-gradient norm (before clipping)"}
    for ax, col in zip(axes, ("meta_loss", "grad_norm")):
        ax.plot(metrics["step"], metrics[col], color="0.75", lw=0.8, label="per step")
        window = max(1, min(smooth, len(metrics)))
        ax.plot(metrics["step"], metrics[col].rolling(window, min_periods=1).mean(), color="C3", label=f"mean of {window}")
        ax.set_xlabel("outer step")
        ax.set_ylabel(labels[col])
        ax.grid(alpha=0.3)
    if (metrics["grad_norm"] > 0).all():
        axes[1].set_yscale("log")
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
                ax.plot(mean.index, mean.values, color=colour, ls=_LINESTYLES.get(opt, "-"), label=name)
                ax.fill_between(mean.index, lo.values, hi.values, color=colour, alpha=0.2, lw=0)
            ax.set_title(f"{task}: {label}", fontsize=9)
            ax.set_xlabel("inner step")
            if metric == "loss":
                ax.set_yscale("log")
                _clip_loss_axis(ax, sub[(sub["split"] == split) & (sub["step"] == sub["step"].min())][metric])
                _log_axis(ax, "y")
            ax.grid(alpha=0.3)
        # beside the row, not over its curves
        axes[row, 2].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    _save(fig, path, dpi)


def _clip_loss_axis(ax: plt.Axes, initial: pd.Series) -> None:
    """Keep a log loss axis within [1e-8, 3] x the largest initial loss: a run that blows up
    (1e20) or collapses (1e-20) leaves the axis instead of flattening every other curve."""
    initial = initial[np.isfinite(initial) & (initial > 0)]
    if initial.empty:
        return
    top = 3.0 * float(initial.max())
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, top * 1e-8), min(high, top))


def plot_generalization(frame: pd.DataFrame, path: Path, *, split: str = "test", dpi: int = 120) -> None:
    """Bars of learned / best-tuned-baseline final loss per task, in- and out-of-distribution panels.

    ``frame`` is :func:`lopt.analysis.tables.generalization_frame`'s output; a bar left of
    the dashed line at 1 means the learned optimizer reached a lower loss.
    """
    groups = [g for g in ("in", "out", "unlabelled") if g in set(frame.get("distribution", []))]
    fig, axes = plt.subplots(
        1, max(len(groups), 1), figsize=(5.5 * max(len(groups), 1), 1.2 + 0.45 * max(len(frame), 1)), squeeze=False,
        sharex=True, layout="constrained",
    )
    titles = {"in": "in-distribution", "out": "out-of-distribution", "unlabelled": "unlabelled"}
    for ax, group in zip(axes[0], groups):
        sub = frame[frame["distribution"] == group]
        y = np.arange(len(sub))
        colors = ["tab:green" if w else "tab:red" for w in sub["win"]]
        # bars grow from 1 (a tie), left for a win, right for a loss; shared log axis. A
        # diverged optimizer's ratio (+inf) is drawn to twice the largest finite one, marked.
        finite = frame["ratio"][np.isfinite(frame["ratio"])]
        top = 2.0 * max(float(finite.max()) if len(finite) else 1.0, 1.0)
        shown = sub["ratio"].where(np.isfinite(sub["ratio"]), top)
        ax.barh(y, shown - 1.0, left=1.0, color=colors, hatch=["xx" if np.isinf(r) else None for r in sub["ratio"]])
        for yi, r in zip(y, sub["ratio"]):
            if np.isinf(r):
                ax.text(top, yi, " diverged", va="center", ha="right", fontsize=8, color="w")
        ax.set_yticks(y, sub["task"])
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", ls="--", lw=1)
        _log_axis(ax)
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
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4 * max(len(groups), 1), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    titles = {"in": "in-distribution", "out": "out-of-distribution", "all": "all tasks"}
    censored = sub["censored"] > 0 if "censored" in sub else pd.Series(False, index=sub.index)
    for ax, group in zip(axes[0], groups):
        g = sub[sub["distribution"] == group]
        x = np.arange(len(g))
        err = np.stack([g["iqm"] - g["iqm_low"], g["iqm_high"] - g["iqm"]])
        # speed-ups are ratios: bars from 1 on a log axis, so 0.5x and 2x look alike
        ax.bar(x, g["iqm"] - 1.0, bottom=1.0, yerr=err, capsize=4, color="tab:blue",
               hatch=["//" if c else None for c in censored[g.index]], edgecolor="white")
        ax.set_xticks(x, g["optimizer"], rotation=30, ha="right")
        ax.axhline(1.0, color="k", ls="--", lw=1)
        _log_axis(ax, "y")
        n = int(g["n"].max())
        ax.set_title(f"{titles[group]} (n = {n} tasks{'; bars: range' if n < 4 else ''})", fontsize=9)
    axes[0][0].set_ylabel("speed-up over tuned Adam (IQM, 95% CI)")
    handles = [plt.Line2D([], [], color="k", ls="--", lw=1, label="1: Adam at its fastest grid rate per target")]
    if censored.any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="tab:blue", hatch="//", edgecolor="white",
                                     label="lower bound (a censored task)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    _save(fig, path, dpi)


def plot_meta_seeds(frame: pd.DataFrame, path: Path, *, split: str = "test", dpi: int = 120) -> None:
    """Per task, one dot per meta-training seed: the final ``split`` loss ratio to the best
    tuned baseline (left) and the speed-up over tuned Adam (right; open markers: lower
    bounds), with the mean across seeds as a bar. ``frame`` is
    :func:`lopt.analysis.meta_seeds.meta_seed_frame`'s output. A diverged seed's ratio (+inf)
    is drawn at the top of its axis and its speed-up (0) at the bottom, both as crosses, and
    that task gets no mean bar; a seed without the task is left out of its mean.
    """
    order = {"in": 0, "out": 1}
    tasks = frame.drop_duplicates("task")[["task", "distribution"]]
    tasks = tasks.sort_values("distribution", key=lambda d: d.map(order).fillna(2), kind="stable")
    labels = [f"{t} ({d})" for t, d in tasks.itertuples(index=False)]
    seeds = sorted(frame["meta_seed"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.8 + 0.45 * len(tasks)), squeeze=False, sharey=True,
                             layout="constrained")
    y = np.arange(len(tasks))
    offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    panels = (("ratio", f"final {split} loss: learned / best tuned baseline"), ("speedup", "speed-up over tuned Adam"))
    for ax, (column, xlabel) in zip(axes[0], panels):
        finite = frame[column][np.isfinite(frame[column]) & (frame[column] > 0)]
        top = float(finite.max()) * 2 if len(finite) else 10.0
        # a diverged optimizer: ratio +inf, drawn at the top; speed-up 0, drawn at the bottom
        bottom = float(finite.min()) / 2 if len(finite) else 0.1
        for i, (task, _) in enumerate(tasks.itertuples(index=False)):
            rows = frame[frame["task"] == task].set_index("meta_seed").reindex(seeds)
            values = rows[column].to_numpy(dtype=float)
            for off, seed, v in zip(offsets, seeds, values):
                if np.isnan(v):
                    continue
                open_marker = column == "speedup" and bool(rows.loc[seed, "censored"])
                off_axis = np.isinf(v) or v <= 0
                ax.plot(min(max(v, bottom), top), i + off, "x" if off_axis else "o", color=f"C{seeds.index(seed) % 10}",
                        mfc="none" if open_marker else None, ms=6)
            present = values[~np.isnan(values)]  # a seed without the task leaves a gap, as in the table
            if present.size and np.isfinite(present).all() and (present > 0).all():
                ax.plot([present.mean()] * 2, [i - 0.3, i + 0.3], color="k", lw=2)
        ax.axvline(1.0, color="k", ls="--", lw=1)
        _log_axis(ax)
        ax.set_xlabel(xlabel)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], marker="o", ls="", color=f"C{i % 10}", label=f"meta-seed {s}") for i, s in enumerate(seeds)]
    handles.append(plt.Line2D([], [], color="k", lw=2, label="mean over meta-seeds"))
    if (np.isinf(frame["ratio"]) | (frame["speedup"] <= 0)).any():
        handles.append(plt.Line2D([], [], marker="x", ls="", color="0.3", label="diverged (at the axis edge)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"{len(seeds)} meta-training seeds, one optimizer each (open marker: the speed-up is a lower bound)")
    _save(fig, path, dpi)
