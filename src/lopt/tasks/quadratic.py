"""The noisy quadratic model (NQM): a data-free task for stability analysis."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lopt.tasks.base import Batch, Params, TaskData
from lopt.tasks.precision import cast_floating, check_precision, to_float32


@dataclasses.dataclass(frozen=True)
class NoisyQuadratic:
    """``loss(x) = 0.5 * sum_i h_i x_i^2 + <noise, x>``.

    Curvatures ``h`` are log-spaced in ``[1, condition_number]``; the minimiser is 0 and
    the minimum 0. The batch is Gaussian noise of std ``noise_std`` whose inner product
    with ``x`` gives the stochastic gradient ``h * x + noise`` (unbiased). The initial
    point is ``N(0, I)``.

    ``compute_dtype`` (``float32`` or ``bfloat16``) is the dtype the loss is evaluated
    in; ``x``, its gradient and the returned loss stay float32 (see
    :mod:`lopt.tasks.precision`).
    """

    dim: int = 10
    condition_number: float = 10.0
    noise_std: float = 0.1
    name: str = "quadratic"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.compute_dtype)

    @property
    def curvature(self) -> jax.Array:
        return jnp.logspace(0.0, jnp.log10(self.condition_number), self.dim)

    def init(self, key: jax.Array) -> Params:
        return {"x": jax.random.normal(key, (self.dim,))}

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        h, x, noise = cast_floating((self.curvature, params["x"], batch), self.compute_dtype)
        return to_float32(0.5 * jnp.sum(h * x**2) + jnp.dot(noise, x))

    def batch(self, data: TaskData, key: jax.Array, split: str) -> Batch:
        del data, split
        return self.noise_std * jax.random.normal(key, (self.dim,))

    def evaluate(self, params: Params, data: TaskData, key: jax.Array, split: str) -> dict[str, jax.Array]:
        del data, key, split
        return {"loss": self.loss(params, jnp.zeros((self.dim,)))}
