"""NNAdam: a per-tensor LSTM that sets Adam's hyperparameters for every tensor.

learned_optimization's ``nn_adam``. One LSTM (shared weights, ``lstm_hidden_size``
units) keeps a hidden/cell state per parameter tensor. At every step it reads per-tensor
features (natural logs, clipped to [-30, 10] and divided by 10):

- ``log(mean|g| + 1e-8)``,
- ``log rms(p)``, ``log rms(m)`` (Adam's first moment, before this step's update),
- ``0.5 log(mean(v))`` (log RMS of ``sqrt(v)``: Adam's second moment in gradient units),

plus ``num_time_features`` tanh embeddings of the training fraction. A linear head gives
four numbers ``o`` per tensor that set

    lr    = initial_learning_rate * exp(o_0)
    beta1 = sigmoid(logit(initial_beta1) + o_1)
    beta2 = sigmoid(logit(initial_beta2) + o_2)
    eps   = initial_epsilon * exp(o_3)

followed by an Adam step with bias correction: ``m <- beta1 m + (1 - beta1) g``,
``v <- beta2 v + (1 - beta2) g^2``, ``update = -lr m_hat / (sqrt(v_hat) + eps)`` with
``m_hat = m / (1 - prod_s beta1_s)`` (the running product of the betas per tensor, which
is ``beta1^t`` when the betas are constant). ``zero_init_output`` zeroes the head, so the
untrained optimizer is exactly Adam with the initial hyperparameters. The ``value=``
(loss) keyword of ``update`` is ignored.

Memory: 2 floats per parameter (m, v) and ``2 * lstm_hidden_size + 2`` per tensor (LSTM
hidden and cell state, the two beta products).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.optimizers._nn import (
    apply_linear,
    init_linear,
    init_lstm,
    log_rms,
    per_tensor_lstm,
    scaled_log_feature,
    time_features,
    unzip_tree,
)
from lopt.optimizers.base import MetaParams

_EPS_ROOT = 1e-30  # inside sqrt(v_hat): finite derivative where v = 0, invisible otherwise


class NNAdamState(NamedTuple):
    """Inner state: count, Adam moments (like params), per-tensor LSTM state and beta products."""

    count: jax.Array
    mu: Any
    nu: Any
    lstm_h: Any  # pytree like params, leaves [H]
    lstm_c: Any  # pytree like params, leaves [H]
    beta1_prod: Any  # pytree like params, scalar leaves
    beta2_prod: Any


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@dataclasses.dataclass(frozen=True)
class NNAdam:
    """Per-tensor LSTM that outputs Adam's lr, beta1, beta2, eps. See the module docstring."""

    lstm_hidden_size: int = 32
    initial_learning_rate: float = 1e-3
    initial_beta1: float = 0.9
    initial_beta2: float = 0.999
    initial_epsilon: float = 1e-8
    num_time_features: int = 11
    zero_init_output: bool = True
    name: str = "nn_adam"

    TENSOR_FEATURES = ("log_mean_abs_grad", "log_rms_param", "log_rms_m", "log_rms_sqrt_v")

    def __post_init__(self) -> None:
        for f in ("initial_beta1", "initial_beta2"):
            if not 0.0 < getattr(self, f) < 1.0:
                raise ValueError(f"NNAdam.{f} must be in (0, 1), got {getattr(self, f)}")

    @property
    def num_inputs(self) -> int:
        return len(self.TENSOR_FEATURES) + self.num_time_features

    def feature_names(self) -> list[str]:
        return [f"tensor:{f}" for f in self.TENSOR_FEATURES] + [
            f"tensor:time_{j}" for j in range(self.num_time_features)
        ]

    def init(self, key: jax.Array) -> MetaParams:
        k_lstm, k_out = jax.random.split(key)
        return {
            "lstm": init_lstm(k_lstm, self.num_inputs, self.lstm_hidden_size),
            "head": init_linear(k_out, self.lstm_hidden_size, 4, zero=self.zero_init_output),
        }

    def num_meta_params(self) -> int:
        h = self.lstm_hidden_size
        return (self.num_inputs + h) * 4 * h + 4 * h + h * 4 + 4

    def card(self) -> dict[str, Any]:
        untrained = (
            f"Adam(lr={self.initial_learning_rate:g}, b1={self.initial_beta1:g}, "
            f"b2={self.initial_beta2:g}, eps={self.initial_epsilon:g})"
        )
        return {
            "name": self.name,
            "architecture": (
                f"Per-tensor LSTM ({self.lstm_hidden_size} units) that outputs Adam's lr, beta1, "
                "beta2 and eps for each tensor, followed by a bias-corrected Adam step."
            ),
            "features": self.feature_names(),
            "num_meta_params": self.num_meta_params(),
            "state_floats_per_param": 2,
            "state_floats_per_tensor": 2 * self.lstm_hidden_size + 2,
            "untrained": untrained if self.zero_init_output else "Adam with random hyperparameters",
        }

    def to_optax(
        self, meta_params: MetaParams, num_steps: Any
    ) -> optax.GradientTransformationExtraArgs:
        hsize = self.lstm_hidden_size
        logit_b1, logit_b2 = _logit(self.initial_beta1), _logit(self.initial_beta2)

        def init_fn(params: Any) -> NNAdamState:
            zeros_h = lambda p: jnp.zeros((hsize,), jnp.float32)
            ones = lambda p: jnp.ones([], jnp.float32)
            return NNAdamState(
                count=jnp.zeros([], jnp.int32),
                mu=jax.tree.map(jnp.zeros_like, params),
                nu=jax.tree.map(jnp.zeros_like, params),
                lstm_h=jax.tree.map(zeros_h, params),
                lstm_c=jax.tree.map(zeros_h, params),
                beta1_prod=jax.tree.map(ones, params),
                beta2_prod=jax.tree.map(ones, params),
            )

        def update_fn(grads: Any, state: NNAdamState, params: Any = None, **extra_args):
            del extra_args  # the loss (value=) is not a feature of this optimizer
            if params is None:
                raise ValueError("NNAdam needs params: call update(grads, state, params)")
            treedef = jax.tree.structure(grads)
            g_l = treedef.flatten_up_to(grads)
            if not g_l:  # no parameters: nothing to do
                return grads, state._replace(count=state.count + 1)
            p_l = treedef.flatten_up_to(params)
            mu_l = treedef.flatten_up_to(state.mu)
            nu_l = treedef.flatten_up_to(state.nu)
            time_feats = time_features(state.count, num_steps, self.num_time_features)

            def tensor_feats(g, p, mu, nu):
                return jnp.stack(
                    [
                        scaled_log_feature(jnp.log(jnp.mean(jnp.abs(g)) + 1e-8)),
                        scaled_log_feature(log_rms(p)),
                        scaled_log_feature(log_rms(mu)),
                        scaled_log_feature(0.5 * jnp.log(jnp.mean(nu) + 1e-16)),
                    ]
                )

            feats = jnp.stack([tensor_feats(*t) for t in zip(g_l, p_l, mu_l, nu_l)])
            h, c = per_tensor_lstm(
                meta_params["lstm"], feats, time_feats, state.lstm_h, state.lstm_c, treedef
            )
            out = apply_linear(meta_params["head"], h)  # [T, 4]

            lr = self.initial_learning_rate * jnp.exp(out[:, 0])
            z1, z2 = logit_b1 + out[:, 1], logit_b2 + out[:, 2]
            b1, one_minus_b1 = jax.nn.sigmoid(z1), jax.nn.sigmoid(-z1)
            b2, one_minus_b2 = jax.nn.sigmoid(z2), jax.nn.sigmoid(-z2)
            eps = self.initial_epsilon * jnp.exp(out[:, 3])

            def per_tensor(i, g, mu, nu, prod1, prod2):
                mu = one_minus_b1[i] * g + b1[i] * mu
                nu = one_minus_b2[i] * jnp.square(g) + b2[i] * nu
                prod1, prod2 = prod1 * b1[i], prod2 * b2[i]
                mu_hat = mu / (1 - prod1)
                nu_hat = nu / (1 - prod2)
                step = lr[i] * mu_hat / (jnp.sqrt(nu_hat + _EPS_ROOT) + eps[i])
                return -step.astype(g.dtype), mu, nu, prod1, prod2

            b1p_l = treedef.flatten_up_to(state.beta1_prod)
            b2p_l = treedef.flatten_up_to(state.beta2_prod)
            flat = [per_tensor(i, *t) for i, t in enumerate(zip(g_l, mu_l, nu_l, b1p_l, b2p_l))]
            updates, mu, nu, prod1, prod2 = unzip_tree(treedef, treedef.unflatten(flat), 5)
            new_state = NNAdamState(
                count=state.count + 1,
                mu=mu,
                nu=nu,
                lstm_h=treedef.unflatten(list(h)),
                lstm_c=treedef.unflatten(list(c)),
                beta1_prod=prod1,
                beta2_prod=prod2,
            )
            return updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
