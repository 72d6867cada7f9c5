"""Character-level language models (RNN / GRU or causal transformer), pure JAX.

``data`` is ``{split: int32[n]}``, a token stream per split (see
:func:`lopt.tasks.corpus.corpus_data`). A batch is ``batch_size`` random windows of
``seq_len + 1`` consecutive tokens: inputs are the first ``seq_len``, targets the
last ``seq_len`` (the next character at every position). The loss is the mean
next-character cross-entropy in nats.

The forward pass runs in the task's ``compute_dtype`` (:mod:`lopt.tasks.precision`);
LayerNorm statistics, the attention softmax, the logits and the loss are float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import Batch, Params, TaskData
from lopt.tasks.image_mlp import exact_metrics, softmax_xent
from lopt.tasks.precision import cast_floating, check_precision, to_float32

# The head is LeCun-normal x init_scale x HEAD_SCALE, so initial logits are small and the
# initial loss is close to log(vocab_size) (a uniform prediction).
HEAD_SCALE = 0.1
LN_EPS = 1e-5


def _dense(key: jax.Array, fan_in: int, fan_out: int, scale: float) -> dict[str, jax.Array]:
    w = jax.random.normal(key, (fan_in, fan_out)) * (scale / np.sqrt(fan_in))
    return {"w": w, "b": jnp.zeros((fan_out,))}


def _layer_norm(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """LayerNorm over the last axis, in float32; the result has ``x``'s dtype."""
    dtype = x.dtype
    x = to_float32(x)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    out = (x - mean) * jax.lax.rsqrt(var + LN_EPS) * p["scale"] + p["bias"]
    return cast_floating(out, dtype)


