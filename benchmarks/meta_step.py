"""Roofline sweep of the jitted meta-step over the number of particles N.

For each N (and precision) the NRES meta-step of ``--config`` is AOT-compiled once
(compile time reported, not timed), warmed up, then timed over ``--repeats`` blocks of
at least ``--steps`` outer steps each (``jax.block_until_ready`` after each block; the
median block sets ms per outer step). One outer step advances N particles K inner steps,
so particle-steps/s = N K / seconds per outer step, and achieved FLOP/s = particle-steps/s
x FLOPs per particle-step.

Machine limits, measured in the same process: the matmul rate for float32 and bfloat16
(square ``n x n`` products, n = 8192 on GPU/TPU, 1024 on CPU, JAX's default matmul
precision, as the model runs) and the memory bandwidth (``x * c`` over a large float32
vector: 4 bytes read + 4 written per element). Each is the best of 3 timed blocks.

Work per particle-step, counted by hand (:func:`count_flops`; matmul FLOPs only):
the inner task's forward + backward ~ 3 x its forward matmuls (``3 * 2 B sum(in*out)``),
plus the learned optimizer's per-parameter MLP (``2 n sum(in*out)`` over its layers,
n = inner parameters). Its first layer's ``in`` counts the per-parameter inputs only: the
time features are the same for every parameter and enter as a bias computed once per
update (``lopt.optimizers._nn.apply_mlp``'s ``shared``), 11 of the default 23 inputs.

Bytes per particle-step (:func:`count_bytes`), the state one inner step must move
through memory at least once (float32 state; the batch is stored float32 / int32)::

    bytes = 4 n (2 + 2 + 2 (k + 1)) + B (4 d_in + 4)
            p read+write, g write+read, k momenta + second moment read+write;
            batch of B inputs of width d_in plus int32 labels

(= 4 n (2k + 6) + B (4 d_in + 4); k = number of momentum decays). That is the fused
lower bound. If XLA materialises the per-parameter MLP's activations (features F, L
hidden layers of H, 2 outputs; each written once and read once) the traffic grows by
``8 n (F + L H + 2)``; the header reports this "unfused" roofline too.

Roofline: intensity I = FLOPs / bytes; attainable = min(compute rate, I x bandwidth);
"bound" says which term is smaller. The compute rate matches the precision: with
``bfloat16`` only the task's forward/backward runs in bfloat16 (lopt.tasks.precision),
while the learned optimizer's MLP stays float32, so the compute time per particle-step
is ``task/R_bf16 + lopt/R_f32`` and the rate is FLOPs / that time.

Peak memory: XLA's static plan of the compiled step (arguments + outputs + temporaries,
every backend) and, on GPU/TPU, the allocator's ``peak_bytes_in_use`` after the row (the
process-wide high-water mark: it never decreases along the sweep).

Usage (CPU default: N = 8 32 128, float32, a couple of minutes on 2 cores)::

    python benchmarks/meta_step.py
    python benchmarks/meta_step.py --num-particles 32 --precision bfloat16

On a GPU machine (one command; both precisions, every local device)::

    python benchmarks/meta_step.py --num-particles 8 32 128 512 1024 2048 --devices all \\
        --precision float32 bfloat16 --csv results/meta_step_gpu.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

MB = 1e6


def _best_rate(fn, x, work: float, min_time: float = 0.3, blocks: int = 3) -> float:
    """``work`` units per second of ``fn(x)``: best of ``blocks`` timed blocks of >= ``min_time`` s."""
    fn = jax.jit(fn)
    fn(x).block_until_ready()  # compile + warm-up
    t = time.perf_counter()
    fn(x).block_until_ready()
    reps = max(3, math.ceil(min_time / max(time.perf_counter() - t, 1e-6)))
    best = 0.0
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(reps):
            out = fn(x)
        out.block_until_ready()
        best = max(best, work * reps / (time.perf_counter() - t))
    return best


def measure_matmul(dtype, n: int) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype``."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    return _best_rate(lambda x: x @ x, a, 2 * n**3)


def measure_bandwidth(n: int) -> float:
    """Bytes/s of an elementwise scale of ``n`` float32 (4 bytes read + 4 written each)."""
    a = jnp.ones((n,), jnp.float32)
    return _best_rate(lambda x: x * 1.0001, a, 2 * 4 * n)


def per_parameter_inputs(lopt) -> int:
    """MLP inputs that differ between parameters: all but the time features, unless those
    are the only ones (then they are broadcast to every parameter)."""
    shared = lopt.num_time_features if "time" in lopt.features and len(lopt.features) > 1 else 0
    return lopt.num_features - shared


def count_flops(
    cfg, num_params: int, layer_sizes: list[tuple[int, int]], num_features: int | None = None
) -> dict[str, float]:
    """FLOPs per particle-step: task fwd+bwd (3x fwd matmuls) + learned-optimizer MLP per parameter."""
    batch = cfg.meta_train.task.batch_size
    task = 3 * 2 * batch * sum(i * o for i, o in layer_sizes)
    lo = cfg.lopt
    k = len(lo.momentum_decays)
    f = num_features if num_features is not None else 4 + 2 * k  # time features: a bias
    sizes = [f] + [lo.hidden_size] * lo.num_layers + [2]
    lopt = num_params * 2 * sum(i * o for i, o in itertools.pairwise(sizes))
    return {"task": task, "lopt": lopt, "total": task + lopt}


def count_bytes(cfg, num_params: int, input_dim: int, num_features: int) -> dict[str, float]:
    """Bytes per particle-step: fused lower bound ``4n(2k+6) + B(4 d_in + 4)`` and unfused extra.

    See the module docstring for the terms; ``unfused`` adds the per-parameter MLP's
    activations written and read once: ``8 n (F + L H + 2)``.
    """
    lo = cfg.lopt
    k = len(lo.momentum_decays)
    batch = cfg.meta_train.task.batch_size
    state = 4 * num_params * (2 + 2 + 2 * (k + 1))
    data = batch * (4 * input_dim + 4)
    acts = 8 * num_params * (num_features + lo.num_layers * lo.hidden_size + 2)
    return {"state": state, "batch": data, "fused": state + data, "unfused": state + data + acts}


def roofline(flops: float, nbytes: float, rate: float, bandwidth: float) -> tuple[float, str]:
    """Attainable FLOP/s and the bound ("compute" or "memory") of the classic roofline."""
    mem = flops / nbytes * bandwidth
    return (rate, "compute") if rate <= mem else (mem, "memory")


def with_overrides(cfg, num_particles: int, trunc_length: int | None, precision: str, devices,
                   particle_chunk: int | None = None):
    """``cfg`` with the sweep's meta_train / compute fields replaced (model_copy)."""
    from lopt.config import particle_chunk_unit

    unit = particle_chunk_unit(num_particles, cfg.meta_train.estimator)
    chunk = particle_chunk if particle_chunk is not None and particle_chunk < unit else None
    mt = {"num_particles": num_particles, "devices": devices, "particle_chunk": chunk}
    if trunc_length is not None:
        shortest = cfg.meta_train.min_horizon or cfg.meta_train.horizon  # model_copy does not validate
        if trunc_length > shortest:
            raise SystemExit(f"--trunc-length {trunc_length} exceeds the shortest episode T={shortest}")
        mt["trunc_length"] = trunc_length
    return cfg.model_copy(
        update={
            "meta_train": cfg.meta_train.model_copy(update=mt),
            "compute": cfg.compute.model_copy(update={"precision": precision}),
        }
    )


