"""Training runs (lopt.evaluate.runs) against closed forms, on a probe task.

test_components.py checks train_curves on the noise-free NoisyQuadratic with seeds 0, 1:
shapes, monotone evaluations and that the switched program agrees with the plain one.
Both programs share training_run, so a wrong step index, a mis-ordered ``train_batch``
or a seed column numbered 0, 1, ... passed. Here:

- SGD with rate 0.1 on ``0.5 (x0^2 + 4 x1^2)`` from ``x = (1, 2)`` has the closed form
  ``x_t = (0.9^t, 2 * 0.6^t)``, ``loss_t = 0.5 * 0.81^t + 8 * 0.36^t``: ``train_batch[t]``
  is ``loss_t`` (the minibatch loss *before* update t), the evaluation ``e`` is
  ``loss_{e * eval_every}``, and the tidy rows carry the real seeds and steps;
- a tuning run (``curves=False``) trains on the same minibatches and evaluates with the
  same key as the last point of the run's curve (documented in training_run). The
  shipped tasks ignore the evaluation key and test_components' quadratic has no noise, so
  the probe draws noisy minibatches and adds key-dependent noise to its evaluation;
- ``num_steps`` must be a multiple of ``eval_every``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.evaluate import baseline_tuner, train_curves
from lopt.evaluate.runs import EVAL_SPLITS, SELECTION_SPLIT, tidy_curves
from lopt.optimizers import make_baseline

H = np.asarray([1.0, 4.0], np.float32)
X0 = np.asarray([1.0, 2.0], np.float32)


@dataclasses.dataclass(frozen=True)
class Probe:
    """``0.5 sum h x^2 + <batch, x>`` from the fixed start ``X0`` (``init`` ignores its key).

    ``noise_std`` scales the minibatch (Gaussian, from the step's key); ``eval_noise`` adds
    ``eval_noise * U(0, 1)`` drawn from the evaluation key to every evaluated loss.
    """

    noise_std: float = 0.0
    eval_noise: float = 0.0
    name: str = "probe"

    def init(self, key):
        del key
        return {"x": jnp.asarray(X0)}

    def loss(self, params, batch):
        x = params["x"]
        return 0.5 * jnp.sum(jnp.asarray(H) * x**2) + jnp.dot(batch, x)

    def batch(self, data, key, split):
        del data, split
        return self.noise_std * jax.random.normal(key, (2,))

    def evaluate(self, params, data, key, split):
        del data, split
        return {"loss": self.loss(params, jnp.zeros(2)) + self.eval_noise * jax.random.uniform(key)}


def _closed_form_loss(t):
    t = np.asarray(t, np.float64)
    return 0.5 * 0.81**t + 8.0 * 0.36**t


def test_curves_follow_the_closed_form_and_tidy_rows_carry_seeds_and_steps():
    seeds, num_steps, eval_every = np.asarray([3, 8]), 20, 5
    curves = train_curves(Probe(), lambda lr: optax.sgd(lr), jnp.asarray([0.1]), seeds, None, num_steps, eval_every)
    expected_batch = _closed_form_loss(np.arange(num_steps))  # 8.5, 6.285, ...
    expected_evals = _closed_form_loss(np.arange(0, num_steps + 1, eval_every))
    # float32 products of at most 20 factors: ~1e-6 relative
    for s in range(len(seeds)):
        np.testing.assert_allclose(curves["train_batch"][0, s], expected_batch, rtol=1e-5)
        for split in EVAL_SPLITS:
            np.testing.assert_allclose(curves[f"{split}_loss"][0, s], expected_evals, rtol=1e-5)
            assert np.isnan(curves[f"{split}_accuracy"][0, s]).all()  # the probe has no accuracy

    df = tidy_curves(jax.tree.map(lambda x: x[0], curves), "probe", "sgd", 0.1, seeds, eval_every)
    for split in ("train_batch", *EVAL_SPLITS):
        rows = df[df["split"] == split]
        assert sorted(set(rows["seed"])) == [3, 8], split
        for seed in (3, 8):
            one = rows[rows["seed"] == seed].sort_values("step")
            steps = np.arange(num_steps) if split == "train_batch" else np.arange(0, num_steps + 1, eval_every)
            np.testing.assert_array_equal(one["step"].to_numpy(), steps)
            np.testing.assert_allclose(one["loss"].to_numpy(), _closed_form_loss(steps), rtol=1e-5)
    assert set(df["task"]) == {"probe"} and set(df["optimizer"]) == {"sgd"} and set(df["learning_rate"]) == {0.1}


def test_tuning_run_ends_on_its_curves_last_point_with_noisy_batches_and_evaluations():
    task = Probe(noise_std=1.0, eval_noise=1.0)
    lrs, seeds, num_steps, eval_every = jnp.asarray([0.05, 0.1]), np.asarray([0, 5]), 20, 5

    def make(lr):
        return make_baseline("sgd", lr, "constant", num_steps)

    curves = train_curves(task, make, lrs, seeds, None, num_steps, eval_every)
    final = baseline_tuner(task, [("sgd", "constant")], None, num_steps, eval_every)("sgd", "constant", lrs, seeds)
    # the same float32 operations in two programs
    np.testing.assert_allclose(final, curves[f"{SELECTION_SPLIT}_loss"][..., -1], rtol=1e-6, atol=1e-6)
    # and the noise is really there: minibatches move the runs apart from the closed form,
    # evaluations of one state differ by split (their keys differ)
    assert np.abs(curves["train_batch"][1, 0] - _closed_form_loss(np.arange(num_steps))).max() > 1e-2
    assert np.abs(curves["train_loss"] - curves["test_loss"]).max() > 1e-3


def test_num_steps_must_be_a_multiple_of_eval_every():
    with pytest.raises(ValueError, match=r"num_steps \(10\) must be a multiple of eval_every \(3\)"):
        train_curves(Probe(), lambda lr: optax.sgd(lr), jnp.asarray([0.1]), np.arange(1), None, 10, 3)
