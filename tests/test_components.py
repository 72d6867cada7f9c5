"""Unit tests of the learned optimizer, the evaluation protocol, checkpoints and tables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from lopt.analysis.tables import final_loss_table
from lopt.checkpoint import Checkpointer, load_meta_params, save_meta_params
from lopt.evaluate import grid_edge_selections, summarise, train_curves, tune_baseline
from lopt.optimizers import MLPLOpt, make_baseline
from lopt.tasks import NoisyQuadratic


def test_untrained_mlp_lopt_is_a_noop_and_optax_compatible():
    lopt = MLPLOpt(hidden_size=8)
    theta = lopt.init(jax.random.PRNGKey(0))
    opt = lopt.to_optax(theta, num_steps=10)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    assert int(state.count) == 1
    # momenta were updated with the gradient
    np.testing.assert_allclose(state.momenta["w"][0], 0.5 * (1 - 0.5))
    with pytest.raises(ValueError, match="needs params"):
        opt.update(grads, state)


def test_mlp_lopt_descends_when_output_is_minus_normalised_gradient():
    """A hand-set output layer that reads -g*rsqrt(v) makes the optimizer sign-descent-like."""
    lopt = MLPLOpt(hidden_size=4, num_layers=0, step_mult=0.1, zero_init_output=True)
    theta = lopt.init(jax.random.PRNGKey(0))
    k = len(lopt.momentum_decays)
    w = np.zeros((lopt.num_features, 2), np.float32)
    w[3 + 2 * k, 0] = 1.0  # the g * rsqrt(v) feature -> direction
    theta = {"layer_0": {"w": jnp.asarray(w), "b": jnp.zeros(2)}}
    task = NoisyQuadratic(dim=5, condition_number=5.0, noise_std=0.0)
    params = task.init(jax.random.PRNGKey(1))
    opt = lopt.to_optax(theta, 50)
    state = opt.init(params)
    start = float(task.loss(params, jnp.zeros(5)))
    for _ in range(50):
        g = jax.grad(task.loss)(params, jnp.zeros(5))
        u, state = opt.update(g, state, params)
        params = optax.apply_updates(params, u)
    assert float(task.loss(params, jnp.zeros(5))) < 0.1 * start


def test_train_curves_vectorises_hparams_and_seeds():
    task = NoisyQuadratic(dim=4, noise_std=0.0)
    lrs = jnp.asarray([0.0, 0.1, 0.5])
    curves = train_curves(task, lambda lr: optax.sgd(lr), lrs, np.arange(2), None, num_steps=20, eval_every=5)
    assert curves["train_batch"].shape == (3, 2, 20)
    assert curves["test_loss"].shape == (3, 2, 5)
    # lr = 0 never moves; the init loss is recorded at step 0 for every lr
    np.testing.assert_allclose(curves["test_loss"][0, :, -1], curves["test_loss"][0, :, 0])
    np.testing.assert_allclose(curves["test_loss"][1, :, 0], curves["test_loss"][0, :, 0])
    # gradient descent with lr 0.1 on curvatures in [1, 10] converges monotonically
    assert np.all(np.diff(curves["test_loss"][1], axis=-1) <= 1e-6)
    # same seed -> same init regardless of the hyperparameter
    np.testing.assert_allclose(curves["train_batch"][1, :, 0], curves["train_batch"][2, :, 0])


def test_one_program_serves_every_optimizer_like_its_own():
    """switched_program (lax.switch over candidates) trains each candidate as its own
    program does: same curves to float rounding (stable rates on a quadratic, where
    rounding differences cannot grow), for optimizers with different state structures,
    schedules and a learned optimizer included. And a tuning run (no curves) ends on
    the value its curve ends on, so selection reads what the reported curves show."""
    from lopt.evaluate import SELECTION_SPLIT, baseline_tuner, switched_program

    task = NoisyQuadratic(dim=4, noise_std=0.0)
    lrs = jnp.asarray([0.01, 0.05])
    candidates = [("sgd", "constant"), ("adam", "cosine"), ("lion", "constant"), ("adafactor", "constant")]
    lopt = MLPLOpt(hidden_size=4, zero_init_output=False)
    learned = lopt.to_optax(lopt.init(jax.random.PRNGKey(2)), 20)
    factories = [lambda lr, n=n, s=s: make_baseline(n, lr, s, 20) for n, s in candidates] + [lambda _: learned]
    shared = switched_program(task, factories, 20, 5)
    tuner = baseline_tuner(task, candidates, None, 20, 5)
    for i, factory in enumerate(factories):
        own = train_curves(task, factory, lrs, np.arange(2), None, 20, 5)
        got = jax.device_get(shared(jnp.int32(i), lrs, jnp.arange(2), None))
        for k in own:
            np.testing.assert_allclose(got[k], own[k], rtol=1e-5, atol=1e-7, err_msg=f"{i} {k}")
        if i < len(candidates):
            final = tuner(*candidates[i], lrs, np.arange(2))
            np.testing.assert_allclose(final, own[f"{SELECTION_SPLIT}_loss"][..., -1], rtol=1e-5, atol=1e-7)
    # and the candidates differ (the index picks the branch)
    assert not np.allclose(shared(0, lrs, jnp.arange(2), None)["test_loss"], shared(1, lrs, jnp.arange(2), None)["test_loss"])


def test_tuning_selects_the_best_rate_and_avoids_divergence():
    task = NoisyQuadratic(dim=4, condition_number=10.0, noise_std=0.0)
    # with curvature up to 10, sgd diverges for lr > 0.2; 0.1 is the best stable rate
    grid = np.asarray([0.001, 0.01, 0.1, 1.0], np.float32)
    lr, schedule, sweep = tune_baseline(task, "sgd", None, grid, np.arange(2), 40, 10)
    assert lr == pytest.approx(0.1) and schedule == "constant"
    assert sweep["selected"].sum() == 1
    # schedules are tuned jointly: one sweep row per (schedule, rate), one winner overall
    lr2, schedule2, sweep2 = tune_baseline(task, "sgd", None, grid, np.arange(2), 40, 10, ("constant", "cosine"))
    assert len(sweep2) == 2 * len(grid) and sweep2["selected"].sum() == 1
    best = sweep2.loc[sweep2["inner_valid_loss"].idxmin()]
    assert (best["learning_rate"], best["schedule"]) == (lr2, schedule2)
    assert sweep.loc[sweep["learning_rate"] == grid[-1], "inner_valid_loss"].iloc[0] > 1e3
    # an interior winner is not flagged; cut the grid below the optimum and its top is
    assert sweep["grid_edge"].tolist() == [True, False, False, True] and grid_edge_selections(sweep) == {}
    lr3, _, sweep3 = tune_baseline(task, "sgd", None, grid[:2], np.arange(2), 40, 10)
    assert lr3 == pytest.approx(0.01) and grid_edge_selections(sweep3) == {"sgd": pytest.approx(0.01)}
    with pytest.raises(ValueError, match="allowed: sgd, momentum, adam, rmsprop"):
        make_baseline("lamb", 0.1)


def test_meta_params_file_roundtrip_and_corruption(tmp_path):
    lopt = MLPLOpt(hidden_size=4, zero_init_output=False)
    theta = lopt.init(jax.random.PRNGKey(3))
    path = tmp_path / "meta_params.npz"
    digest = save_meta_params(path, theta, {"experiment": "t"})
    loaded = load_meta_params(path, lopt.init(jax.random.PRNGKey(0)))
    jax.tree.map(np.testing.assert_array_equal, theta, loaded)
    assert len(digest) == 64
    with pytest.raises(ValueError, match="shape"):
        load_meta_params(path, MLPLOpt(hidden_size=5).init(jax.random.PRNGKey(0)))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_meta_params(path, theta)


def test_checkpointer_restores_namedtuple_state_exactly(tmp_path):
    opt = optax.adam(1e-3)
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    state = {"params": params, "opt": opt.init(params), "step": jnp.asarray(7, jnp.int32),
             "key": jax.random.PRNGKey(5)}
    with Checkpointer(tmp_path / "ck", max_to_keep=2) as ck:
        for step in (1, 2, 3):
            ck.save(step, state)
        assert ck.all_steps() == [2, 3]
        restored = ck.restore(3, jax.tree.map(jnp.zeros_like, state))
    jax.tree.map(np.testing.assert_array_equal, state, restored)
    assert type(restored["opt"][0]) is type(state["opt"][0])


def test_final_loss_table_marks_the_best():
    curves = pd.DataFrame(
        {
            "task": "t", "optimizer": ["a"] * 4 + ["b"] * 4, "learning_rate": [np.nan] * 4 + [0.1] * 4,
            "seed": [0, 1, 0, 1] * 2, "step": [10, 10, 0, 0] * 2, "split": "train",
            "loss": [1.0, 3.0, 5.0, 5.0, 0.5, 0.7, 5.0, 5.0], "accuracy": 0.5,
        }
    )
    summary = summarise(curves)
    assert summary.set_index("optimizer").loc["a", "loss_mean"] == pytest.approx(2.0)
    table = final_loss_table(summary, splits=("train",))
    assert "**0.6000 ± 0.1000**" in table and "2.0000 ± 1.0000" in table
    assert "†" not in table
    summary["lr_at_grid_edge"] = summary["optimizer"] == "b"
    table = final_loss_table(summary, splits=("train",))
    assert "| t | b | 0.1 † |" in table and "† selected at an edge of the learning-rate grid" in table


def test_baselines_apart_give_the_same_files_as_together_and_other_settings_are_refused(tmp_path):
    """The workflow's two jobs (`lopt baselines`, then `lopt evaluate --baselines DIR`) write
    byte-identical tables to `lopt evaluate` alone, and baseline results recorded under
    other settings are refused, naming the file and the setting (the CLI's one-line error:
    tests/test_cluster.py)."""
    from lopt.config import validate_config
    from lopt.evaluate import (
        BaselinesError,
        baseline_settings,
        load_baselines,
        run_baselines,
        run_evaluation,
    )
    from lopt.optimizers.pretrained import Pretrained, from_config

    raw = {
        "name": "apart",
        "meta_train": {"task": {"kind": "quadratic", "dim": 10}},
        "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}], "num_steps": 20,
                       "eval_every": 10, "num_seeds": 2, "baselines": ["sgd", "adam"],
                       "lr_grid": {"low": 0.01, "high": 1.0, "num": 3}},
    }
    cfg = validate_config(raw)
    lopt = from_config(cfg.lopt)
    pretrained = Pretrained(lopt, lopt.init(jax.random.PRNGKey(0)), {})
    run_evaluation(cfg, "quad", pretrained, tmp_path / "together")
    run_baselines(cfg, "quad", tmp_path / "baselines")
    loaded = load_baselines(tmp_path / "baselines", baseline_settings(cfg, "quad"))
    run_evaluation(cfg, "quad", pretrained, tmp_path / "apart", baselines=loaded)
    for name in ("curves", "sweep", "summary", "metrics"):
        together = (tmp_path / "together" / f"{name}.csv").read_bytes()
        assert (tmp_path / "apart" / f"{name}.csv").read_bytes() == together, name
    reference = pd.read_csv(tmp_path / "baselines" / "reference.csv")
    assert set(reference["optimizer"]) == {"adam"} and reference["step"].max() == 4 * 20  # the long run
    assert {"lopt", "sgd", "adam"} == set(pd.read_csv(tmp_path / "apart" / "summary.csv")["optimizer"])

    raw["evaluation"]["num_seeds"] = 3
    with pytest.raises(BaselinesError, match=r"baselines/settings\.json: .*num_seeds: 2 there, 3 here"):
        load_baselines(tmp_path / "baselines", baseline_settings(validate_config(raw), "quad"))
    with pytest.raises(FileNotFoundError, match=r"together/settings\.json: not found; .*lopt baselines --task quad"):
        load_baselines(tmp_path / "together", baseline_settings(cfg, "quad"))

    # damaged tables are errors naming the file, never an evaluation without baselines
    from lopt.analysis.results import ResultsError

    settings = baseline_settings(cfg, "quad")
    curves_csv = tmp_path / "baselines" / "curves.csv"
    intact = curves_csv.read_bytes()
    for damage, message in ((b"", "empty, not a CSV table"), (b"hello\n", "lacks column"),
                            (intact[:-40], "last row is cut off")):
        curves_csv.write_bytes(damage)
        with pytest.raises(ResultsError, match=rf"baselines/curves\.csv: .*{message}.*lopt baselines"):
            load_baselines(tmp_path / "baselines", settings)
    curves_csv.write_bytes(intact)
    settings_json = tmp_path / "baselines" / "settings.json"
    settings_json.write_text('{"settings": 3}')
    with pytest.raises(BaselinesError, match=r"settings\.json: unreadable \(TypeError: 'settings' is a int"):
        load_baselines(tmp_path / "baselines", settings)
