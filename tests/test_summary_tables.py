"""Per-task summaries (lopt.evaluate.summarise) and the Markdown/LaTeX tables built from them
(lopt.analysis.tables), on hand-made inputs with hand-worked outputs.

test_components.py and test_generalization_table.py use one task per table, one group
per distribution and a constant accuracy, so these went unchecked:

- summarise: the accuracy is the seed *mean* (not the median) and the ``schedule``
  column is kept (the sweep and the tables tell baselines' schedules apart by it);
- final_loss_table: the bold entry is the best of *its task* (not of the whole table),
  a learned optimizer (rate NaN) reads ``learned``, and ``test acc`` is the test split's;
- generalization_table: rows are grouped in, out, then unlabelled whatever the input
  order, and a group's ratio is the *median* over its tasks (a tie is no win);
- across_tasks_table: the few-tasks note is for rows over fewer than 4 tasks only (from 4
  on, the IQM trims one value from each end);
- summary_latex: only the requested split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lopt.analysis.tables import (
    across_tasks,
    across_tasks_table,
    final_loss_table,
    generalization_table,
    summary_latex,
)
from lopt.evaluate import summarise


def test_summarise_averages_accuracy_over_seeds_and_keeps_the_schedule():
    rows = []
    # final step 10: losses 1, 2, 6 and accuracies 0.2, 0.3, 0.7 over seeds 0, 1, 2
    for seed, loss, acc in ((0, 1.0, 0.2), (1, 2.0, 0.3), (2, 6.0, 0.7)):
        rows += [
            {"step": 10, "split": "test", "loss": loss, "accuracy": acc, "seed": seed},
            {"step": 0, "split": "test", "loss": 9.0, "accuracy": 0.0, "seed": seed},
            {"step": 9, "split": "train_batch", "loss": 5.0, "accuracy": np.nan, "seed": seed},
        ]
    curves = pd.DataFrame(rows).assign(task="t", optimizer="adam", learning_rate=0.01, schedule="cosine")
    out = summarise(curves)
    assert len(out) == 1
    row = out.iloc[0]
    assert (row["task"], row["optimizer"], row["schedule"], row["split"]) == ("t", "adam", "cosine", "test")
    # mean 3; sample std sqrt(((1-3)^2 + (2-3)^2 + (6-3)^2) / 2) = sqrt(7); sem sqrt(7 / 3)
    assert row["loss_mean"] == pytest.approx(3.0, rel=1e-12)
    assert row["loss_std"] == pytest.approx(np.sqrt(7.0), rel=1e-12)
    assert row["loss_sem"] == pytest.approx(np.sqrt(7.0 / 3.0), rel=1e-12)
    assert row["accuracy_mean"] == pytest.approx(0.4, rel=1e-12)  # (0.2 + 0.3 + 0.7) / 3; median 0.3
    assert row["num_seeds"] == 3


def test_a_diverged_seed_makes_the_mean_infinite_and_the_table_says_so():
    """A NaN final loss counts as +inf, as in tuning: a NaN-skipping mean would report the
    surviving seeds' 0.1 (with the s.e.m. over the wrong n) and bold the diverged method."""
    from lopt.analysis.tables import final_loss_table

    rows = []
    for opt, finals in (("lopt", [0.1, 0.1, 0.1, 0.1, np.nan]), ("adam", [0.2, 0.2, 0.2, 0.2, 0.2])):
        for seed, loss in enumerate(finals):
            for split in ("train", "test"):
                rows.append({"step": 10, "split": split, "loss": loss, "accuracy": 0.5, "seed": seed,
                             "optimizer": opt, "learning_rate": np.nan if opt == "lopt" else 0.01})
    out = summarise(pd.DataFrame(rows).assign(task="t", schedule="constant"))
    lopt = out[(out["optimizer"] == "lopt") & (out["split"] == "test")].iloc[0]
    assert lopt["loss_mean"] == np.inf and np.isnan(lopt["loss_sem"])
    assert (lopt["num_seeds"], lopt["num_diverged"]) == (5, 1)
    adam = out[(out["optimizer"] == "adam") & (out["split"] == "test")].iloc[0]
    assert adam["loss_mean"] == pytest.approx(0.2) and adam["num_diverged"] == 0
    table = final_loss_table(out.assign(lr_at_grid_edge=False))
    assert "diverged (1 of 5 seeds)" in table and "**0.2000 ± 0.0000**" in table


def test_seed_sem_divides_by_every_seed():
    """n in std / sqrt(n) is the number of seeds; a non-finite seed makes it NaN."""
    from lopt.analysis.metrics import seed_mean, seed_sem

    assert seed_mean([0.1, np.nan]) == np.inf and np.isnan(seed_sem([0.1, np.nan]))
    values = [1.0, 2.0, 3.0, 4.0]
    assert seed_sem(values) == pytest.approx(np.std(values, ddof=1) / 2.0, rel=1e-12)


