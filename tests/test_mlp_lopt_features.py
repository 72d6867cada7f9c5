"""MLPLOpt's feature selection and its time-only path, against hand-worked updates.

test_lopt_zoo.py pins the default feature set against the pre-zoo implementation and a
``grad_rsqrt``-only subset against the full set; for time features alone it checks only
that the update is finite, so an update that ignored the time embedding (or fed it
zeros) passed. Also unpinned: a single feature given as a string, and an empty subset.

With ``num_layers = 0`` the MLP is one linear layer, so the update is, per parameter,
``-(x @ w[:, 0] + b_0) * exp(exp_mult * (x @ w[:, 1] + b_1)) * step_mult`` for the input
``x``; for time features alone ``x = tanh(n (t / num_steps - c_j))`` with centres
``c = linspace(0, 1, n)``, the same for every parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers import MLPLOpt


def test_a_single_feature_may_be_a_string_and_an_empty_subset_is_refused():
    lopt = MLPLOpt(features="grad")
    assert lopt.features == ("grad",) and lopt.num_features == 1 and lopt.feature_names() == ["grad"]
    with pytest.raises(ValueError, match="features is empty"):
        MLPLOpt(features=())


def test_time_only_update_reads_the_training_fraction_embedding():
    lopt = MLPLOpt(features=("time",), num_layers=0, num_time_features=3, step_mult=0.1, exp_mult=1.0)
    assert lopt.num_features == 3 and lopt.feature_names() == ["time_0", "time_1", "time_2"]
    w = np.zeros((3, 2), np.float32)
    w[:, 0] = [1.0, 10.0, 100.0]  # direction: weighs the three centres differently
    w[2, 1] = 1.0  # log-magnitude: the embedding at centre 1
    theta = {"layer_0": {"w": jnp.asarray(w), "b": jnp.zeros(2)}}
    opt = lopt.to_optax(theta, num_steps=10)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.full((2, 3), 0.3), "b": jnp.asarray([1.0, -2.0, 0.5])}
    state = opt.init(params)
    centres = np.asarray([0.0, 0.5, 1.0])
    for count in range(2):
        updates, state = opt.update(grads, state, params)
        emb = np.tanh(3 * (count / 10 - centres))  # count 0: [0, tanh(-1.5), tanh(-3)]
        expected = -(emb @ w[:, 0]) * np.exp(emb[2]) * 0.1  # about +10.6 at count 0
        for leaf in jax.tree.leaves(updates):
            np.testing.assert_allclose(np.asarray(leaf), np.full(leaf.shape, expected), rtol=1e-5)
    assert int(state.count) == 2


def test_a_non_time_feature_is_divided_by_its_rms_over_the_tensor():
    lopt = MLPLOpt(features=("param",), num_layers=0, step_mult=0.1)
    theta = {"layer_0": {"w": jnp.asarray([[1.0, 0.0]]), "b": jnp.zeros(2)}}
    opt = lopt.to_optax(theta, num_steps=10)
    p = np.asarray([[1.0, 2.0], [3.0, 4.0]], np.float32)  # mean of squares 30 / 4 = 7.5
    updates, _ = opt.update({"p": jnp.ones((2, 2))}, opt.init({"p": jnp.asarray(p)}), {"p": jnp.asarray(p)})
    # -step_mult * p / sqrt(7.5 + 1e-5) (the normaliser's eps), exp(exp_mult * 0) = 1
    np.testing.assert_allclose(np.asarray(updates["p"]), -0.1 * p / np.sqrt(7.5 + 1e-5), rtol=1e-6)
