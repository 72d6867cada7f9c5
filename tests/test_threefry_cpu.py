"""The round-by-round CPU lowering of Threefry draws exactly JAX's random bits.

``lopt.runtime.setup`` (and this suite's conftest) replace JAX's loop lowering of the
Threefry hash on CPU with a written-out one because it compiles about twice as fast.
That is only allowed because no number changes: checked here on the Random123
known-answer vectors and against JAX's own lowering in a fresh process, for the draws
lopt makes (normals, uniforms, splits, fold-ins, integers, permutations, under jit, vmap
and scan). Compiled programs around the draws may round differently in the last bit
(they are fused differently), so whole lopt programs are not compared bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.extend.random import threefry_2x32

from lopt.threefry_cpu import threefry2x32, use_unrolled_threefry_on_cpu

# Random123's known-answer tests for Threefry-2x32 with 20 rounds: (key, counter, hash)
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize(("key", "count", "expected"), KAT)
def test_known_answers(key, count, expected):
    k1, k2 = (jnp.uint32(v) for v in key)
    x1, x2 = (jnp.array([v], jnp.uint32) for v in count)
    got = jax.jit(threefry2x32)(k1, k2, x1, x2)
    assert [int(v[0]) for v in got] == list(expected)
    # and through jax.random's entry point, i.e. the registered lowering
    use_unrolled_threefry_on_cpu()
    got = threefry_2x32((k1, k2), jnp.array(count, jnp.uint32))
    assert [int(v) for v in got] == list(expected)


def test_cpu_lowering_has_no_loop():
    use_unrolled_threefry_on_cpu()
    hlo = jax.jit(lambda k: jax.random.normal(k, (8, 8))).lower(jax.random.PRNGKey(0)).compile().as_text()
    assert " while(" not in hlo  # JAX's own CPU lowering is a 5-iteration while loop


# Everything below runs in a fresh interpreter: once with JAX's lowering, once with lopt's.
DRAWS = r"""
import hashlib, sys
import jax, jax.numpy as jnp, numpy as np
if sys.argv[1] == "lopt":  # what every `lopt` compute command does first
    from lopt.config import ComputeConfig
    from lopt.runtime import setup
    setup(ComputeConfig(), distributed=False)
    hlo = jax.jit(lambda k: jax.random.normal(k, (4,))).lower(jax.random.PRNGKey(0)).compile().as_text()
    assert " while(" not in hlo, "lopt.runtime.setup did not install the unrolled lowering"

k = jax.random.PRNGKey(7)
def scanned(key):
    def body(c, _):
        c, sub = jax.random.split(c)
        return c, jax.random.normal(sub, (3,))
    return jax.lax.scan(body, key, None, length=4)[1]
outs = [
    jax.random.normal(k, (101, 7)),                                    # eager
    jax.jit(lambda k: jax.random.normal(k, (33,), jnp.bfloat16))(k),
    jax.jit(jax.vmap(lambda k: jax.random.uniform(k, (5, 3))))(jax.random.split(k, 9)),
    jax.random.key_data(jax.random.split(jax.random.key(3), 17)),
    jax.random.key_data(jax.random.fold_in(jax.random.key(3), 12345)),
    jax.random.randint(k, (100,), 0, 1000),
    jax.random.permutation(k, 257),
    jax.random.bits(k, (3,), jnp.uint8),
    jax.jit(scanned)(k),
]
h = hashlib.sha256()
for o in outs:
    o = jax.random.key_data(o) if jnp.issubdtype(o.dtype, jax.dtypes.prng_key) else o
    h.update(np.asarray(o).tobytes())
print(h.hexdigest())
"""


def _draws(lowering: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", DRAWS, lowering], check=False, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_same_bits_as_jax_lowering():
    # the "lopt" run installs the lowering through lopt.runtime.setup, the CLI's entry
    jax_bits, lopt_bits = _draws("jax"), _draws("lopt")
    assert len(jax_bits) == 64 and lopt_bits == jax_bits
