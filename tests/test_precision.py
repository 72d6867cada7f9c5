"""Inner-task compute precision (lopt.tasks.precision): float32 is unchanged, bfloat16
runs the forward pass in bf16 while params, gradients, logits and losses stay float32.

Tolerances. bfloat16 keeps 8 significand bits, a relative rounding error of up to
2**-8 ~ 4e-3 per operation. A loss is a mean over many examples of a few layers' worth
of such errors, which partly cancel, so we allow a 2e-2 relative loss difference (a few
ops' worth of worst-case rounding; measured 2e-6 .. 3e-3) and require gradient cosine
similarity > 0.99 (measured > 0.998).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.config import (
    CharLMTaskConfig,
    ImageConvTaskConfig,
    ImageMLPTaskConfig,
    QuadraticTaskConfig,
)
from lopt.tasks import CharLM, ImageConv, ImageMLP, ImageMLPFamily, NoisyQuadratic, build_task
from lopt.tasks.precision import PRECISIONS, cast_floating, check_precision

LOSS_RTOL = 2e-2
MIN_GRAD_COSINE = 0.99

_LM = {"hidden_size": 16, "seq_len": 16, "batch_size": 8, "corpus_chars": 1000}
CONFIGS = {
    "image_mlp": ImageMLPTaskConfig(hidden_sizes=[32, 16], batch_size=32),
    "image_conv": ImageConvTaskConfig(channels=[4, 8], batch_size=16),
    "char_lm_transformer": CharLMTaskConfig(model="transformer", num_layers=2, **_LM),
    "char_lm_gru": CharLMTaskConfig(model="rnn", cell="gru", **_LM),
    "char_lm_tanh": CharLMTaskConfig(model="rnn", cell="tanh", **_LM),
    "quadratic": QuadraticTaskConfig(dim=16, condition_number=100.0),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def task_pair(request, digits_root: Path):
    """``(float32 task, bfloat16 task, data, params, batch)`` built from a config."""
    t32, data = build_task(CONFIGS[request.param], digits_root, 128)
    t16 = dataclasses.replace(t32, compute_dtype="bfloat16")  # build_task: tested below
    params = _perturbed_init(t32)
    batch = t32.batch(data, jax.random.key(2), "train")
    return t32, t16, data, params, batch


def _perturbed_init(task, seed: int = 0):
    """Init moved off its starting point (where e.g. a char LM predicts ~uniformly), so
    that the loss depends on every parameter (numpy noise: nothing to compile)."""
    rng = np.random.default_rng(seed)

    def perturb(p):
        p = np.asarray(p)
        return jnp.asarray(p + 0.3 * (p.std() + 0.1) * rng.standard_normal(p.shape), jnp.float32)

    return jax.tree.map(perturb, task.init(jax.random.key(seed)))


def _flat(tree) -> jax.Array:
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def _eqns(jaxpr):
    """All equations of ``jaxpr``, including those of nested jaxprs (scan, pjit, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


# ---------------------------------------------------------------------------- policy


def test_check_precision():
    assert PRECISIONS == ("float32", "bfloat16")
    for name in PRECISIONS:
        assert check_precision(name) == name
    with pytest.raises(ValueError, match=r"'float16'.*float32, bfloat16"):
        check_precision("float16")


def test_unknown_precision_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="float32, bfloat16"):
        build_task(QuadraticTaskConfig(), tmp_path, 512, "fp8")
    for make in (
        lambda: ImageMLP(64, 10, compute_dtype="half"),
        lambda: ImageConv((8, 8, 1), 10, compute_dtype="half"),
        lambda: CharLM(10, compute_dtype="half"),
        lambda: NoisyQuadratic(compute_dtype="half"),
        lambda: ImageMLPFamily(64, 10, compute_dtype="half"),
    ):
        with pytest.raises(ValueError, match="'half'.*float32, bfloat16"):
            make()


def test_cast_floating_touches_only_floating_leaves():
    tree = {"w": jnp.ones(3), "y": jnp.arange(3), "mask": jnp.ones(2, bool), "n": 3}
    out = cast_floating(tree, "bfloat16")
    assert out["w"].dtype == jnp.bfloat16
    assert out["y"].dtype == jnp.int32 and out["mask"].dtype == jnp.bool_ and out["n"] == 3
    same = cast_floating(tree, jnp.float32)
    assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(tree)))


def test_build_task_sets_compute_dtype(digits_root: Path):
    for cfg in CONFIGS.values():
        assert build_task(cfg, digits_root)[0].compute_dtype == "float32"
        task, _ = build_task(cfg, digits_root, 64, precision="bfloat16")
        assert task.compute_dtype == "bfloat16"
        hash(task)  # frozen dataclass: usable as a static jit argument
    family = ImageMLPFamily(64, 10, compute_dtype="bfloat16")
    assert family.sample(np.random.default_rng(0)).compute_dtype == "bfloat16"


# ---------------------------------------------------------------------------- float32 unchanged


