"""ImageMLP's initialisation scale and the uniform example draw shared by the image tasks."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.tasks import ImageMLP
from lopt.tasks.image_mlp import draw_examples


def test_image_mlp_init_is_scaled_lecun_normal():
    task = ImageMLP(input_dim=64, num_classes=10, hidden_sizes=(256,))
    params = jax.jit(task.init)(jax.random.key(0))
    # std of n normals has relative s.e. ~1/sqrt(2n): 1.1 % for 64 x 256, 1.4 % for 256 x 10;
    # 6 % is > 4 s.e. (a 1/fan_in scale would be 8x or 16x off)
    assert float(jnp.std(params["layer_0"]["w"])) == pytest.approx(1 / math.sqrt(64), rel=0.06)
    assert float(jnp.std(params["layer_1"]["w"])) == pytest.approx(1 / math.sqrt(256), rel=0.06)
    assert all(float(jnp.abs(params[f"layer_{i}"]["b"]).max()) == 0.0 for i in (0, 1))
    doubled = jax.jit(dataclasses.replace(task, init_scale=2.0).init)(jax.random.key(0))
    np.testing.assert_allclose(doubled["layer_0"]["w"], 2 * params["layer_0"]["w"], rtol=1e-6)


def test_draw_examples_is_uniform_over_the_whole_split():
    # 10 examples labelled by their index; 20000 draws: each count ~ Binomial(20000, 0.1),
    # mean 2000, sd 42; the bounds 1750..2250 are 6 sd from the mean, and an example that
    # is never drawn (or a split half never reached) fails them
    x = jnp.arange(10, dtype=jnp.float32)[:, None] * jnp.ones((1, 3))
    data = {"train": (x, jnp.arange(10))}
    bx, by = draw_examples(data, jax.random.key(0), "train", 20000)
    np.testing.assert_array_equal(bx[:, 0], by.astype(jnp.float32))  # pairs stay together
    counts = np.bincount(np.asarray(by), minlength=10)
    assert counts.min() > 1750 and counts.max() < 2250, counts
