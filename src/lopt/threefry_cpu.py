"""Threefry on XLA:CPU written out round by round: the same random bits, compiled ~2x faster.

Every ``jax.random`` draw (noise, task initialisation, batch indices) hashes with
Threefry-2x32. On CPU, JAX lowers that hash as a ``while`` loop of 5 iterations
(4 rounds each), which XLA:CPU compiles as a loop of small kernels: each draw site
costs ~0.25 s of compilation on a 2-core VM, and one meta-step holds dozens. Written out
(20 rounds, JAX's lowering for platforms without their own), the hash is one elementwise
fusion with the bits-to-float code around it. Measured (``benchmarks/RESULTS.md``,
"Threefry on CPU"): the default meta-step compiles in 7.7-8.3 s instead of
11.7-14.6 s, meta-training initialisation takes 4.7-4.9 s instead of 8.0-8.3 s, and the
step itself runs as fast.

The function is Random123's Threefry-2x32 with 20 rounds, so every draw is bit-identical
to JAX's own lowering (``tests/test_threefry_cpu.py`` checks the Random123 known-answer
vectors and compares with JAX's lowering in a fresh process). The programs around the
draws are fused differently, though, so other float32 results can move in the last bit,
as with any change to a program (or another CPU); a long meta-training run amplifies
that like any chaotic system: in the default pipeline the baselines' losses agree to
1e-4, and the learned optimizer still beats tuned SGD (RESULTS.md). Only the CPU lowering is replaced;
GPU and TPU keep JAX's. The command line installs it for every process
(:func:`lopt.runtime.setup`); code that calls lopt from Python compiles exactly like the
command line after :func:`use_unrolled_threefry_on_cpu`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

# Random123 Threefry-2x32: rotation constants of the two alternating 4-round groups,
# and the key-schedule parity constant
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key1: jnp.ndarray, key2: jnp.ndarray, x1: jnp.ndarray, x2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Threefry-2x32 (20 rounds) of the counter pair ``(x1, x2)`` under ``(key1, key2)``.

    All arguments are uint32 and broadcast together; returns the hashed pair.
    """
    ks = (key1, key2, key1 ^ key2 ^ _PARITY)
    a, b = x1 + ks[0], x2 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            a = a + b
            b = lax.shift_left(b, np.uint32(r)) | lax.shift_right_logical(b, np.uint32(32 - r))
            b = a ^ b
        # key injection after every 4 rounds
        a = a + ks[(group + 1) % 3]
        b = b + ks[(group + 2) % 3] + np.uint32(group + 1)
    return a, b


def _threefry2x32_once(key1, key2, x1, x2):
    """:func:`threefry2x32`, computed once per draw site however many kernels read it.

    XLA:CPU fuses elementwise producers into each consumer, duplicating them, because it
    counts integer adds, shifts and xors as cheap; a hash read by several kernels (the
    noise of the + and the - copy, the estimate, the two words of a split key) was
    compiled and computed once per reader, about 2.4 times per site in a meta-step. Two
    things stop that: the pair is packed into one uint64 (so both words come from one
    chain, not one chain each), and it passes through an integer division by a value
    XLA cannot see is 1, an op it will not duplicate (``lax.optimization_barrier`` does not
    stop the duplication: a toy program kept all 293 shifts behind one). Measured on a 2-core VM
    (benchmarks/RESULTS.md): a toy estimator's program compiles in 2.2 s instead of
    3.6-4.1 s. On the two-task default, init takes 2.4-2.7 s instead of 5.3-5.8 s and the
    meta-step compiles in 9.3-10.5 s instead of 12.7-14.7 s, and a step runs as fast (same
    code, alternating runs: 152-166 ms median against 160-168 ms; the compiled step divides at
    most 0.3 M 64-bit integers, about a millisecond). The bits are unchanged (x // 1 == x;
    tests/test_threefry_cpu.py).
    """
    a, b = threefry2x32(key1, key2, x1, x2)
    with jax.enable_x64(True):
        u64 = jnp.uint64
        pair = lax.shift_left(a.astype(u64), np.uint64(32)) | b.astype(u64)
        one = lax.shift_right_logical(key1, np.uint32(31)) | np.uint32(1)  # 1, from a runtime value
        pair = lax.div(pair, jnp.broadcast_to(one.astype(u64), pair.shape))
        return lax.shift_right_logical(pair, np.uint64(32)).astype(jnp.uint32), pair.astype(jnp.uint32)


def use_unrolled_threefry_on_cpu() -> None:
    """Lower ``threefry2x32`` on CPU as :func:`threefry2x32` (process-wide; calling again is harmless).

    Call before the first compilation (the command line does, in
    :func:`lopt.runtime.setup`); programs compiled earlier keep the loop lowering.
    Bit-identical results either way, so mixing them is harmless.
    """
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(_threefry2x32_once, multiple_results=True), platform="cpu")