@dataclasses.dataclass(frozen=True)
class CharLM:
    """Next-character prediction with a recurrent or transformer model.

    Attributes:
        vocab_size: number of token ids (``len(lopt.tasks.corpus.VOCAB)``).
        model: ``rnn`` (embedding, ``num_layers`` recurrent layers scanned over time,
            linear head) or ``transformer`` (token + learned positional embedding,
            ``num_layers`` pre-LayerNorm blocks of causal multi-head self-attention and
            a 4x GELU MLP, final LayerNorm, linear head).
        seq_len: tokens per input window (targets are shifted by one).
        hidden_size: embedding / hidden width.
        num_layers: recurrent layers or transformer blocks.
        num_heads: attention heads (transformer only; must divide ``hidden_size``).
        batch_size: windows per training batch, drawn with replacement.
        init_scale: multiplier on every LeCun-normal weight and on the unit-normal
            embeddings (biases zero, LayerNorm scale one).
        eval_batch_size: windows per chunk of ``evaluate``, which covers every
            non-overlapping window of the split (bounds its memory, not its accuracy).
        cell: recurrent cell of the ``rnn`` model: ``gru`` or ``tanh`` (Elman).
        compute_dtype: ``float32`` or ``bfloat16``: dtype of the forward pass; params,
            gradients, logits and the loss stay float32 (see :mod:`lopt.tasks.precision`).
    """

    vocab_size: int
    model: str = "transformer"
    seq_len: int = 32
    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    batch_size: int = 16
    init_scale: float = 1.0
    eval_batch_size: int = 512
    name: str = "char_lm"
    cell: str = "gru"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.compute_dtype)
        if self.model not in ("rnn", "transformer"):
            raise ValueError(f"model must be 'rnn' or 'transformer', got {self.model!r}")
        if self.cell not in ("gru", "tanh"):
            raise ValueError(f"cell must be 'gru' or 'tanh', got {self.cell!r}")
        if self.model == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )

    # ------------------------------------------------------------------ parameters

    def init(self, key: jax.Array) -> Params:
        h, s = self.hidden_size, self.init_scale
        k_embed, k_pos, k_head, k_layers = jax.random.split(key, 4)
        params: dict = {"embed": jax.random.normal(k_embed, (self.vocab_size, h)) * s}
        layer_keys = jax.random.split(k_layers, self.num_layers)
        if self.model == "rnn":
            gates = 3 if self.cell == "gru" else 1
            for i, k in enumerate(layer_keys):
                kx, kh = jax.random.split(k)
                params[f"rnn_{i}"] = {
                    "wx": _dense(kx, h, gates * h, s)["w"],
                    "wh": _dense(kh, h, gates * h, s)["w"],
                    "b": jnp.zeros((gates * h,)),
                }
        else:
            params["pos"] = jax.random.normal(k_pos, (self.seq_len, h)) * s
            ln = {"scale": jnp.ones((h,)), "bias": jnp.zeros((h,))}
            for i, k in enumerate(layer_keys):
                kq, ko, k1, k2 = jax.random.split(k, 4)
                params[f"block_{i}"] = {
                    "ln_1": dict(ln),
                    "qkv": _dense(kq, h, 3 * h, s),
                    "proj": _dense(ko, h, h, s),
                    "ln_2": dict(ln),
                    "mlp_in": _dense(k1, h, 4 * h, s),
                    "mlp_out": _dense(k2, 4 * h, h, s),
                }
            params["ln_f"] = dict(ln)
        params["head"] = _dense(k_head, h, self.vocab_size, s * HEAD_SCALE)
        return params

    # ------------------------------------------------------------------ models

    def _rnn_layer(self, p: Params, x: jax.Array) -> jax.Array:
        """One recurrent layer over ``x: [B, T, H]`` from a zero state -> ``[B, T, H]``."""
        h = self.hidden_size
        xw = jnp.swapaxes(x @ p["wx"] + p["b"], 0, 1)  # [T, B, gates*H], input part hoisted

        def gru(state, xt):
            hw = state @ p["wh"]
            z = jax.nn.sigmoid(xt[:, :h] + hw[:, :h])
            r = jax.nn.sigmoid(xt[:, h : 2 * h] + hw[:, h : 2 * h])
            n = jnp.tanh(xt[:, 2 * h :] + r * hw[:, 2 * h :])
            new = (1.0 - z) * n + z * state
            return new, new

        def tanh_rnn(state, xt):
            new = jnp.tanh(xt + state @ p["wh"])
            return new, new

        step = gru if self.cell == "gru" else tanh_rnn
        _, hs = jax.lax.scan(step, jnp.zeros((x.shape[0], h), x.dtype), xw)
        return jnp.swapaxes(hs, 0, 1)

    def _attention(self, p: Params, x: jax.Array) -> jax.Array:
        b, t, h = x.shape
        nh = self.num_heads
        dh = h // nh
        qkv = (x @ p["qkv"]["w"] + p["qkv"]["b"]).reshape(b, t, 3, nh, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, nh, dh]
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(dh)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        probs = cast_floating(jax.nn.softmax(to_float32(scores), axis=-1), v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v)
        return out.reshape(b, t, h) @ p["proj"]["w"] + p["proj"]["b"]

    def _block(self, p: Params, x: jax.Array) -> jax.Array:
        x = x + self._attention(p, _layer_norm(p["ln_1"], x))
        hid = jax.nn.gelu(_layer_norm(p["ln_2"], x) @ p["mlp_in"]["w"] + p["mlp_in"]["b"])
        return x + hid @ p["mlp_out"]["w"] + p["mlp_out"]["b"]

    def logits(self, params: Params, tokens: jax.Array) -> jax.Array:
        """``tokens: int[B, T]`` (``T <= seq_len``) -> float32 next-token logits ``[B, T, V]``."""
        params = cast_floating(params, self.compute_dtype)
        x = params["embed"][tokens]
        if self.model == "rnn":
            for i in range(self.num_layers):
                x = self._rnn_layer(params[f"rnn_{i}"], x)
        else:
            x = x + params["pos"][: tokens.shape[1]]
            for i in range(self.num_layers):
                x = self._block(params[f"block_{i}"], x)
            x = _layer_norm(params["ln_f"], x)
        return to_float32(x @ params["head"]["w"] + params["head"]["b"])

    # ------------------------------------------------------------------ task protocol

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        inputs, targets = batch
        return softmax_xent(self.logits(params, inputs), targets)

    def _num_starts(self, tokens: jax.Array) -> int:
        n = tokens.shape[0] - self.seq_len  # window starts 0 .. n-1
        if n < 1:
            raise ValueError(
                f"split of {tokens.shape[0]} tokens is too short for seq_len={self.seq_len}"
            )
        return n

    def _windows(self, tokens: jax.Array, starts: jax.Array) -> Batch:
        w = tokens[starts[:, None] + jnp.arange(self.seq_len + 1)]
        return w[:, :-1], w[:, 1:]

    def batch(self, data: TaskData, key: jax.Array, split: str) -> Batch:
        tokens = data[split]
        starts = jax.random.randint(key, (self.batch_size,), 0, self._num_starts(tokens))
        return self._windows(tokens, starts)

    def evaluate(
        self, params: Params, data: TaskData, key: jax.Array, split: str
    ) -> dict[str, jax.Array]:
        """Exact loss and next-character accuracy over the split's non-overlapping windows
        (starts ``0, L, 2L, ...``, so each token after the first, up to the last full window,
        is a target once), ``eval_batch_size`` windows per chunk; ``key`` is unused."""
        tokens = data[split]
        self._num_starts(tokens)
        num_windows = (tokens.shape[0] - 1) // self.seq_len
        inputs, targets = self._windows(tokens, jnp.arange(num_windows) * self.seq_len)
        return exact_metrics(lambda bx: self.logits(params, bx), inputs, targets, self.eval_batch_size)
