"""The learned-optimizer zoo: MLPLOpt (feature subsets), AdafacMLPLOpt, NNAdam, RNNMLPLOpt,
NominalLOpt and the registry. Every check compares numbers; everything is seeded."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.checkpoint import load_meta_params, save_meta_params
from lopt.optimizers import (
    LOPT_KINDS,
    MLP_FEATURES,
    AdafacMLPLOpt,
    LearnedOptimizer,
    MLPLOpt,
    NNAdam,
    NominalLOpt,
    RNNMLPLOpt,
    make_lopt,
    model_card_markdown,
)
from lopt.optimizers._nn import apply_mlp, count_leaves, init_mlp

jax.config.update("jax_enable_x64", False)

NUM_STEPS = 20
CASES = (*LOPT_KINDS, "nominal_mlp_lopt")


def build(case: str, **fields: Any) -> LearnedOptimizer:
    if case == "nominal_mlp_lopt":
        return make_lopt("mlp_lopt", nominal={"optimizer": "adam", "learning_rate": 1e-3}, **fields)
    return make_lopt(case, **fields)


def _make_inner_params() -> dict:
    k = jax.random.split(jax.random.PRNGKey(11), 4)
    return {
        "w": jax.random.normal(k[0], (3, 4)),
        "b": 0.1 * jax.random.normal(k[1], (4,)),
        "s": jnp.asarray(0.5),
        "t": jax.random.normal(k[3], (2, 3, 2)),
    }


_INNER_PARAMS = jax.device_get(_make_inner_params())  # numpy: no per-test eager compilations


def inner_params() -> dict:
    """Matrix, vector, scalar and rank-3 tensor (Adafactor factors the last two axes)."""
    return {k: jnp.asarray(v) for k, v in _INNER_PARAMS.items()}


_TARGET = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), inner_params())


def quad_loss(params: dict) -> jax.Array:
    """0.5 sum h (x - c)^2 with curvatures 1..4 per tensor."""
    total = 0.0
    for i, key in enumerate(sorted(params)):
        total = total + 0.5 * (i + 1) * jnp.sum(jnp.square(params[key] - _TARGET[key]))
    return total


def unroll(opt: optax.GradientTransformationExtraArgs, params: dict, steps: int):
    """``steps`` inner steps on ``quad_loss`` (lax.scan); returns (sum of losses, params, state)."""

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(quad_loss)(p)
        u, s = opt.update(g, s, p, value=loss)
        return (optax.apply_updates(p, u), s), loss

    (params, state), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return jnp.sum(losses), params, state


def assert_trees_close(a, b, atol=1e-6, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


UNROLL = 5


def meta_value_and_grad(case: str):
    """``(lopt, f)``: ``f(theta) -> (meta-loss, d meta-loss / d theta)``, jitted.

    The meta-loss is the sum of the inner losses before, between and after two inner steps
    (a Python unroll: it compiles ~4x faster than ``lax.scan`` and the second update, which
    already depends on every recurrent meta-parameter, reaches the loss).
    """
    lopt = build(case, zero_init_output=False)
    # a matrix and a vector (the scalar and rank-3 cases are covered by the forward tests):
    # the compile time of the gradient grows with the number of tensors
    params = {k: v for k, v in inner_params().items() if k in ("w", "b")}

    def meta_loss(theta):
        opt = lopt.to_optax(theta, NUM_STEPS)
        p, state, total = params, opt.init(params), 0.0
        for _ in range(2):
            loss, g = jax.value_and_grad(quad_loss)(p)
            u, state = opt.update(g, state, p, value=loss)
            p, total = optax.apply_updates(p, u), total + loss
        return total + quad_loss(p)

    return lopt, jax.jit(jax.value_and_grad(meta_loss))


@functools.cache
def final_params_fn(case: str):
    """``f(theta) -> params after UNROLL inner steps``, jitted once per kind (per process).

    ``to_optax`` does not depend on ``zero_init_output`` (only ``init`` does), so this also
    runs zero-initialised meta-parameters.
    """
    lopt = build(case, zero_init_output=False)
    params = inner_params()
    return jax.jit(lambda th: unroll(lopt.to_optax(th, NUM_STEPS), params, UNROLL)[1])


# --------------------------------------------------------------------------------------------
# Every kind


@pytest.mark.parametrize("case", CASES)
def test_update_jits_and_vmap_over_meta_params_and_states_matches_loop(case):
    lopt = build(case, zero_init_output=False)
    assert isinstance(lopt, LearnedOptimizer)
    params = inner_params()
    grads = jax.jit(jax.grad(quad_loss))(params)
    # four meta-parameter copies, as numpy (host-side stacking and slicing compile nothing)
    thetas = [jax.device_get(lopt.init(jax.random.PRNGKey(i))) for i in range(4)]

    def one(theta, state, loss):
        return lopt.to_optax(theta, NUM_STEPS).update(grads, state, params, value=loss)

    # Distinct inner states: one step from init with a different loss value per copy.
    one_jit = jax.jit(one)
    init_state = jax.device_get(lopt.to_optax(thetas[0], NUM_STEPS).init(params))
    states = [
        jax.device_get(one_jit(t, init_state, np.float32(1.0 + i))[1]) for i, t in enumerate(thetas)
    ]
    losses = np.asarray([0.5, 0.7, 0.9, 1.1], np.float32)
    looped = jax.device_get(
        [one_jit(t, s, losses[i]) for i, (t, s) in enumerate(zip(thetas, states))]
    )
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(trees))
    vmapped = jax.jit(jax.vmap(one))(stack(thetas), stack(states), losses)
    assert_trees_close(vmapped, stack(looped))
    updates = looped[0][0]
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(u.dtype == np.float32 for u in jax.tree.leaves(updates))
    assert all(np.max(np.abs(u)) > 0 for u in jax.tree.leaves(updates))
    # the optimizers differ across meta-parameter copies
    assert np.max(np.abs(looped[0][0]["w"] - looped[1][0]["w"])) > 1e-7


@pytest.mark.parametrize("case", CASES)
def test_meta_gradient_of_unrolled_losses_is_finite_and_nonzero(case):
    lopt, value_and_grad = meta_value_and_grad(case)
    theta = lopt.init(jax.random.PRNGKey(3))
    _, grad = value_and_grad(theta)
    grad, theta = jax.device_get((grad, theta))  # numpy from here on: no more compilations
    leaves = jax.tree.leaves(grad)
    assert all(np.all(np.isfinite(x)) for x in leaves)
    norm = float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in leaves)))
    assert norm > 0.0
    # every meta-parameter array receives some gradient
    zero = [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_leaves_with_path(grad)
            if not np.any(x)]  # fmt: skip
    assert not zero, zero
    # and a central finite difference of the meta-loss along the gradient direction
    eps = np.float32(1e-2 / norm)
    plus = jax.tree.map(lambda t, g: t + eps * g, theta, grad)
    minus = jax.tree.map(lambda t, g: t - eps * g, theta, grad)
    fd = (float(value_and_grad(plus)[0]) - float(value_and_grad(minus)[0])) / (2 * 1e-2)
    assert fd == pytest.approx(norm, rel=0.2, abs=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_untrained_behaviour(case):
    lopt = build(case)  # zero_init_output=True by default
    theta = lopt.init(jax.random.PRNGKey(0))
    params = inner_params()
    final = final_params_fn(case)(theta)
    if case in ("mlp_lopt", "adafac_mlp_lopt", "rnn_mlp_lopt"):
        for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # exact no-op
        assert lopt.card()["untrained"] == "no-op"
        return
    _, expected, _ = jax.jit(lambda p: unroll(optax.adam(1e-3), p, UNROLL))(params)
    assert_trees_close(final, expected, atol=1e-6, rtol=0)
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(params))
    )
    assert moved > 0.8 * UNROLL * 1e-3  # UNROLL Adam steps of ~1e-3
    assert lopt.card()["untrained"].startswith("Adam(lr=0.001")


def _state_size(lopt: LearnedOptimizer, params: dict) -> int:
    opt = lopt.to_optax(lopt.init(jax.random.PRNGKey(0)), NUM_STEPS)
    return count_leaves(jax.eval_shape(opt.init, params))


@pytest.mark.parametrize("case", CASES)
def test_card_numbers_match_the_implementation(case):
    lopt = build(case)
    card = lopt.card()
    theta = lopt.init(jax.random.PRNGKey(0))
    assert card["name"] == lopt.name
    assert card["num_meta_params"] == lopt.num_meta_params() == count_leaves(theta)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(theta))
    # one feature name per input unit of the first layer(s)
    inputs = 0
    if "lstm" in theta:
        h = theta["lstm"]["w"].shape[1] // 4
        inputs += theta["lstm"]["w"].shape[0] - h
    mlp = theta.get("mlp", theta)
    if "layer_0" in mlp:
        inputs += mlp["layer_0"]["w"].shape[0]
    assert len(card["features"]) == inputs
    assert len(set(card["features"])) == len(card["features"])

    # slope of the state size: fit size = a*T*R*C + b*T*(R+C) + d*T + e over matrices
    shapes = [(1, 2, 3), (1, 4, 5), (1, 3, 7), (2, 2, 3), (2, 5, 4), (3, 6, 2), (2, 9, 9)]
    rows, sizes = [], []
    for n_t, r, c in shapes:
        params = {f"x{i}": jnp.zeros((r, c)) for i in range(n_t)}
        rows.append([n_t * r * c, n_t * (r + c), n_t, 1])
        sizes.append(_state_size(lopt, params))
    coef, *_ = np.linalg.lstsq(np.asarray(rows, float), np.asarray(sizes, float), rcond=None)
    coef_int = np.round(coef).astype(int)
    np.testing.assert_allclose(coef, coef_int, atol=1e-6)
    assert coef_int[0] == card["state_floats_per_param"]
    assert coef_int[1] == card.get("state_floats_per_row_and_col", 0)
    assert coef_int[2] == card["state_floats_per_tensor"]
    # the plain two-size slope on vectors
    small = _state_size(lopt, {"x": jnp.zeros(10)})
    large = _state_size(lopt, {"x": jnp.zeros(1010)})
    per_param = card.get("state_floats_per_param_unfactored", card["state_floats_per_param"])
    assert (large - small) / 1000 == per_param
    md = model_card_markdown(card)
    assert (
        md.startswith(f"### {lopt.name}")
        and f"| num_meta_params | {card['num_meta_params']} |" in md
    )


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_gives_identical_updates(case, tmp_path):
    lopt, run = build(case, zero_init_output=False), final_params_fn(case)
    theta = lopt.init(jax.random.PRNGKey(5))
    path = tmp_path / "meta_params.npz"
    save_meta_params(path, theta, {"kind": lopt.name})
    loaded = load_meta_params(path, lopt.init(jax.random.PRNGKey(6)))
    a, b, other = run(theta), run(loaded), run(lopt.init(jax.random.PRNGKey(6)))
    # identical trajectories, different from those of the template's own values
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(jnp.max(jnp.abs(a["w"] - other["w"]))) > 0


@pytest.mark.parametrize("case", CASES)
def test_update_requires_params(case):
    lopt = build(case)
    opt = lopt.to_optax(lopt.init(jax.random.PRNGKey(0)), NUM_STEPS)
    params = inner_params()
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, opt.init(params), value=1.0)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)


# --------------------------------------------------------------------------------------------
# MLPLOpt: bit-identical with the pre-zoo implementation; feature subsets


def _head_mlp_lopt_update(lopt, theta, num_steps, grads, state, params):
    """A copy of MLPLOpt.update as it was before feature selection (git 75e8368)."""
    decays = jnp.asarray(lopt.momentum_decays, jnp.float32)
    frac = state.count.astype(jnp.float32) / jnp.asarray(num_steps, jnp.float32)
    centres = jnp.linspace(0.0, 1.0, lopt.num_time_features)
    time_feats = jnp.tanh(lopt.num_time_features * (frac - centres))

    def per_tensor(g, p, m, v):
        bshape = (-1,) + (1,) * g.ndim
        m = decays.reshape(bshape) * m + (1 - decays.reshape(bshape)) * g[None]
        v = lopt.rms_decay * v + (1 - lopt.rms_decay) * jnp.square(g)
        rsqrt_v = jax.lax.rsqrt(v + 1e-8)
        feats = jnp.concatenate(
            [
                p[..., None],
                g[..., None],
                jnp.moveaxis(m, 0, -1),
                jnp.sqrt(v + 1e-8)[..., None],
                jnp.moveaxis(m * rsqrt_v[None], 0, -1),
                (g * rsqrt_v)[..., None],
            ],
            axis=-1,
        )
        axes = tuple(range(feats.ndim - 1))
        feats = feats * jax.lax.rsqrt(jnp.mean(jnp.square(feats), axis=axes, keepdims=True) + 1e-5)
        feats = jnp.concatenate(
            [feats, jnp.broadcast_to(time_feats, (*g.shape, lopt.num_time_features))], axis=-1
        )
        x = feats
        for i in range(len(theta)):
            x = x @ theta[f"layer_{i}"]["w"] + theta[f"layer_{i}"]["b"]
            if i < len(theta) - 1:
                x = jax.nn.relu(x)
        step = x[..., 0] * jnp.exp(x[..., 1] * lopt.exp_mult) * lopt.step_mult
        return -step.astype(p.dtype), m, v

    out = {
        k: per_tensor(grads[k], params[k], state.momenta[k], state.second_moment[k]) for k in grads
    }
    return {k: v[0] for k, v in out.items()}, type(state)(
        state.count + 1, {k: v[1] for k, v in out.items()}, {k: v[2] for k, v in out.items()}
    )


def test_shared_inputs_are_a_first_layer_bias():
    """``apply_mlp(params, x, shared)`` is the MLP of ``[x, shared]`` broadcast to every row
    (values and gradients), and a wrong split of the first layer would be O(1) off."""
    params = init_mlp(jax.random.PRNGKey(0), (7 + 5, 16, 16, 2), zero_last=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 7))
    shared = jax.random.normal(jax.random.PRNGKey(2), (5,))

    def concatenated(params, x, shared):
        return apply_mlp(params, jnp.concatenate([x, jnp.broadcast_to(shared, (*x.shape[:-1], 5))], -1))

    np.testing.assert_allclose(apply_mlp(params, x, shared), concatenated(params, x, shared), rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda p, s: jnp.sum(f(p, x, s) ** 2)
    grads = jax.grad(loss(apply_mlp), argnums=(0, 1))(params, shared)
    expected = jax.grad(loss(concatenated), argnums=(0, 1))(params, shared)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    swapped = jnp.concatenate([shared[1:], shared[:1]])  # the order of shared inputs matters
    assert np.abs(np.asarray(apply_mlp(params, x, swapped) - apply_mlp(params, x, shared))).max() > 1e-2


def test_mlp_lopt_default_features_match_the_previous_implementation():
    """The pre-zoo update (every feature broadcast and concatenated per parameter).

    Since the time features enter the first layer as a bias (``apply_mlp(..., shared=)``)
    the sums run in another order, so the updates agree to float32 rounding rather than
    bit for bit: rtol 1e-5 is ~100 ulp of the MLP's outputs, far below any change of
    feature, layer or scale (those move the updates by O(1)); the optimizer states do not
    involve the MLP and stay bit-identical.
    """
    lopt = MLPLOpt(zero_init_output=False)
    assert lopt.features == MLP_FEATURES and lopt.num_features == 23
    theta = lopt.init(jax.random.PRNGKey(0))
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (3, 4)), "b": jnp.arange(4.0) * 0.1}
    opt = lopt.to_optax(theta, 20)
    new_update = jax.jit(opt.update)
    old_update = jax.jit(lambda g, s, p: _head_mlp_lopt_update(lopt, theta, 20, g, s, p))
    state_new = state_old = opt.init(params)
    p_new = p_old = params
    for t in range(3):
        g_new = jax.tree.map(lambda p, t=t: jnp.sin(3.0 * p + t), p_new)
        g_old = jax.tree.map(lambda p, t=t: jnp.sin(3.0 * p + t), p_old)
        u_new, state_new = new_update(g_new, state_new, p_new)
        u_old, state_old = old_update(g_old, state_old, p_old)
        for x, y in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-10)
        for x, y in zip(jax.tree.leaves(state_new), jax.tree.leaves(state_old)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        p_new = jax.tree.map(lambda a, b: a + b, p_new, u_new)
        p_old = jax.tree.map(lambda a, b: a + b, p_old, u_old)
    # numbers recorded from the pre-zoo implementation (commit 75e8368, CPU, float32)
    expected_w = [
        0.0005007764557376504,
        0.00040924191125668585,
        0.0005036074435338378,
        0.0005005137645639479,
    ]
    expected_b = [
        0.0004995695198886096,
        0.00039758492494001985,
        0.00034472771221771836,
        0.00032154112705029547,
    ]
    np.testing.assert_allclose(np.asarray(u_new["w"]).ravel()[:4], expected_w, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u_new["b"]), expected_b, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(p_new["w"]).ravel()[:3],
        [-0.15365546941757202, 0.08618368953466415, -0.135127454996109],
        rtol=1e-6,
    )


def test_mlp_lopt_feature_subsets():
    with pytest.raises(ValueError) as err:
        MLPLOpt(features=("grad", "adam_ratio"))
    for name in ("adam_ratio", *MLP_FEATURES):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="allowed"):
        make_lopt("mlp_lopt", features=["nope"])
    # any order -> canonical order (meaning is stable), lists accepted
    a = MLPLOpt(features=("time", "grad_rsqrt", "param"))
    b = make_lopt("mlp_lopt", features=["param", "grad_rsqrt", "time"])
    assert a == b and a.features == ("param", "grad_rsqrt", "time")
    assert a.num_features == 1 + 1 + 11
    assert a.feature_names()[:2] == ["param", "grad_rsqrt"]
    k = len(a.momentum_decays)
    assert MLPLOpt(features=("momentum", "momentum_rsqrt")).num_features == 2 * k
    assert MLPLOpt(features=("time",)).num_features == 11
    # a subset selects exactly those columns of the default feature matrix: a one-layer
    # MLP reading only "grad_rsqrt" in the subset equals the full MLP with that one weight
    full = MLPLOpt(num_layers=0, step_mult=0.1)
    sub = MLPLOpt(num_layers=0, step_mult=0.1, features=("grad_rsqrt",))
    w_full = np.zeros((full.num_features, 2), np.float32)
    w_full[3 + 2 * k, 0] = 1.0
    theta_full = {"layer_0": {"w": jnp.asarray(w_full), "b": jnp.zeros(2)}}
    theta_sub = {"layer_0": {"w": jnp.asarray([[1.0, 0.0]]), "b": jnp.zeros(2)}}
    params = inner_params()
    _, p_full, _ = unroll(full.to_optax(theta_full, NUM_STEPS), params, 4)
    _, p_sub, _ = unroll(sub.to_optax(theta_sub, NUM_STEPS), params, 4)
    assert_trees_close(p_full, p_sub, atol=1e-7, rtol=0)
    assert float(quad_loss(p_sub)) < float(quad_loss(params))
    # time-only works too (no normalised features at all)
    t_only = MLPLOpt(features=("time",), zero_init_output=False)
    _, p_t, _ = unroll(t_only.to_optax(t_only.init(jax.random.PRNGKey(0)), NUM_STEPS), params, 2)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p_t))


# --------------------------------------------------------------------------------------------
# AdafacMLPLOpt


def test_adafac_state_is_factored_for_large_matrices():
    lopt = AdafacMLPLOpt()
    n = _state_size(lopt, {"w": jnp.zeros((1000, 1000))})
    assert n < 8e6
    # exactly (k + r) per parameter plus a * (rows + cols) plus the step counter
    assert n == 6 * 1_000_000 + 3 * 2000 + 1
    assert lopt.card()["state_floats_per_param"] == 6
    # unfactored, the same matrix would need 9 floats per parameter
    assert _state_size(lopt, {"w": jnp.zeros(1_000_000)}) == 9 * 1_000_000 + 1


def test_adafac_factored_estimate_is_exact_for_rank_one_squares():
    lopt = AdafacMLPLOpt()
    a = jnp.asarray([1.0, 2.0, 3.0])
    b = jnp.asarray([0.5, 1.0, 2.0, 4.0])
    g = jnp.outer(a, b)  # g^2 = outer(a^2, b^2) has rank one
    fac = lopt._init_factored(g)
    v_hat, row_rsqrt, _, fac = lopt.factored_second_moment(g, fac)
    decays = np.asarray(lopt.adafactor_decays, np.float32)[:, None, None]
    np.testing.assert_allclose(v_hat, (1 - decays) * np.square(np.asarray(g)), rtol=1e-5)
    assert fac["row"].shape == (3, 3) and fac["col"].shape == (3, 4)
    # second step: still exact for the EMA of a rank-one sequence with a fixed shape
    v_hat, *_ = lopt.factored_second_moment(2 * g, fac)
    expect = decays * (1 - decays) * np.square(g) + (1 - decays) * np.square(2 * g)
    np.testing.assert_allclose(v_hat, expect, rtol=1e-5)
    np.testing.assert_allclose(
        row_rsqrt[0, :, 0], 1 / np.sqrt(0.1 * a**2 * np.mean(b**2)), rtol=1e-4
    )
    # vectors keep the full EMA
    v, *_ = lopt.factored_second_moment(b, lopt._init_factored(b))
    np.testing.assert_allclose(v, (1 - decays[:, :, 0]) * np.square(b), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# NNAdam


def test_nn_adam_matches_optax_adam_with_other_initial_hyperparameters():
    lopt = NNAdam(
        initial_learning_rate=3e-2,
        initial_beta1=0.8,
        initial_beta2=0.99,
        initial_epsilon=1e-6,
        lstm_hidden_size=8,
    )
    theta = lopt.init(jax.random.PRNGKey(0))
    params = inner_params()
    _, got, state = unroll(lopt.to_optax(theta, NUM_STEPS), params, 15)
    _, want, _ = unroll(optax.adam(3e-2, b1=0.8, b2=0.99, eps=1e-6), params, 15)
    assert_trees_close(got, want, atol=2e-6, rtol=0)
    assert lopt.card()["untrained"] == "Adam(lr=0.03, b1=0.8, b2=0.99, eps=1e-06)"
    np.testing.assert_allclose(state.beta1_prod["w"], 0.8**15, rtol=1e-5)


def test_nn_adam_outputs_set_the_hyperparameters():
    """A hand-set head bias: o_0 = log 2 doubles the learning rate of the first Adam step."""
    lopt = NNAdam(lstm_hidden_size=4)
    theta = lopt.init(jax.random.PRNGKey(0))
    theta["head"]["b"] = jnp.asarray([np.log(2.0), 0.0, 0.0, 0.0], jnp.float32)
    params = inner_params()
    g = jax.grad(quad_loss)(params)
    opt = lopt.to_optax(theta, NUM_STEPS)
    u, _ = jax.jit(opt.update)(g, opt.init(params), params, value=1.0)
    ref, _ = optax.adam(2e-3).update(g, optax.adam(2e-3).init(params), params)
    assert_trees_close(u, ref, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# RNNMLPLOpt


def test_rnn_mlp_lopt_requires_the_loss_and_reads_it():
    lopt = RNNMLPLOpt(zero_init_output=False)
    theta = lopt.init(jax.random.PRNGKey(0))
    opt = lopt.to_optax(theta, NUM_STEPS)
    params = inner_params()
    g = jax.grad(quad_loss)(params)
    state = opt.init(params)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(g, state, params)
    update = jax.jit(opt.update)
    _, s1 = update(g, state, params, value=2.0)
    # loss statistics: mean = 0.1 * 2 (corrected: 2), var from the corrected mean = 0
    np.testing.assert_allclose(float(s1.loss_mean), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(s1.loss_var), 0.0, atol=1e-12)
    # a constant loss keeps variance 0; a new value deviates from the corrected mean
    _, s2 = update(g, s1, params, value=2.0)
    np.testing.assert_allclose(float(s2.loss_var), 0.0, atol=1e-7)
    _, s3 = update(g, s2, params, value=5.0)
    corr = 1 - 0.9**3
    mean3 = 0.9 * float(s2.loss_mean) + 0.1 * 5.0
    np.testing.assert_allclose(float(s3.loss_var), 0.1 * (5.0 - mean3 / corr) ** 2, rtol=1e-5)
    u_lo, _ = update(g, s1, params, value=1.0)
    u_hi, _ = update(g, s1, params, value=3.0)
    assert float(jnp.max(jnp.abs(u_lo["w"] - u_hi["w"]))) > 1e-8


def test_rnn_mlp_lopt_dynamic_gradient_clipping():
    lopt = RNNMLPLOpt()
    opt = lopt.to_optax(lopt.init(jax.random.PRNGKey(0)), NUM_STEPS)
    params = {"w": jnp.zeros((2, 2))}
    state = opt.init(params)
    update = jax.jit(opt.update)
    # first step: v_prev = 0, no clipping even for a big gradient
    _, state = update({"w": jnp.full((2, 2), 100.0)}, state, params, value=1.0)
    v1 = (1 - 0.999) * 100.0**2
    np.testing.assert_allclose(state.second_moment["w"], v1, rtol=1e-6)
    np.testing.assert_allclose(state.momenta["w"][0], 50.0, rtol=1e-6)
    # second step: entries beyond 10 * sqrt(v_prev / (1 - 0.999)) (bias-corrected: 10 x
    # the first gradient's size) are clipped, smaller ones are not
    g2 = jnp.asarray([[1e6, -1e6], [1.0, -900.0]])
    _, state2 = update({"w": g2}, state, params, value=1.0)
    bound = 10.0 * np.sqrt(v1 / (1 - 0.999) + 1e-8)
    assert bound == pytest.approx(1000.0, rel=1e-6)
    clipped = np.clip(np.asarray(g2), -bound, bound)
    np.testing.assert_allclose(state2.momenta["w"][0], 0.5 * 50.0 + 0.5 * clipped, rtol=1e-6)
    np.testing.assert_allclose(
        state2.second_moment["w"], 0.999 * v1 + 0.001 * clipped**2, rtol=1e-6
    )


def test_rnn_mlp_lopt_clipping_spares_typical_gradients_early():
    """Dynamic clipping is for outliers: on stationary N(0, 1) gradients the second moment
    after 20 steps equals the unclipped EMA of g^2 (the bias-corrected bound). Without the
    correction the bound starts at 0.3 sqrt(n) typical gradients and clips most entries:
    the second moment comes out ~5.7x too small."""
    lopt = RNNMLPLOpt()
    opt = lopt.to_optax(lopt.init(jax.random.PRNGKey(0)), NUM_STEPS)
    params = {"w": jnp.zeros((1000,))}
    grads = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (20, 1000)))
    update = jax.jit(opt.update)
    state = opt.init(params)
    for g in grads:
        _, state = update({"w": jnp.asarray(g)}, state, params, value=1.0)
    v = np.zeros(1000)
    for g in grads:
        v = 0.999 * v + 0.001 * g**2
    # 1000 entries: the unclipped EMA has relative s.e. ~ 1 % ; rare clipped entries
    # (mostly at step 2, where the bound is 10 |g_1|) move the mean by well under 5 %
    np.testing.assert_allclose(np.mean(state.second_moment["w"]), np.mean(v), rtol=0.05)


# --------------------------------------------------------------------------------------------
# NominalLOpt and the registry


@pytest.mark.parametrize("kind", ["mlp_lopt", "nn_adam"])
def test_nominal_term_descends_while_untrained_base_does_not(kind):
    base = make_lopt(kind)
    if kind == "nn_adam":  # untrained NNAdam is Adam: make the base itself a no-op
        base = dataclasses.replace(base, initial_learning_rate=0.0)
    nominal = NominalLOpt(base)
    assert nominal.name == f"nominal_{base.name}"
    noise = inner_params()  # start 0.1 * N(0, 1) away from the minimum (Adam moves <= lr/step)
    params = jax.tree.map(lambda t, n: t + 0.1 * n, _TARGET, noise)
    theta = base.init(jax.random.PRNGKey(0))
    start = float(quad_loss(params))
    _, p_nom, _ = jax.jit(lambda p: unroll(nominal.to_optax(theta, 200), p, 200))(params)
    _, p_base, _ = jax.jit(lambda p: unroll(base.to_optax(theta, 200), p, 200))(params)
    assert float(quad_loss(p_nom)) < 0.5 * start
    for x, y in zip(jax.tree.leaves(p_base), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nominal_sgd_and_momentum_and_card():
    base = MLPLOpt()
    params = inner_params()
    theta = base.init(jax.random.PRNGKey(0))
    for nominal, ref in (("sgd", optax.sgd(0.05)), ("momentum", optax.sgd(0.05, momentum=0.9))):
        lopt = NominalLOpt(base, nominal=nominal, learning_rate=0.05)
        _, got, _ = unroll(lopt.to_optax(theta, NUM_STEPS), params, 5)
        _, want, _ = unroll(ref, params, 5)
        assert_trees_close(got, want, atol=1e-6, rtol=0)
    card = NominalLOpt(base, nominal="momentum", learning_rate=0.05).card()
    assert card["untrained"] == "SGD+momentum(0.9)(lr=0.05)"
    assert card["state_floats_per_param"] == base.card()["state_floats_per_param"] + 1
    assert card["num_meta_params"] == base.num_meta_params()
    with pytest.raises(ValueError, match="adam"):
        NominalLOpt(base, nominal="lion")


def test_registry():
    assert LOPT_KINDS == ("mlp_lopt", "adafac_mlp_lopt", "nn_adam", "rnn_mlp_lopt")
    with pytest.raises(ValueError) as err:
        make_lopt("velo")
    assert all(k in str(err.value) for k in LOPT_KINDS)
    with pytest.raises(ValueError, match="hidden_size"):
        make_lopt("nn_adam", hidden_size=3)
    lopt = make_lopt("adafac_mlp_lopt", momentum_decays=[0.9, 0.99], hidden_size=8)
    assert isinstance(lopt, AdafacMLPLOpt) and lopt.momentum_decays == (0.9, 0.99)
    assert hash(lopt)  # frozen, hashable (usable as a jit static argument)
    wrapped = make_lopt("rnn_mlp_lopt", nominal={"optimizer": "sgd", "learning_rate": 0.1})
    assert isinstance(wrapped, NominalLOpt) and wrapped.nominal == "sgd"
    assert wrapped.learning_rate == 0.1 and wrapped.name == "nominal_rnn_mlp_lopt"
    with pytest.raises(ValueError, match="allowed"):
        make_lopt("mlp_lopt", nominal={"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="lr"):
        make_lopt("mlp_lopt", nominal={"lr": 0.1})
    assert make_lopt("mlp_lopt") == MLPLOpt()
