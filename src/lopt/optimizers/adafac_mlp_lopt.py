"""AdafacMLPLOpt: a tiny per-parameter MLP with Adafactor-style factored features.

Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in
learned optimizers" (2203.11860; learned_optimization's ``adafac_mlp_lopt``). Like
:class:`~lopt.optimizers.mlp_lopt.MLPLOpt` but with a much smaller MLP (hidden size 4)
and second-moment features that cost O(rows + cols) memory per matrix.

Accumulators (all EMAs, updated with the current gradient ``g`` before the features):

- momenta ``m_i`` of ``g`` (decays ``momentum_decays``, k of them), per parameter;
- second moments ``v_j`` of ``g^2`` (decays ``rms_decays``, r of them), per parameter;
- Adafactor factored second moments (decays ``adafactor_decays``, a of them): for a
  tensor of rank >= 2, factored over its last two axes ``[..., R, C]``, a row EMA
  ``row_l = EMA(mean_C(g^2 + eps))`` ``[..., R]`` and a column EMA
  ``col_l = EMA(mean_R(g^2 + eps))`` ``[..., C]``, giving the rank-one estimate
  ``v_hat_l = outer(row_l, col_l) / mean_R(row_l)``. Vectors and scalars keep the full
  (unfactored) EMA ``v_hat_l = EMA(g^2 + eps)``.

Per-parameter input features (canonical order; ``eps = 1e-8`` inside every rsqrt)::

    p, g, m_1..m_k, g*rsqrt(v_1..v_r),
    g*rsqrt(v_hat_1..v_hat_a), m_i*rsqrt(v_hat_l) for all (i, l),
    rsqrt(row_1..row_a), rsqrt(col_1..col_a)           (broadcast over the tensor)

(for unfactored tensors both "row" and "col" terms are ``rsqrt(v_hat_l)``). Each feature
is divided by its RMS over the tensor, then ``num_time_features`` tanh embeddings of the
training fraction are appended. The MLP (``num_layers`` x ``hidden_size``, ReLU) outputs
a direction ``d`` and a log-magnitude ``m``; the update is ``-d * exp(exp_mult * m) *
step_mult``. ``zero_init_output`` zeroes the last layer: the untrained optimizer is an
exact no-op. The ``value=`` (loss) keyword of ``update`` is ignored.

Memory: ``k + r`` floats per parameter plus ``a * (R + C)`` per matrix (vectors and
scalars: ``k + r + a`` per parameter).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.optimizers._nn import (
    apply_mlp,
    init_mlp,
    second_moment_normalise,
    time_features,
    unzip_tree,
)
from lopt.optimizers.base import MetaParams

_EPS = 1e-8  # inside every rsqrt: finite values and derivatives at v = 0
_FAC_EPS = 1e-12  # added to g^2 in the factored accumulators (keeps row / mean(row) finite)


class AdafacMLPLOptState(NamedTuple):
    """Inner state: step count, momenta ``[k, *shape]``, RMS ``[r, *shape]``, factored EMAs.

    ``factored`` is a pytree like params whose leaves are dicts: ``{"row": [a, ..., R],
    "col": [a, ..., C]}`` for tensors of rank >= 2, ``{"v": [a, *shape]}`` otherwise.
    """

    count: jax.Array
    momenta: Any
    rms: Any
    factored: Any


def _decays(values: tuple[float, ...], ndim: int) -> jax.Array:
    return jnp.asarray(values, jnp.float32).reshape((-1,) + (1,) * ndim)


@dataclasses.dataclass(frozen=True)
class AdafacMLPLOpt:
    """Per-parameter MLP with Adafactor factored features. See the module docstring."""

    hidden_size: int = 4
    num_layers: int = 2
    momentum_decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    num_time_features: int = 11
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    zero_init_output: bool = True
    name: str = "adafac_mlp_lopt"

    def __post_init__(self) -> None:
        for f in ("momentum_decays", "rms_decays", "adafactor_decays"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if not self.adafactor_decays:
            raise ValueError("AdafacMLPLOpt needs at least one adafactor decay")

    def feature_names(self) -> list[str]:
        """One name per MLP input unit, in input order."""
        mom = [f"{d:g}" for d in self.momentum_decays]
        fac = [f"{d:g}" for d in self.adafactor_decays]
        return [
            "param",
            "grad",
            *[f"momentum_{d}" for d in mom],
            *[f"grad_rms_rsqrt_{d:g}" for d in self.rms_decays],
            *[f"fac_grad_{d}" for d in fac],
            *[f"fac_momentum_{d}_{e}" for d in mom for e in fac],
            *[f"fac_row_rsqrt_{d}" for d in fac],
            *[f"fac_col_rsqrt_{d}" for d in fac],
            *[f"time_{j}" for j in range(self.num_time_features)],
        ]

    @property
    def num_features(self) -> int:
        k, r, a = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
        return 2 + k + r + a + k * a + 2 * a + self.num_time_features

    def _sizes(self) -> tuple[int, ...]:
        return (self.num_features, *([self.hidden_size] * self.num_layers), 2)

    def init(self, key: jax.Array) -> MetaParams:
        return init_mlp(key, self._sizes(), self.zero_init_output)

    def num_meta_params(self) -> int:
        sizes = self._sizes()
        return sum(i * o + o for i, o in itertools.pairwise(sizes))

    def card(self) -> dict[str, Any]:
        k, r, a = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
        return {
            "name": self.name,
            "architecture": (
                f"Per-parameter MLP ({self.num_layers} hidden layers x {self.hidden_size}, ReLU) "
                "on momentum, RMS and Adafactor factored second-moment features."
            ),
            "features": self.feature_names(),
            "num_meta_params": self.num_meta_params(),
            "state_floats_per_param": k + r,
            "state_floats_per_tensor": 0,
            "state_floats_per_row_and_col": a,
            "state_floats_per_param_unfactored": k + r + a,
            "untrained": "no-op" if self.zero_init_output else "random small steps",
        }

    def _init_factored(self, p: jax.Array) -> dict:
        a = len(self.adafactor_decays)
        if p.ndim >= 2:
            return {
                "row": jnp.zeros((a, *p.shape[:-1]), p.dtype),
                "col": jnp.zeros((a, *p.shape[:-2], p.shape[-1]), p.dtype),
            }
        return {"v": jnp.zeros((a, *p.shape), p.dtype)}

    def factored_second_moment(self, g: jax.Array, fac: dict) -> tuple[jax.Array, ...]:
        """Update the factored EMAs with ``g``; return ``(v_hat, row_rsqrt, col_rsqrt, fac)``.

        ``v_hat``, ``row_rsqrt`` and ``col_rsqrt`` are ``[a, *g.shape]`` (one per decay).
        """
        fd = _decays(self.adafactor_decays, 0)
        g2 = jnp.square(g) + _FAC_EPS
        if g.ndim >= 2:
            fd_b = fd.reshape((-1,) + (1,) * (g.ndim - 1))
            row = fd_b * fac["row"] + (1 - fd_b) * jnp.mean(g2, axis=-1)[None]
            col = fd_b * fac["col"] + (1 - fd_b) * jnp.mean(g2, axis=-2)[None]
            ratio = row / jnp.mean(row, axis=-1, keepdims=True)  # both >= (1-decay) * eps
            v_hat = ratio[..., :, None] * col[..., None, :]  # [a, *shape]
            row_rsqrt = jnp.broadcast_to(jax.lax.rsqrt(row + _EPS)[..., :, None], v_hat.shape)
            col_rsqrt = jnp.broadcast_to(jax.lax.rsqrt(col + _EPS)[..., None, :], v_hat.shape)
            return v_hat, row_rsqrt, col_rsqrt, {"row": row, "col": col}
        fd_b = fd.reshape((-1,) + (1,) * g.ndim)
        v = fd_b * fac["v"] + (1 - fd_b) * g2[None]
        rsqrt_v = jax.lax.rsqrt(v + _EPS)
        return v, rsqrt_v, rsqrt_v, {"v": v}

    def _tensor_features(self, p, g, m, rms, fac) -> tuple[jax.Array, dict]:
        """Normalised non-time features ``[*shape, F]`` and the updated factored EMAs."""
        v_hat, row_rsqrt, col_rsqrt, new_fac = self.factored_second_moment(g, fac)
        rsqrt_vhat = jax.lax.rsqrt(v_hat + _EPS)
        last = lambda x: jnp.moveaxis(x, 0, -1)
        fac_mom = m[:, None] * rsqrt_vhat[None]  # [k, a, *shape]
        feats = jnp.concatenate(
            [
                p[..., None],
                g[..., None],
                last(m),
                last(g[None] * jax.lax.rsqrt(rms + _EPS)),
                last(g[None] * rsqrt_vhat),
                last(fac_mom.reshape((-1, *g.shape))),
                last(row_rsqrt),
                last(col_rsqrt),
            ],
            axis=-1,
        )
        return second_moment_normalise(feats), new_fac

    def to_optax(
        self, meta_params: MetaParams, num_steps: Any
    ) -> optax.GradientTransformationExtraArgs:
        k, r = len(self.momentum_decays), len(self.rms_decays)

        def init_fn(params: Any) -> AdafacMLPLOptState:
            return AdafacMLPLOptState(
                count=jnp.zeros([], jnp.int32),
                momenta=jax.tree.map(lambda p: jnp.zeros((k, *p.shape), p.dtype), params),
                rms=jax.tree.map(lambda p: jnp.zeros((r, *p.shape), p.dtype), params),
                factored=jax.tree.map(self._init_factored, params),
            )

        def update_fn(grads: Any, state: AdafacMLPLOptState, params: Any = None, **extra_args):
            del extra_args  # the loss (value=) is not a feature of this optimizer
            if params is None:
                raise ValueError("AdafacMLPLOpt needs params: call update(grads, state, params)")
            time_feats = time_features(state.count, num_steps, self.num_time_features)

            def per_tensor(g, p, m, rms, fac):
                md = _decays(self.momentum_decays, g.ndim)
                rd = _decays(self.rms_decays, g.ndim)
                m = md * m + (1 - md) * g[None]
                rms = rd * rms + (1 - rd) * jnp.square(g)[None]
                feats, fac = self._tensor_features(p, g, m, rms, fac)
                out = apply_mlp(meta_params, feats, time_feats)  # time features: a first-layer bias
                step = out[..., 0] * jnp.exp(out[..., 1] * self.exp_mult) * self.step_mult
                return -step.astype(p.dtype), m, rms, fac

            treedef = jax.tree.structure(grads)
            flat = jax.tree.map(per_tensor, grads, params, state.momenta, state.rms, state.factored)
            updates, momenta, rms, factored = unzip_tree(treedef, flat, 4)
            return updates, AdafacMLPLOptState(state.count + 1, momenta, rms, factored)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
