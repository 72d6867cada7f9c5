"""RNNMLPLOpt: a per-tensor LSTM conditioning a per-parameter MLP.

Metz et al. 2020, "Tasks, stability, architecture, and compute: training more effective
learned optimizers, and using them to train themselves" (2009.11243; learned_optimization's
``rnn_mlp_lopt``), simplified. Each step:

1. **Dynamic gradient clipping**: every gradient entry is clipped to
   ``+- clip_mult * sqrt(v_prev / (1 - rms_decay^n) + 1e-8)`` where ``v_prev`` is that
   parameter's running second moment (EMA of ``g^2``, decay ``rms_decay``) after the
   ``n`` previous steps, bias-corrected like Adam's (uncorrected, the EMA starts near 0:
   with decay 0.999 the bound would be ``0.3 sqrt(n)`` typical gradients and would clip
   most entries for the first ~30 steps instead of only outliers); entries whose
   ``v_prev`` is still 0 (the first step) are not clipped. All features use the clipped
   gradient ``g``.
2. Accumulators: momenta ``m_i`` (decays ``momentum_decays``) and ``v`` are updated with
   ``g``, exactly as in :class:`~lopt.optimizers.mlp_lopt.MLPLOpt`.
3. **Loss normalisation** (requires ``update(..., value=loss)``): bias-corrected running
   mean and variance of the training loss (decay ``loss_decay``) give
   ``clip((loss - mean) / sqrt(var + 1e-8), -5, 5)``; the variance accumulates squared
   deviations from the *corrected* mean (a constant loss has variance 0 from step 1).
4. A **per-tensor LSTM** (``lstm_hidden_size``, shared weights, one hidden/cell state per
   tensor) reads per-tensor features: the normalised loss, ``log mean|g|``, ``log rms(p)``,
   ``log rms(m_i)`` for each momentum, ``0.5 log mean(v)`` (logs clipped to [-30, 10] and
   divided by 10) and ``num_time_features`` training-fraction embeddings. A linear map of
   its new hidden state is the tensor embedding (``tensor_embed_size`` numbers).
5. A **per-parameter MLP** (``num_layers`` x ``hidden_size``, ReLU) reads MLPLOpt's
   default features (tensor-normalised p, g, momenta, sqrt(v), m*rsqrt(v), g*rsqrt(v),
   time embeddings) concatenated with the tensor embedding and outputs a direction ``d``
   and log-magnitude ``m``: ``update = -d * exp(exp_mult * m) * step_mult``.

``zero_init_output`` zeroes the MLP's last layer: the untrained optimizer is an exact
no-op. Memory: ``k + 1`` floats per parameter, ``2 * lstm_hidden_size`` per tensor, and
two floats (loss mean, variance) overall.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.optimizers._nn import (
    apply_linear,
    apply_mlp,
    init_linear,
    init_lstm,
    init_mlp,
    log_rms,
    per_tensor_lstm,
    scaled_log_feature,
    time_features,
)
from lopt.optimizers.base import MetaParams
from lopt.optimizers.mlp_lopt import MLPLOpt

_EPS = 1e-8


class RNNMLPLOptState(NamedTuple):
    """Inner state: count, MLPLOpt accumulators, per-tensor LSTM state, loss statistics."""

    count: jax.Array
    momenta: Any  # pytree like params, leaves [k, *shape]
    second_moment: Any  # pytree like params
    lstm_h: Any  # pytree like params, leaves [H]
    lstm_c: Any
    loss_mean: jax.Array  # scalar (not bias corrected)
    loss_var: jax.Array


@dataclasses.dataclass(frozen=True)
class RNNMLPLOpt:
    """Per-tensor LSTM + per-parameter MLP learned optimizer. See the module docstring."""

    lstm_hidden_size: int = 64
    tensor_embed_size: int = 8
    hidden_size: int = 32
    num_layers: int = 2
    momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    loss_decay: float = 0.9
    num_time_features: int = 11
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    clip_mult: float = 10.0
    zero_init_output: bool = True
    name: str = "rnn_mlp_lopt"

    def __post_init__(self) -> None:
        object.__setattr__(self, "momentum_decays", tuple(self.momentum_decays))

    @property
    def _mlp_lopt(self) -> MLPLOpt:
        """The per-parameter feature extractor (MLPLOpt's default features)."""
        return MLPLOpt(
            momentum_decays=self.momentum_decays,
            rms_decay=self.rms_decay,
            num_time_features=self.num_time_features,
        )

    def tensor_feature_names(self) -> list[str]:
        return [
            "loss_normalised",
            "log_mean_abs_grad",
            "log_rms_param",
            *[f"log_rms_momentum_{d:g}" for d in self.momentum_decays],
            "log_rms_sqrt_v",
            *[f"time_{j}" for j in range(self.num_time_features)],
        ]

    def feature_names(self) -> list[str]:
        """LSTM inputs (``tensor:`` prefix), then per-parameter MLP inputs."""
        return [f"tensor:{f}" for f in self.tensor_feature_names()] + [
            *self._mlp_lopt.feature_names(),
            *[f"tensor_embed_{j}" for j in range(self.tensor_embed_size)],
        ]

    def _mlp_sizes(self) -> tuple[int, ...]:
        fin = self._mlp_lopt.num_features + self.tensor_embed_size
        return (fin, *([self.hidden_size] * self.num_layers), 2)

    def init(self, key: jax.Array) -> MetaParams:
        k_lstm, k_embed, k_mlp = jax.random.split(key, 3)
        n_in = len(self.tensor_feature_names())
        return {
            "lstm": init_lstm(k_lstm, n_in, self.lstm_hidden_size),
            "embed": init_linear(k_embed, self.lstm_hidden_size, self.tensor_embed_size),
            "mlp": init_mlp(k_mlp, self._mlp_sizes(), self.zero_init_output),
        }

    def num_meta_params(self) -> int:
        h, e = self.lstm_hidden_size, self.tensor_embed_size
        n_in = len(self.tensor_feature_names())
        sizes = self._mlp_sizes()
        mlp = sum(i * o + o for i, o in itertools.pairwise(sizes))
        return (n_in + h) * 4 * h + 4 * h + h * e + e + mlp

    def card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": (
                f"Per-tensor LSTM ({self.lstm_hidden_size} units; loss, gradient and momentum "
                f"statistics) whose {self.tensor_embed_size}-d embedding conditions a "
                f"per-parameter MLP ({self.num_layers} x {self.hidden_size}); dynamic gradient "
                "clipping."
            ),
            "features": self.feature_names(),
            "num_meta_params": self.num_meta_params(),
            "state_floats_per_param": len(self.momentum_decays) + 1,
            "state_floats_per_tensor": 2 * self.lstm_hidden_size,
            "untrained": "no-op" if self.zero_init_output else "random small steps",
        }

    def to_optax(
        self, meta_params: MetaParams, num_steps: Any
    ) -> optax.GradientTransformationExtraArgs:
        k, hsize = len(self.momentum_decays), self.lstm_hidden_size
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        featuriser = self._mlp_lopt

        def init_fn(params: Any) -> RNNMLPLOptState:
            zeros_h = lambda p: jnp.zeros((hsize,), jnp.float32)
            return RNNMLPLOptState(
                count=jnp.zeros([], jnp.int32),
                momenta=jax.tree.map(lambda p: jnp.zeros((k, *p.shape), p.dtype), params),
                second_moment=jax.tree.map(jnp.zeros_like, params),
                lstm_h=jax.tree.map(zeros_h, params),
                lstm_c=jax.tree.map(zeros_h, params),
                loss_mean=jnp.zeros([], jnp.float32),
                loss_var=jnp.zeros([], jnp.float32),
            )

        def update_fn(grads: Any, state: RNNMLPLOptState, params: Any = None, **extra_args):
            if params is None:
                raise ValueError("RNNMLPLOpt needs params: call update(grads, state, params)")
            value = extra_args.get("value")
            if value is None:
                raise ValueError(
                    "RNNMLPLOpt needs the training loss: call update(grads, state, params, "
                    "value=loss)"
                )
            loss = jnp.asarray(value, jnp.float32).reshape(())

            # Loss normalisation (bias-corrected EMA mean / variance).
            d = self.loss_decay
            mean = d * state.loss_mean + (1 - d) * loss
            correction = 1.0 - jnp.power(jnp.float32(d), (state.count + 1).astype(jnp.float32))
            var = d * state.loss_var + (1 - d) * jnp.square(loss - mean / correction)
            loss_feat = (loss - mean / correction) * jax.lax.rsqrt(var / correction + _EPS)
            loss_feat = jnp.clip(loss_feat, -5.0, 5.0)
            time_feats = time_features(state.count, num_steps, self.num_time_features)

            treedef = jax.tree.structure(grads)
            g_l = treedef.flatten_up_to(grads)
            if not g_l:  # no parameters: nothing to do
                return grads, state._replace(count=state.count + 1)
            p_l = treedef.flatten_up_to(params)
            m_l = treedef.flatten_up_to(state.momenta)
            v_l = treedef.flatten_up_to(state.second_moment)

            # Dynamic gradient clipping and accumulator updates.
            new_g, new_m, new_v = [], [], []
            # bias correction of v after state.count steps (1 on the first step, where
            # v_prev = 0 and nothing is clipped anyway)
            v_correction = jnp.maximum(
                1.0 - jnp.power(jnp.float32(self.rms_decay), state.count.astype(jnp.float32)),
                1.0 - self.rms_decay,
            )
            for g, m, v_prev in zip(g_l, m_l, v_l):
                bound = self.clip_mult * jnp.sqrt(v_prev / v_correction + _EPS)
                g = jnp.where(v_prev > 0, jnp.clip(g, -bound, bound), g)
                bshape = (-1,) + (1,) * g.ndim
                m = decays.reshape(bshape) * m + (1 - decays.reshape(bshape)) * g[None]
                v = self.rms_decay * v_prev + (1 - self.rms_decay) * jnp.square(g)
                new_g.append(g)
                new_m.append(m)
                new_v.append(v)

            def tensor_feats(g, p, m, v):
                return jnp.stack(
                    [
                        loss_feat,
                        scaled_log_feature(jnp.log(jnp.mean(jnp.abs(g)) + 1e-8)),
                        scaled_log_feature(log_rms(p)),
                        *[scaled_log_feature(log_rms(m[i])) for i in range(k)],
                        scaled_log_feature(0.5 * jnp.log(jnp.mean(v) + 1e-16)),
                    ]
                )

            feats = jnp.stack([tensor_feats(*t) for t in zip(new_g, p_l, new_m, new_v)])
            h, c = per_tensor_lstm(
                meta_params["lstm"], feats, time_feats, state.lstm_h, state.lstm_c, treedef
            )
            embed = apply_linear(meta_params["embed"], h)  # [T, E]

            updates = []
            for i, (g, p, m, v) in enumerate(zip(new_g, p_l, new_m, new_v)):
                per_param = featuriser.tensor_features(p, g, m, v)
                # time features and the tensor's embedding are the same for all its parameters
                shared = jnp.concatenate([time_feats, embed[i]])
                out = apply_mlp(meta_params["mlp"], per_param, shared)
                step = out[..., 0] * jnp.exp(out[..., 1] * self.exp_mult) * self.step_mult
                updates.append(-step.astype(p.dtype))

            new_state = RNNMLPLOptState(
                count=state.count + 1,
                momenta=treedef.unflatten(new_m),
                second_moment=treedef.unflatten(new_v),
                lstm_h=treedef.unflatten(list(h)),
                lstm_c=treedef.unflatten(list(c)),
                loss_mean=mean,
                loss_var=var,
            )
            return treedef.unflatten(updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["RNNMLPLOpt", "RNNMLPLOptState"]
