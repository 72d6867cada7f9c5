"""CharLM's transformer forward pass against an independent float64 NumPy reference.

The reference re-implements the documented model (token + learned positional embedding,
pre-LayerNorm blocks of causal multi-head self-attention with scores q.k / sqrt(d_head)
and a 4x GELU (tanh approximation, jax.nn.gelu's default) MLP, final LayerNorm, linear
head) from the initialised parameters. Tolerance: the task runs in float32; over two
blocks of width 32 the rounding is ~1e-6 relative, so 1e-4 of the logits' scale leaves
room while a wrong attention scale or mask moves the logits by >1e-2 of it.
"""

from __future__ import annotations

import jax
import numpy as np

from lopt.tasks import CharLM


def _ln(p, x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _reference_logits(task: CharLM, params, tokens: np.ndarray) -> np.ndarray:
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    b, t = tokens.shape
    h, nh = task.hidden_size, task.num_heads
    dh = h // nh
    x = p["embed"][tokens] + p["pos"][:t]
    for i in range(task.num_layers):
        blk = p[f"block_{i}"]
        y = _ln(blk["ln_1"], x)
        qkv = y @ blk["qkv"]["w"] + blk["qkv"]["b"]  # [B, T, 3H] laid out as (3, heads, dh)
        q, k, v = (qkv[..., j * h:(j + 1) * h].reshape(b, t, nh, dh) for j in range(3))
        out = np.zeros((b, t, nh, dh))
        for n in range(nh):
            for pos in range(t):  # position pos attends to 0..pos only
                scores = np.einsum("bd,bkd->bk", q[:, pos, n], k[:, : pos + 1, n]) / np.sqrt(dh)
                out[:, pos, n] = np.einsum("bk,bkd->bd", _softmax(scores), v[:, : pos + 1, n])
        x = x + out.reshape(b, t, h) @ blk["proj"]["w"] + blk["proj"]["b"]
        y = _ln(blk["ln_2"], x)
        x = x + _gelu(y @ blk["mlp_in"]["w"] + blk["mlp_in"]["b"]) @ blk["mlp_out"]["w"] + blk["mlp_out"]["b"]
    x = _ln(p["ln_f"], x)
    return x @ p["head"]["w"] + p["head"]["b"]


def test_transformer_logits_match_a_numpy_reference():
    task = CharLM(vocab_size=11, model="transformer", seq_len=9, hidden_size=32, num_layers=2, num_heads=2)
    params = task.init(jax.random.PRNGKey(3))
    tokens = np.random.default_rng(0).integers(0, 11, size=(3, 9))
    got = np.asarray(jax.jit(task.logits)(params, tokens), np.float64)
    want = _reference_logits(task, params, tokens)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
