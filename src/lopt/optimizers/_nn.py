"""Small pure-JAX building blocks shared by the learned optimizers.

Everything here is jittable, vmappable over meta-parameters and float32. Meta-parameter
pytrees are plain nested dicts so that :mod:`lopt.checkpoint` can save them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NORM_EPS = 1e-5


def second_moment_normalise(x: jax.Array) -> jax.Array:
    """Divide each feature (last axis) by its RMS over all other axes."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + NORM_EPS)


def time_features(count: jax.Array, num_steps: Any, num_features: int) -> jax.Array:
    """``tanh(n (f - c_j))`` of the training fraction ``f = count / num_steps``, centres in [0, 1]."""
    frac = count.astype(jnp.float32) / jnp.asarray(num_steps, jnp.float32)
    centres = jnp.linspace(0.0, 1.0, num_features)
    return jnp.tanh(num_features * (frac - centres))


def init_mlp(key: jax.Array, sizes: tuple[int, ...], zero_last: bool) -> dict:
    """``{"layer_i": {"w": [in, out], "b": [out]}}`` with 1/sqrt(fan_in) normal weights."""
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)
        if zero_last and i == len(sizes) - 2:
            w = jnp.zeros_like(w)
        params[f"layer_{i}"] = {
            "w": w.astype(jnp.float32),
            "b": jnp.zeros((fan_out,), jnp.float32),
        }
    return params


def apply_mlp(params: dict, x: jax.Array, shared: jax.Array | None = None) -> jax.Array:
    """ReLU MLP over the last axis of ``x``; the last layer is linear.

    ``shared`` (``[S]``, optional) holds inputs common to every row of ``x`` (the
    training-fraction embedding, a per-tensor embedding), logically appended after ``x``'s
    features: the result equals ``apply_mlp(params, concat([x, broadcast(shared)], -1))``
    up to float rounding. The per-parameter optimizers apply the MLP to every scalar
    parameter, so instead of broadcasting ``shared`` to each row, its share of the first
    layer is folded into the bias (``b + shared @ W[F:]``, once per call): S x H fewer
    multiply-adds and S fewer floats through memory per row.
    """
    num = len(params)
    for i in range(num):
        w, b = params[f"layer_{i}"]["w"], params[f"layer_{i}"]["b"]
        if i == 0 and shared is not None:
            width = x.shape[-1]
            w, b = w[:width], b + shared @ w[width:]
        x = x @ w + b
        if i < num - 1:
            x = jax.nn.relu(x)
    return x


def init_linear(key: jax.Array, fan_in: int, fan_out: int, zero: bool = False) -> dict:
    w = jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in)
    if zero:
        w = jnp.zeros_like(w)
    return {"w": w.astype(jnp.float32), "b": jnp.zeros((fan_out,), jnp.float32)}


def apply_linear(params: dict, x: jax.Array) -> jax.Array:
    return x @ params["w"] + params["b"]


def init_lstm(key: jax.Array, input_size: int, hidden_size: int) -> dict:
    """One LSTM cell: ``{"w": [input + hidden, 4 hidden], "b": [4 hidden]}`` (gates i, f, g, o)."""
    fan_in = input_size + hidden_size
    w = jax.random.normal(key, (fan_in, 4 * hidden_size)) / np.sqrt(fan_in)
    return {"w": w.astype(jnp.float32), "b": jnp.zeros((4 * hidden_size,), jnp.float32)}


def lstm_step(
    params: dict, x: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One LSTM step on a batch: ``x [B, in]``, ``h, c [B, H]`` -> new ``h, c``.

    The forget gate gets a +1 bias (as in Haiku/TF) so the untrained cell remembers.
    """
    z = jnp.concatenate([x, h], axis=-1) @ params["w"] + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def per_tensor_lstm(
    params: dict, feats: jax.Array, time_feats: jax.Array, h_tree: Any, c_tree: Any, treedef: Any
) -> tuple[jax.Array, jax.Array]:
    """One LSTM step for every parameter tensor at once (shared weights).

    ``feats`` is ``[T, F]`` (one row per tensor, in ``treedef`` order), ``time_feats``
    ``[num_time_features]`` is appended to every row; ``h_tree`` / ``c_tree`` hold each
    tensor's state in the params' tree structure. Returns the new ``(h, c)``, ``[T, H]``.
    """
    x = jnp.concatenate([feats, jnp.broadcast_to(time_feats, (feats.shape[0], time_feats.shape[-1]))], axis=-1)
    h = jnp.stack(treedef.flatten_up_to(h_tree))
    c = jnp.stack(treedef.flatten_up_to(c_tree))
    return lstm_step(params, x, h, c)


def log_rms(x: jax.Array, eps: float = 1e-16) -> jax.Array:
    """``0.5 log(mean(x^2) + eps)``: log of the RMS, finite (with finite gradient) at x = 0."""
    return 0.5 * jnp.log(jnp.mean(jnp.square(x)) + eps)


def scaled_log_feature(log_value: jax.Array) -> jax.Array:
    """Map a natural log of a magnitude (typically in [-25, 5]) to O(1): clip and divide by 10."""
    return jnp.clip(log_value, -30.0, 10.0) / 10.0


def count_leaves(tree: Any) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def unzip_tree(treedef: Any, flat: Any, n: int) -> tuple[Any, ...]:
    """Unzip a pytree (structure ``treedef`` plus one more level of ``n``-tuples) into ``n`` trees.

    Uses ``flatten_up_to`` so a params tree that itself contains tuples is handled correctly.
    """
    outs = treedef.flatten_up_to(flat)
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n))