def time_meta_step(cfg, steps: int, repeats: int, min_time: float) -> dict:
    """Compile and time the meta-step of ``cfg``; returns timings, memory and the inner shapes."""
    from lopt.meta_train import build_trainer, make_meta_step, meta_state_shardings

    mt = cfg.meta_train
    trainer = build_trainer(cfg)
    state, data = trainer.init(), trainer.data
    mesh = None
    if mt.devices != 1:
        from lopt.sharding import particle_mesh, place, replicate

        mesh = particle_mesh(None if mt.devices == "all" else mt.devices)
        if mesh.devices.size == 1:
            mesh = None
        else:
            if mt.num_particles % (2 * mesh.devices.size):
                raise SystemExit(
                    f"N={mt.num_particles} must be a multiple of 2 x {mesh.devices.size} devices"
                )
            state = place(state, meta_state_shardings(trainer, mesh))
            data = replicate(data, mesh)
    # Several queued multi-device calls can deadlock on fake CPU devices: sync per step there.
    sync_each = mesh is not None and jax.default_backend() == "cpu"
    t = time.perf_counter()
    step = make_meta_step(trainer, mesh).lower(state, data).compile()
    compile_s = time.perf_counter() - t
    mem = step.memory_analysis()
    plan = (
        sum(
            getattr(mem, f, 0) or 0
            for f in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
        )
        if mem
        else math.nan
    )

    def run(state, n):
        for _ in range(n):
            state, _ = step(state, data)
            if sync_each:
                jax.block_until_ready(state.step)
        return jax.block_until_ready(state)

    state = run(state, 1)  # warm-up
    t = time.perf_counter()
    state = run(state, 1)
    n = max(steps, math.ceil(min_time / (time.perf_counter() - t)))
    blocks = []
    for _ in range(repeats):
        t = time.perf_counter()
        state = run(state, n)
        blocks.append((time.perf_counter() - t) / n)
    stats = jax.devices()[0].memory_stats() or {}
    inner = jax.tree.map(lambda x: x[0], state.estimator_state.particles.inner.params)
    return {
        "compile_s": compile_s,
        "sec_per_step": statistics.median(blocks),
        "steps_timed": n * repeats,
        "plan_MB": plan / MB,
        "device_peak_MB": stats.get("peak_bytes_in_use", math.nan) / MB,
        "layer_sizes": [tuple(v["w"].shape) for v in inner.values()],
        "num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(inner)),
        "num_features": per_parameter_inputs(trainer.lopt),
        "devices": 1 if mesh is None else mesh.devices.size,
    }


