"""Start-up cost of meta-training on CPU: initialisation, meta-step compile, step time.

For ``--config``: build the trainer, time ``MetaTrainer.init`` (one jitted program),
AOT-compile the meta-step, then time ``--steps`` outer steps after one warm-up step.
``--lowering jax`` keeps JAX's loop lowering of Threefry on CPU; ``lopt`` installs
:mod:`lopt.threefry_cpu` as every ``lopt`` command does (written out, hashed once per draw
site); ``rounds`` installs the written-out rounds alone (hashed once per reader, as XLA
fuses them), to separate the two changes. Run each in its own process
(a lowering applies process-wide) and compare; ``benchmarks/RESULTS.md`` has the figures.

    python benchmarks/compile_time.py --config configs/default.yaml --lowering jax
    python benchmarks/compile_time.py --config configs/default.yaml --lowering lopt

``--devices N`` shards the particles over N local devices (``lopt.sharding``, as
``meta_train.devices``) and also counts the collectives in the compiled step; on a CPU use
``XLA_FLAGS=--xla_force_host_platform_device_count=N``:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python benchmarks/compile_time.py --config configs/default.yaml --devices 4
"""

from __future__ import annotations

import argparse
import time

import jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--lowering", choices=["jax", "lopt", "rounds"], default="lopt")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--devices", type=int, default=1, help="shard the particles over this many devices")
    args = parser.parse_args()
    if args.lowering == "lopt":
        from lopt.threefry_cpu import use_unrolled_threefry_on_cpu

        use_unrolled_threefry_on_cpu()
    elif args.lowering == "rounds":
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        from lopt.threefry_cpu import threefry2x32

        mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu")
    from lopt.config import load_config
    from lopt.meta_train import build_trainer, make_meta_step

    trainer = build_trainer(load_config(args.config))
    t = time.perf_counter()
    state = jax.block_until_ready(trainer.init())
    init_s = time.perf_counter() - t
    data, mesh = trainer.data, None
    if args.devices > 1:
        from lopt.meta_train import meta_state_shardings
        from lopt.sharding import particle_mesh, place, replicate

        mesh = particle_mesh(args.devices)
        state, data = place(state, meta_state_shardings(trainer, mesh)), replicate(data, mesh)
    t = time.perf_counter()
    step = make_meta_step(trainer, mesh).lower(state, data).compile()
    compile_s = time.perf_counter() - t
    hlo = step.as_text()
    collectives = {op: hlo.count(f" {op}(") for op in COLLECTIVES if f" {op}(" in hlo}
    state = jax.block_until_ready(step(state, data)[0])  # warm-up
    t = time.perf_counter()
    for _ in range(args.steps):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    step_ms = (time.perf_counter() - t) / args.steps * 1e3
    print(f"{args.config} lowering={args.lowering} devices={args.devices}: init {init_s:.2f} s, "
          f"meta-step compile {compile_s:.2f} s, step {step_ms:.1f} ms, collectives {collectives or 'none'}")


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


if __name__ == "__main__":
    main()
