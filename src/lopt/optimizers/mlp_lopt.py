"""MLPLOpt ("small_fc"): a per-parameter MLP learned optimizer.

Every scalar parameter is updated independently by the same small MLP (Metz et al.,
LOLv2 / learned_optimization's ``MLPLOpt``). For a parameter tensor ``p`` with
gradient ``g`` the available input features, computed elementwise, are (canonical order)

    ===================  =========================  =====
    name                 value                      width
    ===================  =========================  =====
    ``param``            p                          1
    ``grad``             g                          1
    ``momentum``         m_1..m_k                   k
    ``rms``              sqrt(v + eps)              1
    ``momentum_rsqrt``   m_1..m_k * rsqrt(v + eps)  k
    ``grad_rsqrt``       g * rsqrt(v + eps)         1
    ``time``             tanh(n (f - c_j))          n
    ===================  =========================  =====

where ``m_i`` are momenta (EMAs of ``g`` with decays ``momentum_decays``) and ``v`` an
EMA of ``g^2`` (decay ``rms_decay``). The ``features`` field selects any subset (the
concatenation always follows the canonical order above, so a feature's meaning does not
depend on how the subset was spelled; the default is all of them). Each non-time feature
is divided by its root-mean-square over the tensor (a second-moment normaliser) so the
MLP sees O(1) inputs on every task, then the ``n = num_time_features`` embeddings of the
training fraction ``f = t / num_steps`` at centres ``c_j`` in [0, 1] are appended (they
are the same for every parameter, so the first layer applies them once per update, as a
bias: :func:`lopt.optimizers._nn.apply_mlp`). The MLP outputs a direction ``d`` and a
log-magnitude ``m``; the step is

    p_{t+1} = p_t - d * exp(alpha * m) * beta        (alpha = exp_mult, beta = step_mult)

With small ``alpha, beta`` (1e-3 in the paper) an untrained optimizer makes tiny
steps; ``zero_init_output`` makes it exactly a no-op, so early ES perturbations are
judged only by the direction they add. The optimizer ignores the ``value=`` (loss)
keyword of ``update``.

Shapes: meta-parameters are ``{"layer_i": {"w": [in, out], "b": [out]}}`` with
``in = num_features`` (``4 + 2k + num_time_features`` by default) for the first layer and
``out = 2`` for the last. Memory per inner parameter: ``k + 1`` float32 accumulators
(kept whatever the feature subset).
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

_EPS = 1e-8

MLP_FEATURES: tuple[str, ...] = (
    "param",
    "grad",
    "momentum",
    "rms",
    "momentum_rsqrt",
    "grad_rsqrt",
    "time",
)


class MLPLOptState(NamedTuple):
    """Inner optimizer state: step count, momenta stacked on a leading axis, and ``v``."""

    count: jax.Array  # int32 scalar
    momenta: Any  # pytree like params, each leaf [k, *shape]
    second_moment: Any  # pytree like params


def canonical_features(features: Any) -> tuple[str, ...]:
    """Validate a feature subset and return it in canonical order (ValueError if unknown)."""
    if isinstance(features, str):
        features = (features,)
    features = tuple(features)
    unknown = [f for f in features if f not in MLP_FEATURES]
    if unknown:
        raise ValueError(
            f"MLPLOpt: unknown feature(s) {unknown}; allowed features are {list(MLP_FEATURES)}"
        )
    if not features:
        raise ValueError(f"MLPLOpt: features is empty; choose from {list(MLP_FEATURES)}")
    return tuple(f for f in MLP_FEATURES if f in features)


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
    features: tuple[str, ...] = MLP_FEATURES

    def __post_init__(self) -> None:
        object.__setattr__(self, "momentum_decays", tuple(self.momentum_decays))
        object.__setattr__(self, "features", canonical_features(self.features))

    def _feature_widths(self) -> dict[str, int]:
        k = len(self.momentum_decays)
        widths = {
            "param": 1,
            "grad": 1,
            "momentum": k,
            "rms": 1,
            "momentum_rsqrt": k,
            "grad_rsqrt": 1,
            "time": self.num_time_features,
        }
        return {f: widths[f] for f in self.features}

    @property
    def num_features(self) -> int:
        return sum(self._feature_widths().values())

    def feature_names(self) -> list[str]:
        """One name per MLP input unit, in input order."""
        names = []
        for f in self.features:
            if f in ("momentum", "momentum_rsqrt"):
                names += [f"{f}_{d:g}" for d in self.momentum_decays]
            elif f == "time":
                names += [f"time_{j}" for j in range(self.num_time_features)]
            else:
                names.append(f)
        return names

    def init(self, key: jax.Array) -> MetaParams:
        sizes = (self.num_features, *([self.hidden_size] * self.num_layers), 2)
        return init_mlp(key, sizes, self.zero_init_output)

    def num_meta_params(self) -> int:
        sizes = (self.num_features, *([self.hidden_size] * self.num_layers), 2)
        return sum(i * o + o for i, o in itertools.pairwise(sizes))

    def card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": (
                f"Per-parameter MLP ({self.num_layers} hidden layers x {self.hidden_size}, ReLU) "
                "on tensor-normalised momentum/RMS features; step = d*exp(alpha*m)*beta."
            ),
            "features": self.feature_names(),
            "num_meta_params": self.num_meta_params(),
            "state_floats_per_param": len(self.momentum_decays) + 1,
            "state_floats_per_tensor": 0,
            "untrained": "no-op" if self.zero_init_output else "random small steps",
        }

    def _time_features(self, count: jax.Array, num_steps: Any) -> jax.Array:
        return time_features(count, num_steps, self.num_time_features)

    def tensor_features(self, p: jax.Array, g: jax.Array, m: jax.Array, v: jax.Array) -> Any:
        """Normalised non-time features ``[*shape, F]`` of one tensor (None if none selected).

        ``m`` is ``[k, *shape]`` and ``v`` the second moment, both already updated with ``g``.
        """
        sel = set(self.features)
        rsqrt_v = jax.lax.rsqrt(v + _EPS)
        parts = []
        if "param" in sel:
            parts.append(p[..., None])
        if "grad" in sel:
            parts.append(g[..., None])
        if "momentum" in sel:
            parts.append(jnp.moveaxis(m, 0, -1))
        if "rms" in sel:
            parts.append(jnp.sqrt(v + _EPS)[..., None])  # +eps: finite derivative at v = 0
        if "momentum_rsqrt" in sel:
            parts.append(jnp.moveaxis(m * rsqrt_v[None], 0, -1))
        if "grad_rsqrt" in sel:
            parts.append((g * rsqrt_v)[..., None])
        if not parts:
            return None
        return second_moment_normalise(jnp.concatenate(parts, axis=-1))

    def to_optax(
        self, meta_params: MetaParams, num_steps: Any
    ) -> optax.GradientTransformationExtraArgs:
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        use_time = "time" in self.features

        def init_fn(params: Any) -> MLPLOptState:
            k = len(self.momentum_decays)
            return MLPLOptState(
                count=jnp.zeros([], jnp.int32),
                momenta=jax.tree.map(lambda p: jnp.zeros((k, *p.shape), p.dtype), params),
                second_moment=jax.tree.map(jnp.zeros_like, params),
            )

        def update_fn(grads: Any, state: MLPLOptState, params: Any = None, **extra_args: Any):
            del extra_args  # the loss (value=) is not a feature of this optimizer
            if params is None:
                raise ValueError("MLPLOpt needs params: call update(grads, state, params)")
            time_feats = self._time_features(state.count, num_steps)

            def per_tensor(g, p, m, v):
                bshape = (-1,) + (1,) * g.ndim
                m = decays.reshape(bshape) * m + (1 - decays.reshape(bshape)) * g[None]
                v = self.rms_decay * v + (1 - self.rms_decay) * jnp.square(g)
                feats = self.tensor_features(p, g, m, v)
                if feats is None:  # time features alone: every parameter gets the same input
                    feats = jnp.broadcast_to(time_feats, (*g.shape, self.num_time_features))
                    out = apply_mlp(meta_params, feats)
                else:  # time features are the same for every parameter: a first-layer bias
                    out = apply_mlp(meta_params, feats, time_feats if use_time else None)
                direction, magnitude = out[..., 0], out[..., 1]
                step = direction * jnp.exp(magnitude * self.exp_mult) * self.step_mult
                return -step.astype(p.dtype), m, v

            treedef = jax.tree.structure(grads)
            flat = jax.tree.map(per_tensor, grads, params, state.momenta, state.second_moment)
            updates, momenta, second = unzip_tree(treedef, flat, 3)
            return updates, MLPLOptState(state.count + 1, momenta, second)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

