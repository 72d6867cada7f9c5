"""The practical trade-offs of learned optimizers: memory, time per update, meta-parameters.

For every learned-optimizer architecture (untrained meta-parameters at the config
defaults; the cost of an update does not depend on their values) and Adam, on
parameter sets of 1e3 ... 1e7 scalars, this measures

* ``state_floats_per_param``: optimizer-state floats per inner parameter, read off the
  ``init``-ed optax state (per-tensor LSTM states included, divided by N);
* ``xla_bytes_per_param``: XLA's memory plan of one jitted update (arguments + outputs +
  temporaries, as ``compiled.memory_analysis()`` reports it) divided by N: what one
  update needs beside the model, activations of the per-parameter MLP included;
* ``ms_per_update`` and ``time_vs_adam``: median wall time of one update (the update and
  ``apply_updates``, ``R`` updates inside one ``lax.fori_loop`` so dispatch does not
  count), and its ratio to Adam's at the same N;
* ``num_meta_params``: from the optimizer's model card.

The parameter set is a two-layer MLP-shaped pytree (``w0 [d, d], b0 [d], w1 [d, d],
b1 [d]`` with ``2 d^2 + 2 d ~ N``), so per-tensor features and factored (row/column)
accumulators see matrices, as in a real network. Gradients are fixed Gaussian noise and
the loss (``value=``) a constant: both only feed the arithmetic being timed.

    python benchmarks/lopt_overhead.py                 # N = 1e3 ... 1e7, CSV below
    python benchmarks/lopt_overhead.py --quick         # N = 1e3, 1e4 (smoke)

Writes ``benchmarks/lopt_overhead.csv`` (``--csv``); the analysis stage renders that
file as ``tables/tradeoffs.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pandas as pd

from lopt.analysis.tables import tradeoffs_table
from lopt.optimizers import make_lopt

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "adam": {},
    "mlp_lopt": {"kind": "mlp_lopt"},
    "adafac_mlp_lopt": {"kind": "adafac_mlp_lopt"},
    "nn_adam": {"kind": "nn_adam"},
    "rnn_mlp_lopt": {"kind": "rnn_mlp_lopt"},
    "nominal_mlp_lopt": {"kind": "mlp_lopt", "nominal": {"optimizer": "adam", "learning_rate": 1e-3}},
}
FIELDS = (
    "optimizer",
    "num_params",
    "num_meta_params",
    "state_floats_per_param",
    "xla_bytes_per_param",
    "ms_per_update",
    "time_vs_adam",
)


def param_tree(num_params: int, key: jax.Array) -> Any:
    """An MLP-shaped pytree with about ``num_params`` float32 scalars."""
    d = max(2, round((-2 + math.sqrt(4 + 8 * num_params)) / 4))
    k0, k1 = jax.random.split(key)
    return {
        "w0": jax.random.normal(k0, (d, d)) / math.sqrt(d),
        "b0": jnp.zeros((d,)),
        "w1": jax.random.normal(k1, (d, d)) / math.sqrt(d),
        "b1": jnp.zeros((d,)),
    }


def build(name: str, horizon: int) -> tuple[optax.GradientTransformationExtraArgs, int]:
    """The optimizer under test and its meta-parameter count (0 for Adam)."""
    spec = ARCHITECTURES[name]
    if name == "adam":
        return optax.with_extra_args_support(optax.adam(1e-3)), 0
    fields = {k: v for k, v in spec.items() if k != "kind"}
    lopt = make_lopt(spec["kind"], **fields)
    theta = lopt.init(jax.random.PRNGKey(0))
    return optax.with_extra_args_support(lopt.to_optax(theta, horizon)), lopt.card()["num_meta_params"]


def tree_size(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))


def measure(name: str, num_params: int, repeats: int, min_time: float) -> dict[str, Any]:
    opt, num_meta = build(name, horizon=1000)
    params = param_tree(num_params, jax.random.PRNGKey(1))
    n = tree_size(params)
    grads = jax.tree.map(lambda p: 1e-2 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    state = opt.init(params)
    loss = jnp.float32(1.0)

    def one(params, state):
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    single = jax.jit(one).lower(params, state).compile()
    mem = single.memory_analysis()
    xla_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes

    @jax.jit
    def loop(params, state, steps):
        return jax.lax.fori_loop(0, steps, lambda _, c: one(*c), (params, state))

    steps = 1
    jax.block_until_ready(loop(params, state, steps))  # compile
    while True:  # calibrate: one timed call lasts >= min_time
        t0 = time.perf_counter()
        jax.block_until_ready(loop(params, state, steps))
        if time.perf_counter() - t0 >= min_time or steps >= 4096:
            break
        steps *= 2
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(params, state, steps))
        times.append((time.perf_counter() - t0) / steps)
    return {
        "optimizer": name,
        "num_params": n,
        "num_meta_params": num_meta,
        "state_floats_per_param": tree_size(state) / n,
        "xla_bytes_per_param": xla_bytes / n,
        "ms_per_update": 1e3 * statistics.median(times),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--optimizers", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed call")
    parser.add_argument("--quick", action="store_true", help="N = 1e3, 1e4; 2 repeats")
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("lopt_overhead.csv"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.min_time = [1e3, 1e4], 2, 0.05
    names = ["adam"] + [o for o in args.optimizers if o != "adam"]
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    rows = []
    for size in args.sizes:
        adam_ms = None
        for name in names:
            row = measure(name, int(size), args.repeats, args.min_time)
            adam_ms = row["ms_per_update"] if name == "adam" else adam_ms
            row["time_vs_adam"] = row["ms_per_update"] / adam_ms
            rows.append(row)
            print(f"  {name} N={row['num_params']:.1e}: {row['ms_per_update']:.3g} ms, "
                  f"{row['xla_bytes_per_param']:.0f} B/param", flush=True)
    print()
    print(tradeoffs_table(pd.DataFrame(rows)))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
