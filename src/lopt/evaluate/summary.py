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
    seed-mean best loss at the budget, over the budget, at whichever of the reference's
    learning rates gets there first (``reference`` holds its long runs at every rate of the
    grid, column ``learning_rate``: VeLOdrome's learning-rate-tuned Adam, tuned for each
    target on this ``split``, not the rate tuned for the tables on inner-valid loss);
    ``censored`` marks lower bounds (no rate got there within ``reference_mult`` budgets).

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
        runs = reference.groupby("learning_rate", dropna=False) if "learning_rate" in reference else [(None, reference)]
        per_rate = [matrix(g) for _, g in runs]
        ref_steps = per_rate[0][0]
        ref_losses = np.stack([losses for _, losses in per_rate])  # [H, S, E]
        own = curves[curves["optimizer"] == reference["optimizer"].iloc[0]]
        target_steps, target_losses = matrix(own) if not own.empty else (ref_steps, ref_losses[0])
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
    """Final-step loss/accuracy per (task, optimizer, split): mean, std, sem over seeds.

    A seed whose final loss is non-finite (diverged) counts as ``+inf``, as in tuning: the
    mean is then ``inf``, std and sem NaN, and ``num_diverged`` says how many seeds did.
    """
    from lopt.analysis.metrics import num_diverged, seed_mean, seed_sem, seed_std

    evals = curves[curves["split"] != "train_batch"]
    last = evals[evals["step"] == evals.groupby(["task", "optimizer"])["step"].transform("max")]
    keys = [k for k in ("task", "optimizer", "learning_rate", "schedule", "split") if k in last]  # older curves: no schedule
    g = last.groupby(keys, dropna=False)
    out = g.agg(
        loss_mean=("loss", seed_mean),
        loss_std=("loss", seed_std),
        loss_sem=("loss", seed_sem),
        accuracy_mean=("accuracy", "mean"),
        num_seeds=("seed", "nunique"),
        num_diverged=("loss", num_diverged),
    ).reset_index()
    return out
