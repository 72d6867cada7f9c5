"""Meta-training throughput of the default configuration against the machine's limits.

Counts the work of one inner step (task forward/backward + the per-parameter MLP of the
learned optimizer), measures the machine's float32 matmul rate and memory bandwidth in the
same process, times the jitted NRES meta-step, and prints particle-steps/s and the achieved
fraction of the matmul roofline.

    python benchmarks/meta_step.py [--config configs/default.yaml] [--steps 30]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np


def measure_matmul(n: int = 1024, reps: int = 20) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def measure_bandwidth(n: int = 1 << 25, reps: int = 10) -> float:
    a = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * 4 * n * reps / (time.perf_counter() - t)


def count_flops(cfg, num_params: int, layer_sizes: list[tuple[int, int]]) -> dict[str, float]:
    """FLOPs per particle-step: task fwd+bwd (3x fwd matmuls) + learned-optimizer MLP per parameter."""
    batch = cfg.meta_train.task.batch_size
    task = 3 * 2 * batch * sum(i * o for i, o in layer_sizes)
    lo = cfg.lopt
    k = len(lo.momentum_decays)
    sizes = [4 + 2 * k + lo.num_time_features] + [lo.hidden_size] * lo.num_layers + [2]
    lopt = num_params * 2 * sum(i * o for i, o in itertools.pairwise(sizes))
    return {"task": task, "lopt": lopt, "total": task + lopt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from lopt.config import load_config
    from lopt.meta_train import build_trainer, make_meta_step

    cfg = load_config(args.config)
    trainer = build_trainer(cfg)
    step = make_meta_step(trainer)
    state = trainer.init()
    t = time.perf_counter()
    state, _ = step(state, trainer.data)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        state, _m = step(state, trainer.data)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t) / args.steps

    mt = cfg.meta_train
    particle_steps = mt.num_particles * mt.trunc_length / per_step
    inner = jax.tree.map(lambda x: x[0], state.estimator_state.particles.inner.params)
    shapes = [v["w"].shape for v in inner.values()]
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(inner))
    flops = count_flops(cfg, num_params, shapes)
    matmul = measure_matmul()
    bandwidth = measure_bandwidth()
    achieved = particle_steps * flops["total"]
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(f"config: {args.config}  P={mt.num_particles} K={mt.trunc_length} T={mt.horizon} inner params={num_params}")
    print(f"FLOPs per particle-step: task {flops['task']/1e6:.2f} M + lopt {flops['lopt']/1e6:.2f} M = {flops['total']/1e6:.2f} M")
    print("| compile s | outer step ms | particle-steps/s | achieved GFLOP/s | matmul GFLOP/s | fraction | bandwidth GB/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {compile_s:.1f} | {per_step*1e3:.1f} | {particle_steps:,.0f} | {achieved/1e9:.1f} | "
        f"{matmul/1e9:.1f} | {achieved/matmul:.1%} | {bandwidth/1e9:.1f} |"
    )


if __name__ == "__main__":
    main()