def measure_limits() -> dict:
    """Matmul FLOP/s per dtype and bandwidth (bytes/s), sized for the backend."""
    backend = jax.default_backend()
    n_mm, n_bw = (1024, 1 << 25) if backend == "cpu" else (8192, 1 << 28)
    return {
        "backend": backend,
        "n_mm": n_mm,
        "n_bw": n_bw,
        "float32": measure_matmul(jnp.float32, n_mm),
        "bfloat16": measure_matmul(jnp.bfloat16, n_mm),
        "bandwidth": measure_bandwidth(n_bw),
    }


def sweep_row(cfg, limits: dict, args) -> tuple[dict, dict]:
    """Time one (N, precision) and place it on the roofline; returns (row, work counts)."""
    mt, precision = cfg.meta_train, cfg.compute.precision
    res = time_meta_step(cfg, args.steps, args.repeats, args.min_time)
    n, sizes, feats = res["num_params"], res["layer_sizes"], res["num_features"]
    flops = count_flops(cfg, n, sizes, feats)
    nbytes = count_bytes(cfg, n, sizes[0][0], feats)
    # bfloat16 speeds up only the task's matmuls; the learned optimizer's MLP stays float32
    rate = flops["total"] / (flops["task"] / limits[precision] + flops["lopt"] / limits["float32"])
    attainable, bound = roofline(flops["total"], nbytes["fused"], rate, limits["bandwidth"])
    unfused, _ = roofline(flops["total"], nbytes["unfused"], rate, limits["bandwidth"])
    ps = mt.num_particles * mt.trunc_length / res["sec_per_step"]
    achieved = ps * flops["total"]
    row = {
        "precision": precision,
        "N": mt.num_particles,
        "chunk": mt.particle_chunk or "",
        "K": mt.trunc_length,
        "devices": res["devices"],
        "compile_s": round(res["compile_s"], 2),
        "ms_per_step": round(res["sec_per_step"] * 1e3, 3),
        "particle_steps_per_s": round(ps),
        "achieved_GFLOPs": round(achieved / 1e9, 2),
        "attainable_GFLOPs": round(attainable / 1e9, 2),
        "fraction": round(achieved / attainable, 4),
        "bound": bound,
        "fraction_unfused": round(achieved / unfused, 4),
        "plan_MB": round(res["plan_MB"], 1),
        "device_peak_MB": round(res["device_peak_MB"], 1),
        "steps_timed": res["steps_timed"],
    }
    return row, {"res": res, "flops": flops, "bytes": nbytes}


COLUMNS = [
    ("precision", "{}"),
    ("N", "{}"),
    ("chunk", "{}"),
    ("ms_per_step", "{:.1f}"),
    ("particle_steps_per_s", "{:,}"),
    ("achieved_GFLOPs", "{:.1f}"),
    ("attainable_GFLOPs", "{:.1f}"),
    ("fraction", "{:.1%}"),
    ("bound", "{}"),
    ("fraction_unfused", "{:.1%}"),
    ("compile_s", "{:.1f}"),
    ("plan_MB", "{:.1f}"),
    ("device_peak_MB", "{:.0f}"),
]


