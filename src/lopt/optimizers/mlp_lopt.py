"""MLPLOpt ("small_fc"): a per-parameter MLP learned optimizer.

Every scalar parameter is updated independently by the same small MLP (Metz et al.,
LOLv2 / learned_optimization's ``MLPLOpt``). For a parameter tensor ``p`` with
gradient ``g`` the input features, computed elementwise, are

    p, g, m_1..m_k, sqrt(v), m_1..m_k * rsqrt(v + eps), g * rsqrt(v + eps)

where ``m_i`` are momenta (EMAs of ``g`` with decays ``momentum_decays``) and ``v`` an
EMA of ``g^2`` (decay ``rms_decay``). Each feature is divided by its root-mean-square
over the tensor (a second-moment normaliser) so the MLP sees O(1) inputs on every
task, then ``num_time_features`` embeddings ``tanh(n (f - c_j))`` of the training
fraction ``f = t / num_steps`` at centres ``c_j`` in [0, 1] are appended. The MLP
outputs a direction ``d`` and a log-magnitude ``m``; the step is

    p_{t+1} = p_t - d * exp(alpha * m) * beta        (alpha = exp_mult, beta = step_mult)

With small ``alpha, beta`` (1e-3 in the paper) an untrained optimizer makes tiny
steps; ``zero_init_output`` makes it exactly a no-op, so early ES perturbations are
judged only by the direction they add.

Shapes: meta-parameters are ``{"layer_i": {"w": [in, out], "b": [out]}}`` with
``in = 4 + 2k + num_time_features`` for the first layer and ``out = 2`` for the last.
Memory per inner parameter: ``k + 1`` float32 accumulators.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.optimizers.base import MetaParams

_EPS = 1e-8
_NORM_EPS = 1e-5


class MLPLOptState(NamedTuple):
    """Inner optimizer state: step count, momenta stacked on a leading axis, and ``v``."""

    count: jax.Array  # int32 scalar
    momenta: Any  # pytree like params, each leaf [k, *shape]
    second_moment: Any  # pytree like params


def _second_moment_normalise(x: jax.Array) -> jax.Array:
    """Divide each feature (last axis) by its RMS over all other axes."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + _NORM_EPS)


@dataclasses.dataclass(frozen=True)
class MLPLOpt:
    """Per-parameter MLP learned optimizer. See the module docstring for the math."""

    hidden_size: int = 32
    num_layers: int = 2
    momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    num_time_features: int = 11
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    zero_init_output: bool = True
    name: str = "mlp_lopt"

    @property
    def num_features(self) -> int:
        k = len(self.momentum_decays)
        return 4 + 2 * k + self.num_time_features

    def init(self, key: jax.Array) -> MetaParams:
        sizes = (self.num_features, *([self.hidden_size] * self.num_layers), 2)
        keys = jax.random.split(key, len(sizes) - 1)
        params = {}
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            w = jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)
            if self.zero_init_output and i == len(sizes) - 2:
                w = jnp.zeros_like(w)
            params[f"layer_{i}"] = {"w": w.astype(jnp.float32), "b": jnp.zeros((fan_out,), jnp.float32)}
        return params

    def num_meta_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.init(jax.random.key(0))))

    def _time_features(self, count: jax.Array, num_steps: Any) -> jax.Array:
        frac = count.astype(jnp.float32) / jnp.asarray(num_steps, jnp.float32)
        centres = jnp.linspace(0.0, 1.0, self.num_time_features)
        return jnp.tanh(self.num_time_features * (frac - centres))

    def _mlp(self, meta_params: MetaParams, x: jax.Array) -> jax.Array:
        num = len(meta_params)
        for i in range(num):
            layer = meta_params[f"layer_{i}"]
            x = x @ layer["w"] + layer["b"]
            if i < num - 1:
                x = jax.nn.relu(x)
        return x

    def to_optax(self, meta_params: MetaParams, num_steps: Any) -> optax.GradientTransformation:
        decays = jnp.asarray(self.momentum_decays, jnp.float32)

        def init_fn(params: Any) -> MLPLOptState:
            k = len(self.momentum_decays)
            return MLPLOptState(
                count=jnp.zeros([], jnp.int32),
                momenta=jax.tree.map(lambda p: jnp.zeros((k, *p.shape), p.dtype), params),
                second_moment=jax.tree.map(jnp.zeros_like, params),
            )

        def update_fn(grads: Any, state: MLPLOptState, params: Any = None):
            if params is None:
                raise ValueError("MLPLOpt needs params: call update(grads, state, params)")
            time_feats = self._time_features(state.count, num_steps)

            def per_tensor(g, p, m, v):
                bshape = (-1,) + (1,) * g.ndim
                m = decays.reshape(bshape) * m + (1 - decays.reshape(bshape)) * g[None]
                v = self.rms_decay * v + (1 - self.rms_decay) * jnp.square(g)
                rsqrt_v = jax.lax.rsqrt(v + _EPS)
                feats = jnp.concatenate(
                    [
                        p[..., None],
                        g[..., None],
                        jnp.moveaxis(m, 0, -1),
                        jnp.sqrt(v + _EPS)[..., None],  # +eps: finite derivative at v = 0 (TBPTT)
                        jnp.moveaxis(m * rsqrt_v[None], 0, -1),
                        (g * rsqrt_v)[..., None],
                    ],
                    axis=-1,
                )
                feats = _second_moment_normalise(feats)
                feats = jnp.concatenate(
                    [feats, jnp.broadcast_to(time_feats, (*g.shape, self.num_time_features))], axis=-1
                )
                out = self._mlp(meta_params, feats)
                direction, magnitude = out[..., 0], out[..., 1]
                step = direction * jnp.exp(magnitude * self.exp_mult) * self.step_mult
                return -step.astype(p.dtype), m, v

            flat = jax.tree.map(per_tensor, grads, params, state.momenta, state.second_moment)
            is_triple = lambda x: isinstance(x, tuple) and len(x) == 3
            updates = jax.tree.map(lambda t: t[0], flat, is_leaf=is_triple)
            momenta = jax.tree.map(lambda t: t[1], flat, is_leaf=is_triple)
            second = jax.tree.map(lambda t: t[2], flat, is_leaf=is_triple)
            return updates, MLPLOptState(state.count + 1, momenta, second)

        return optax.GradientTransformation(init_fn, update_fn)


def from_config(cfg: Any) -> MLPLOpt:
    """Build an :class:`MLPLOpt` from :class:`lopt.config.LOptConfig`."""
    return MLPLOpt(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        momentum_decays=tuple(cfg.momentum_decays),
        rms_decay=cfg.rms_decay,
        num_time_features=cfg.num_time_features,
        step_mult=cfg.step_mult,
        exp_mult=cfg.exp_mult,
        zero_init_output=cfg.zero_init_output,
    )
