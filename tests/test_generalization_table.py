"""Learned vs best tuned baseline per task (lopt.analysis.tables): who is "best", which way
the ratio points, and the across-task loss ratio.

The inputs are exact hand-made summaries (no sampling), so the expected values are plain
arithmetic and compared to float rounding only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lopt.analysis.tables import across_tasks, generalization_frame, generalization_table


def _summary() -> pd.DataFrame:
    # per task, the test-split final loss of the learned optimizer and three baselines;
    # sgd diverged on t_out (NaN) and must not be picked; train-split rows must be ignored
    losses = {
        ("t_in", "in"): {"lopt": 0.5, "adam": 0.4, "sgd": 0.8, "momentum": 0.45},
        ("t_out", "out"): {"lopt": 0.3, "adam": 0.6, "sgd": np.nan, "momentum": 0.9},
    }
    rows = []
    for (task, dist), per_opt in losses.items():
        for opt, loss in per_opt.items():
            rows.append({"task": task, "distribution": dist, "optimizer": opt, "split": "test", "loss_mean": loss})
            rows.append({"task": task, "distribution": dist, "optimizer": opt, "split": "train", "loss_mean": 0.01})
    return pd.DataFrame(rows)


def test_generalization_compares_with_the_lowest_baseline_loss():
    frame = generalization_frame(_summary()).set_index("task")
    assert frame.loc["t_in", "best_baseline"] == "adam" and frame.loc["t_out", "best_baseline"] == "adam"
    assert frame.loc["t_in", "baseline_loss"] == pytest.approx(0.4)
    # ratio = learned / best baseline: < 1 means the learned optimizer is better
    assert frame.loc["t_in", "ratio"] == pytest.approx(0.5 / 0.4, rel=1e-12)
    assert frame.loc["t_out", "ratio"] == pytest.approx(0.3 / 0.6, rel=1e-12)
    assert frame["win"].tolist() == [False, True]


def test_generalization_table_counts_wins_per_group():
    md = generalization_table(_summary())
    assert "| out | t_out | 0.3000 | adam | 0.6000 | 0.500 (win) |" in md, md
    assert "| in | t_in | 0.5000 | adam | 0.4000 | 1.250 |" in md, md
    assert "| in | 1 | 0 | 1.250 |" in md and "| out | 1 | 1 | 0.500 |" in md, md


def test_across_tasks_loss_ratio_is_optimizer_over_reference():
    # three tasks: with n = 3 the IQM trims nothing, so it is the mean of the ratios
    metrics = pd.DataFrame({
        "task": ["a", "b", "c"] * 2, "distribution": ["in", "in", "in"] * 2,
        "optimizer": ["lopt"] * 3 + ["adam"] * 3, "best_loss": [0.2, 0.5, 0.9, 0.4, 0.5, 0.6],
    })
    agg = across_tasks(metrics)
    row = agg[(agg["distribution"] == "all") & (agg["optimizer"] == "lopt") & (agg["metric"] == "loss_ratio")].iloc[0]
    ratios = [0.2 / 0.4, 0.5 / 0.5, 0.9 / 0.6]
    assert row["iqm"] == pytest.approx(np.mean(ratios), rel=1e-12)
    assert row["median"] == pytest.approx(1.0, rel=1e-12)
    ref = agg[(agg["optimizer"] == "adam") & (agg["metric"] == "loss_ratio")]
    assert np.allclose(ref[["iqm", "median"]].to_numpy(), 1.0)