def print_report(config: str, cfg, limits: dict, work: dict, rows: list[dict]) -> None:
    """The header (machine, config, limits, work per particle-step) and the markdown table."""
    mt, res, flops, nbytes, bw = (
        cfg.meta_train,
        work["res"],
        work["flops"],
        work["bytes"],
        limits["bandwidth"],
    )
    print(
        f"\ndevice: {jax.devices()[0].device_kind} ({limits['backend']}) x{jax.device_count()}, "
        f"jax {jax.__version__}"
    )
    print(
        f"config: {config}  estimator={mt.estimator} K={mt.trunc_length} T={mt.horizon} "
        f"B={mt.task.batch_size} inner layers={res['layer_sizes']} n={res['num_params']}"
    )
    print(
        f"measured: matmul float32 {limits['float32'] / 1e9:,.1f} GFLOP/s, bfloat16 "
        f"{limits['bfloat16'] / 1e9:,.1f} GFLOP/s ({limits['n_mm']}^2); bandwidth {bw / 1e9:,.1f} GB/s "
        f"(x*c on {limits['n_bw'] * 4 / 2**20:.0f} MiB); float32 ridge {limits['float32'] / bw:.1f} FLOP/B"
    )
    print(
        f"FLOPs per particle-step: task {flops['task'] / 1e6:.3f} M + lopt {flops['lopt'] / 1e6:.3f} M "
        f"= {flops['total'] / 1e6:.3f} M"
    )
    for kind in ("fused", "unfused"):
        inten = flops["total"] / nbytes[kind]
        print(
            f"bytes per particle-step ({kind}): {nbytes[kind] / 1e3:,.1f} kB -> intensity "
            f"{inten:.1f} FLOP/B, bandwidth roof {inten * bw / 1e9:,.1f} GFLOP/s"
        )
    print("\n| " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("|" + ":--|" * 1 + "--:|" * (len(COLUMNS) - 1))
    for row in rows:
        nan = [isinstance(row[c], float) and math.isnan(row[c]) for c, _ in COLUMNS]
        cells = ["-" if x else f.format(row[c]) for x, (c, f) in zip(nan, COLUMNS)]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--num-particles", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--trunc-length", type=int, default=None, help="K (default: the config's)")
    parser.add_argument(
        "--precision", nargs="+", choices=["float32", "bfloat16"], default=["float32"]
    )
    parser.add_argument("--devices", default="1", help="meta_train.devices: an int or 'all'")
    parser.add_argument(
        "--particle-chunk", type=int, nargs="+", default=[0],
        help="meta_train.particle_chunk values to sweep (0: unset, all particles at once)",
    )
    parser.add_argument("--steps", type=int, default=10, help="min outer steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per row (median)")
    parser.add_argument("--min-time", type=float, default=0.5, help="min seconds per timed block")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    devices = args.devices if args.devices == "all" else int(args.devices)

    from lopt.config import load_config

    base = load_config(args.config)
    if base.lopt.kind != "mlp_lopt" or base.meta_train.task_family is not None:
        raise SystemExit("the work count assumes lopt.kind mlp_lopt and a single meta_train.task")
    limits = measure_limits()
    print(
        f"limits ({limits['backend']}): matmul float32 {limits['float32'] / 1e9:,.1f} GFLOP/s, "
        f"bfloat16 {limits['bfloat16'] / 1e9:,.1f} GFLOP/s, bandwidth {limits['bandwidth'] / 1e9:,.1f} GB/s",
        flush=True,
    )
    rows = []
    for precision, num, chunk in itertools.product(args.precision, args.num_particles, args.particle_chunk):
        cfg = with_overrides(base, num, args.trunc_length, precision, devices, chunk or None)
        if chunk and cfg.meta_train.particle_chunk is None:
            continue  # a chunk of all the pairs or more: the unchunked row already measures it
        row, work = sweep_row(cfg, limits, args)
        rows.append(row)
        print(f"  {precision} N={num} chunk={chunk or '-'}: {row['ms_per_step']:.1f} ms per outer step", flush=True)
        if args.csv:  # after every row, so a run cut short (a device lease) keeps what it measured
            write_csv(args.csv, rows)
    print_report(args.config, cfg, limits, work, rows)


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
