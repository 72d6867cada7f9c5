"""Baseline tuning (lopt.evaluate.baselines) on hand-made tuning results.

test_components.py tunes SGD on a quadratic, where a diverged rate ends on a huge but
finite loss, tuning and reporting seeds give the same losses (the noise-free quadratic
ignores them only through its init) and the schedule is constant. So three documented
rules went unchecked:

- a non-finite final loss counts as +inf: a NaN seed must rule its rate out (a NaN mean
  would be picked by ``np.argmin``, which returns the first NaN);
- tuning seeds are ``seed_offset + TUNE_SEED_SHIFT + i``, disjoint from the reporting
  seeds ``seed_offset + i`` (tuning on the reported seeds selects on the test runs);
- the reference's long run stretches the tuned schedule over ``reference_mult`` budgets
  (a schedule left over one budget decays to 0 there and the long run stops learning, so
  every speed-up above 1 would be censored).

The tuner, the reported runs and the long run are replaced by recorders (the functions
``tune_and_report_baselines`` calls), so every expected number is set by hand here.
"""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from lopt.evaluate import TUNE_SEED_SHIFT, grid_edge_selections, tune_baseline
from lopt.evaluate import baselines as baselines_module
from lopt.evaluate.runs import EVAL_SPLITS
from lopt.tasks import NoisyQuadratic


def _table_tuner(table: dict[str, np.ndarray]):
    """A tuner returning ``table[schedule]`` ([H, S]) whatever the rates and seeds."""

    def final(name, schedule, hparams, seeds):
        assert np.asarray(table[schedule]).shape == (len(hparams), len(seeds))
        return np.asarray(table[schedule], np.float64)

    return final


def test_a_non_finite_seed_rules_its_rate_out_and_selection_reads_the_seed_mean():
    grid = np.asarray([0.001, 0.01, 0.1, 1.0], np.float32)
    # means over the two seeds: 0.5, 0.4, inf (a NaN seed), inf (an inf seed)
    # rate 0.001 has the lowest single seed (0.1) but not the lowest mean: 0.01 wins
    losses = np.asarray([[0.1, 0.9], [0.4, 0.4], [0.05, np.nan], [np.inf, 0.01]])
    lr, schedule, sweep = tune_baseline(
        NoisyQuadratic(), "sgd", None, grid, np.arange(2), 10, 5, tuner=_table_tuner({"constant": losses})
    )
    assert (lr, schedule) == (pytest.approx(0.01), "constant")
    np.testing.assert_allclose(sweep["inner_valid_loss"].to_numpy(), [0.5, 0.4, np.inf, np.inf])
    assert sweep["selected"].tolist() == [False, True, False, False]
    assert grid_edge_selections(sweep) == {}
    # every rate non-finite but the grid's top: the top wins, and it is a grid edge
    losses = np.asarray([[np.nan, 1.0], [np.inf, 1.0], [1.0, np.nan], [2.0, 2.0]])
    lr, _, sweep = tune_baseline(
        NoisyQuadratic(), "sgd", None, grid, np.arange(2), 10, 5, tuner=_table_tuner({"constant": losses})
    )
    assert lr == pytest.approx(1.0) and grid_edge_selections(sweep) == {"sgd": pytest.approx(1.0)}


def test_schedules_compete_on_the_same_footing():
    grid = np.asarray([0.01, 0.1], np.float32)
    table = {"constant": np.asarray([[0.3, 0.3], [0.2, np.nan]]), "cosine": np.asarray([[0.5, 0.5], [0.25, 0.25]])}
    lr, schedule, sweep = tune_baseline(
        NoisyQuadratic(), "adam", None, grid, np.arange(2), 10, 5, ("constant", "cosine"), tuner=_table_tuner(table)
    )
    # constant @ 0.1 has a NaN seed (inf); the best finite mean is cosine @ 0.1 (0.25)
    assert (lr, schedule) == (pytest.approx(0.1), "cosine")
    assert sweep[["schedule", "selected"]].values.tolist() == [
        ["constant", False], ["constant", False], ["cosine", False], ["cosine", True]
    ]