def test_float32_is_exactly_plain_jnp(digits_root: Path):
    """The float32 path equals a cast-free jnp reference bit for bit."""
    task, data = build_task(
        ImageMLPTaskConfig(hidden_sizes=[32, 16], activation="tanh"), digits_root
    )
    params = task.init(jax.random.key(0))
    x, y = task.batch(data, jax.random.key(1), "train")

    def reference(p, x, y):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["layer_0"]["w"] + p["layer_0"]["b"])
        h = jnp.tanh(h @ p["layer_1"]["w"] + p["layer_1"]["b"])
        logits = h @ p["layer_2"]["w"] + p["layer_2"]["b"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    got = jax.jit(jax.value_and_grad(task.loss))(params, (x, y))
    want = jax.jit(jax.value_and_grad(reference))(params, x, y)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)

    quad = NoisyQuadratic(dim=8, condition_number=50.0)
    p, noise = quad.init(jax.random.key(3)), quad.batch(None, jax.random.key(4), "train")
    h = jnp.logspace(0.0, jnp.log10(50.0), 8)
    want = jax.jit(lambda p: 0.5 * jnp.sum(h * p["x"] ** 2) + jnp.dot(noise, p["x"]))(p)
    np.testing.assert_array_equal(jax.jit(quad.loss)(p, noise), want)


def test_float32_jaxpr_has_no_bfloat16(task_pair):
    t32, _, _, params, batch = task_pair
    text = str(jax.make_jaxpr(jax.value_and_grad(t32.loss))(params, batch))
    assert "bf16" not in text


# ---------------------------------------------------------------------------- bfloat16


def test_bfloat16_jaxpr_computes_in_bfloat16(task_pair):
    _, t16, _, params, batch = task_pair
    jaxpr = jax.make_jaxpr(t16.loss)(params, batch).jaxpr
    heavy = [e for e in _eqns(jaxpr) if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert heavy
    for eqn in heavy:
        assert [str(v.aval.dtype) for v in eqn.invars] == ["bfloat16", "bfloat16"], eqn
    assert jaxpr.outvars[0].aval.dtype == jnp.float32


def test_bfloat16_loss_and_grads_match_float32(task_pair):
    t32, t16, _, params, batch = task_pair
    l32, g32 = jax.jit(jax.value_and_grad(t32.loss))(params, batch)
    l16, g16 = jax.jit(jax.value_and_grad(t16.loss))(params, batch)
    assert l16.dtype == jnp.float32 and np.isfinite(float(l16))
    assert abs(float(l16) - float(l32)) <= LOSS_RTOL * abs(float(l32))
    assert jax.tree.structure(g16) == jax.tree.structure(g32)
    assert all(
        a.dtype == jnp.float32 and a.shape == b.shape
        for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32))
    )
    a, b = _flat(g16), _flat(g32)
    cosine = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    assert cosine > MIN_GRAD_COSINE


@pytest.mark.parametrize("kind", ["image_mlp", "quadratic"])
def test_bfloat16_evaluate_and_vmap(kind, digits_root: Path):
    """Metrics are float32 and close to float32's; the bf16 loss vmaps over params."""
    t32, data = build_task(CONFIGS[kind], digits_root, 128)
    t16, _ = build_task(CONFIGS[kind], digits_root, 128, "bfloat16")
    params = _perturbed_init(t32)
    m32 = jax.jit(t32.evaluate, static_argnums=3)(params, data, jax.random.key(5), "test")
    m16 = jax.jit(t16.evaluate, static_argnums=3)(params, data, jax.random.key(5), "test")
    assert set(m16) == set(m32) and all(v.dtype == jnp.float32 for v in m16.values())
    assert abs(float(m16["loss"]) - float(m32["loss"])) <= LOSS_RTOL * abs(float(m32["loss"]))

    batch = t16.batch(data, jax.random.key(2), "train")
    stacked = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p]), params)
    losses = jax.jit(jax.vmap(t16.loss, in_axes=(0, None)))(stacked, batch)
    assert losses.shape == (2,) and losses.dtype == jnp.float32
    assert float(losses[0]) == float(jax.jit(t16.loss)(params, batch))


def test_bfloat16_training_matches_float32(digits_root: Path):
    """Adam on the digits MLP: bf16 compute lowers the loss about as far as float32."""
    cfg = ImageMLPTaskConfig(hidden_sizes=[32], batch_size=64)
    opt = optax.adam(1e-2)

    def train(task, data):
        def step(carry, key):
            params, state = carry
            grads = jax.grad(task.loss)(params, task.batch(data, key, "train"))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        params = task.init(jax.random.key(0))
        (params, _), _ = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(jax.random.key(1), 200)
        )
        return params

    t32, data = build_task(cfg, digits_root)
    t16, _ = build_task(cfg, digits_root, 512, "bfloat16")
    full = data["train"]  # all training examples, scored in float32
    initial = float(t32.loss(t32.init(jax.random.key(0)), full))
    p32, p16 = (
        jax.jit(train, static_argnums=0)(t32, data),
        jax.jit(train, static_argnums=0)(t16, data),
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))  # master weights
    final32, final16 = float(t32.loss(p32, full)), float(t32.loss(p16, full))
    assert final32 < 0.2 * initial and final16 < 0.2 * initial
    assert abs(final16 - final32) <= 0.1 * final32 + 0.01  # +0.01: both can be near 0