def _final_summary() -> pd.DataFrame:
    # (task, optimizer, rate): {split: (loss_mean, loss_sem, accuracy_mean)}
    table = {
        ("t1", "a", np.nan): {"train": (1.0, 0.1, 0.9), "test": (1.5, 0.2, 0.6)},
        ("t1", "b", 0.1): {"train": (2.0, 0.1, 0.9), "test": (1.2, 0.1, 0.55)},
        ("t2", "a", np.nan): {"train": (5.0, 0.5, 0.9), "test": (6.0, 0.5, 0.1)},
        ("t2", "b", 0.1): {"train": (4.0, 0.5, 0.9), "test": (7.0, 0.5, 0.2)},
    }
    rows = []
    for (task, opt, lr), splits in table.items():
        for split, (mean, sem, acc) in splits.items():
            rows.append({"task": task, "optimizer": opt, "learning_rate": lr, "split": split,
                         "loss_mean": mean, "loss_sem": sem, "accuracy_mean": acc})
    return pd.DataFrame(rows)


def test_final_loss_table_bolds_the_best_of_each_task_and_labels_learned_rates():
    # t1: best train 1.0 (a), best test 1.2 (b); t2: best train 4.0 (b), best test 6.0 (a)
    expected = (
        "| task | optimizer | lr | final train loss | final test loss | test acc |\n"
        "|---|---|---|---|---|---|\n"
        "| t1 | a | learned | **1.0000 ± 0.1000** | 1.5000 ± 0.2000 | 0.600 |\n"
        "| t1 | b | 0.1 | 2.0000 ± 0.1000 | **1.2000 ± 0.1000** | 0.550 |\n"
        "| t2 | a | learned | 5.0000 ± 0.5000 | **6.0000 ± 0.5000** | 0.100 |\n"
        "| t2 | b | 0.1 | **4.0000 ± 0.5000** | 7.0000 ± 0.5000 | 0.200 |\n"
    )
    assert final_loss_table(_final_summary()) == expected


def _generalization_summary() -> pd.DataFrame:
    # test-split final losses (lopt, adam); the unlabelled and out tasks come first
    losses = [
        ("u1", None, 2.0, 1.0),  # ratio 2
        ("o1", "out", 0.3, 0.6),  # ratio 0.5, a win
        ("i1", "in", 0.5, 1.0),  # ratio 0.5, a win
        ("i2", "in", 1.0, 1.0),  # ratio 1: a tie is no win
        ("i3", "in", 4.0, 1.0),  # ratio 4
    ]
    rows = []
    for task, dist, mine, adam in losses:
        for opt, loss in (("lopt", mine), ("adam", adam)):
            rows.append({"task": task, "distribution": dist, "optimizer": opt, "split": "test", "loss_mean": loss})
    return pd.DataFrame(rows)


def test_generalization_table_orders_groups_and_takes_the_median_ratio():
    md = generalization_table(_generalization_summary())
    lines = md.splitlines()
    assert lines[2:7] == [
        "| in | i1 | 0.5000 | adam | 1.0000 | 0.500 (win) |",
        "| in | i2 | 1.0000 | adam | 1.0000 | 1.000 |",
        "| in | i3 | 4.0000 | adam | 1.0000 | 4.000 |",
        "| out | o1 | 0.3000 | adam | 0.6000 | 0.500 (win) |",
        "| unlabelled | u1 | 2.0000 | adam | 1.0000 | 2.000 |",
    ], md
    # in: ratios 0.5, 1, 4 -> median 1.000 (their mean would be 1.833); one win of three
    assert lines[-3:] == ["| in | 3 | 1 | 1.000 |", "| out | 1 | 1 | 0.500 |", "| unlabelled | 1 | 0 | 2.000 |"], md


def test_few_tasks_note_only_below_four_tasks():
    def metrics(num_tasks):
        tasks = [f"t{i}" for i in range(num_tasks)]
        return pd.DataFrame({
            "task": tasks * 2, "distribution": "in", "optimizer": ["lopt"] * num_tasks + ["adam"] * num_tasks,
            "best_loss": [1.0] * (2 * num_tasks), "speedup": [1.0 + i for i in range(num_tasks)] + [1.0] * num_tasks,
        })

    note = "Rows over fewer than 4 tasks"
    assert note in across_tasks_table(across_tasks(metrics(3)))
    # n = 4: the IQM trims floor(4 / 4) = 1 value per end, so the note would be wrong
    four = across_tasks_table(across_tasks(metrics(4)))
    assert note not in four and "| in | lopt | 4 |" in four


def test_summary_latex_shows_only_the_requested_split():
    summary = _final_summary().replace({"task": {"t1": "t_1"}})
    tex = summary_latex(summary, split="test")
    # as the markdown table: the rate ("learned" for the learned optimizer), the task's best in bold
    assert r"t\_1 & a & learned & 1.5000 $\pm$ 0.2000 & 0.600" in tex, tex
    assert r"t\_1 & b & 0.1 & \textbf{1.2000 $\pm$ 0.1000} & 0.550" in tex, tex
    assert r"t2 & b & 0.1 & 7.0000 $\pm$ 0.5000 & 0.200" in tex, tex
    assert "dagger" not in tex
    edge = summary.assign(lr_at_grid_edge=summary["optimizer"] == "b", optimizer=summary["optimizer"] + "%&")
    tex = summary_latex(edge, split="test")
    assert r"t2 & b\%\& & 0.1$^\dagger$ & 7.0000" in tex, tex  # escaped: not a comment or a column
    assert r"$^\dagger$ selected at an edge of the learning-rate grid" in tex
    assert "final test loss" in tex and "test accuracy" in tex
    for train_only in ("1.0000", "2.0000", "4.0000", "5.0000", "0.900"):  # the train rows' numbers
        assert train_only not in tex, (train_only, tex)