def test_tuning_seeds_are_disjoint_from_reporting_seeds_and_the_long_run_stretches_the_schedule(monkeypatch):
    calls: dict = {"tune": []}
    budget, mult, seed_offset, num_seeds, eval_every = 8, 4, 7, 3, 4

    def fake_baseline_tuner(task, candidates, data, num_steps, every):
        calls["candidates"] = list(candidates)

        def final(name, schedule, hparams, seeds):
            calls["tune"].append(np.asarray(seeds))
            # lowest at rate 0.01 (the middle of the grid), for every seed
            return np.repeat(((np.log10(np.asarray(hparams)) + 2.0) ** 2)[:, None], len(seeds), axis=1)

        return final

    def fake_report_curves(task, task_name, data, reported, seeds, num_steps, every):
        calls["reported"] = [(name, lr, schedule) for name, lr, schedule, _ in reported]
        calls["report_seeds"] = np.asarray(seeds)
        return pd.DataFrame({"optimizer": [r[0] for r in reported]})

    def fake_train_curves(task, make, hparams, seeds, data, num_steps, every):
        calls["long"] = (make, np.asarray(hparams), np.asarray(seeds), num_steps)
        num_evals = num_steps // every + 1
        rates = len(hparams)
        out = {"train_batch": np.zeros((rates, len(seeds), num_steps))}
        for split in EVAL_SPLITS:
            out[f"{split}_loss"] = np.zeros((rates, len(seeds), num_evals))
            out[f"{split}_accuracy"] = np.zeros((rates, len(seeds), num_evals))
        return out

    monkeypatch.setattr(baselines_module, "baseline_tuner", fake_baseline_tuner)
    monkeypatch.setattr(baselines_module, "report_curves", fake_report_curves)
    monkeypatch.setattr(baselines_module, "train_curves", fake_train_curves)
    grid_cfg = types.SimpleNamespace(low=1e-3, high=1e-1, num=3)
    _, sweep, reference = baselines_module.tune_and_report_baselines(
        NoisyQuadratic(), "quad", None, ["sgd"], grid_cfg, budget, num_seeds, seed_offset, eval_every,
        schedules=("linear",), reference="sgd", reference_mult=mult,
    )
    reporting = seed_offset + np.arange(num_seeds)  # 7, 8, 9
    np.testing.assert_array_equal(calls["report_seeds"], reporting)
    assert len(calls["tune"]) == 1
    np.testing.assert_array_equal(calls["tune"][0], TUNE_SEED_SHIFT + reporting)  # 100007, 100008, 100009
    assert not set(calls["tune"][0]) & set(reporting)
    assert calls["candidates"] == [("sgd", "linear")]
    assert calls["reported"] == [("sgd", pytest.approx(0.01), "linear")]
    assert sweep["task"].tolist() == ["quad"] * 3 and sweep["selected"].tolist() == [False, True, False]

    # the long runs: same seeds, every rate of the grid (the speed-up takes the fastest
    # for each target), mult budgets ...
    make, hparams, seeds, steps = calls["long"]
    np.testing.assert_allclose(hparams, [1e-3, 1e-2, 1e-1], rtol=1e-6)
    np.testing.assert_array_equal(seeds, reporting)
    assert steps == mult * budget
    assert reference["step"].max() == mult * budget and set(reference["seed"]) == set(reporting)
    np.testing.assert_allclose(sorted(set(reference["learning_rate"])), [1e-3, 1e-2, 1e-1], rtol=1e-6)
    assert "train_batch" not in set(reference["split"])  # evaluations only: what the speed-up reads
    # ... and the linear schedule over all of them: SGD's update for gradient 1 at step t
    # is -0.01 (1 - t / 32); a schedule over one budget would give 0 from t = 8 on
    opt = make(0.01)
    params = np.zeros((), np.float32)
    state = opt.init(params)
    got = []
    for _ in range(steps):
        update, state = opt.update(np.ones((), np.float32), state, params)
        got.append(-float(update))
    np.testing.assert_allclose(got, 0.01 * (1 - np.arange(steps) / steps), rtol=1e-5, atol=1e-9)
