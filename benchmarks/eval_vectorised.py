"""Evaluation wall time: seeds (and learning rates) in one vmapped program vs a Python loop.

`lopt.evaluate.train_curves` trains every (learning rate, seed) of a sweep in one
compiled, vmapped program (the same program is built here once, so the second call shows
the compile-free cost). This script times that against the obvious alternative,
one jitted training run per (rate, seed) called from a Python loop (compiled once,
reused), on the same task, budget and evaluation schedule:

    python benchmarks/eval_vectorised.py                 # digits MLP-32, 200 steps
    python benchmarks/eval_vectorised.py --rates 9 --seeds 5

Reports seconds for the first call (compile included) and for a second call (steady
state), for S seeds x H learning rates, and the speed-up of vectorising.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.config import ImageMLPTaskConfig
from lopt.evaluate import curves_program, training_run
from lopt.optimizers import lr_grid, make_baseline
from lopt.tasks import build_task


def timed(fn) -> tuple[float, float]:
    """(first call incl. compile, second call) in seconds."""
    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out[0], out[1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--rates", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    task, data = build_task(ImageMLPTaskConfig(dataset="digits", hidden_sizes=[32]), args.data_root)
    grid = jnp.asarray(lr_grid(1e-4, 1.0, args.rates))
    seeds = np.arange(args.seeds)

    def make(lr):
        return make_baseline("adam", lr)

    every = curves_program(task, make, args.steps, args.eval_every)  # exactly train_curves' program
    one = jax.jit(training_run(task, make, args.steps, args.eval_every))  # compiled once, called per run

    def vectorised():
        return every(grid, jnp.asarray(seeds), data)["train_batch"]

    def looped():
        return [one(grid[i], jnp.int32(j), data)["train_batch"] for i in range(args.rates) for j in range(args.seeds)]

    v_first, v_steady = timed(vectorised)
    l_first, l_steady = timed(looped)
    runs = args.rates * args.seeds
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); digits MLP-32, Adam, {args.steps} steps, "
          f"{args.rates} rates x {args.seeds} seeds = {runs} runs")
    print("| mode | first call (s, incl. compile) | steady state (s) | ms per run (steady) |")
    print("|:--|--:|--:|--:|")
    print(f"| vmapped (one program) | {v_first:.2f} | {v_steady:.2f} | {1e3 * v_steady / runs:.1f} |")
    print(f"| Python loop over runs | {l_first:.2f} | {l_steady:.2f} | {1e3 * l_steady / runs:.1f} |")
    print(f"speed-up of vectorising: {l_first / v_first:.1f}x first call, {l_steady / v_steady:.1f}x steady state")


if __name__ == "__main__":
    main()
