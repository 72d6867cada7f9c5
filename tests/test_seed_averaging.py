"""task_metrics over seeds that disagree: the seed *mean* of best-so-far curves.

The other task_metrics tests give every seed the same curve, so the mean over seeds equals
the median and each seed's best-so-far curve equals its raw curve: a median in place of
the mean, or a mean of raw curves in place of best-so-far ones, passes them. Here three
seeds differ (mean != median) and one curve rises after dipping (best-so-far != raw).
Every expected number is worked out by hand in the comments; none comes from the code
under test.
"""

from __future__ import annotations

import pandas as pd
import pytest

from lopt.evaluate import task_metrics


def _curves(optimizer: str, per_seed: list[list[float]], steps=(0, 10, 20)) -> pd.DataFrame:
    rows = []
    for seed, losses in enumerate(per_seed):
        for split in ("train", "test"):
            rows += [{"task": "t", "optimizer": optimizer, "seed": seed, "split": split, "step": s, "loss": v}
                     for s, v in zip(steps, losses, strict=True)]
    return pd.DataFrame(rows)


def test_task_metrics_average_best_so_far_curves_over_seeds():
    # Adam's budget run: best-so-far at step 20 per seed = 1.0, 1.0, 1.5 (seed 2 rose to 1.6)
    #   target = mean = 7/6 (the median would be 1.0)
    adam = _curves("adam", [[2.0, 1.5, 1.0], [2.0, 1.5, 1.0], [2.0, 1.5, 1.6]])
    # Adam's long run: mean best-so-far curve at steps 0, 10, 20, 40 = 2, 1.5, 7/6, 0.5
    reference = _curves("adam", [[2.0, 1.5, 1.0, 0.5], [2.0, 1.5, 1.0, 0.5], [2.0, 1.5, 1.6, 0.5]],
                        steps=(0, 10, 20, 40))
    # lopt: best-so-far per seed [2, 1, 1], [2, 1, 1], [2, 2, 0.4]
    #   best_loss = mean(1, 1, 0.4) = 0.8 (the median would be 1.0)
    #   mean best-so-far curve = [2, 4/3, 0.8]: first <= 7/6 at step 20
    #   (the mean of the raw curves, [2, 5/3, 32/15], never gets there)
    #   speed-up: the reference curve passes 0.8 between step 20 (7/6) and 40 (0.5):
    #   20 + 20 * (7/6 - 0.8) / (7/6 - 0.5) = 20 + 20 * 0.55 = 31 steps, / budget 20 = 1.55
    lopt = _curves("lopt", [[2.0, 1.0, 3.0], [2.0, 1.0, 3.0], [2.0, 3.0, 0.4]])
    m = task_metrics(pd.concat([lopt, adam]), reference, budget=20).set_index("optimizer")
    # float64 arithmetic on a handful of numbers: only rounding separates these from exact
    tol = {"rel": 1e-12}
    assert m.loc["adam", "target"] == pytest.approx(7 / 6, **tol)
    assert m.loc["lopt", "target"] == pytest.approx(7 / 6, **tol)
    assert m.loc["adam", "best_loss"] == pytest.approx(7 / 6, **tol)
    assert m.loc["lopt", "best_loss"] == pytest.approx(0.8, **tol)
    assert m.loc["lopt", "steps_to_target"] == 20
    assert m.loc["lopt", "speedup"] == pytest.approx(1.55, **tol)
    assert not m.loc["lopt", "censored"]
