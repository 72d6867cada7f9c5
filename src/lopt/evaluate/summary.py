"""Per-task summaries of tidy curves: final losses over seeds, and VeLOdrome-style
steps-to-target and speed-up over the tuned reference optimizer."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
