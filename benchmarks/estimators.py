"""Throughput and peak memory of lopt's gradient estimators, against evosax's online ES.

What is measured
----------------
One *outer step* of a lopt estimator is one call of ``est.estimate(theta, state, key,
data)`` with a fresh key (``fold_in(key, i)``); it advances all ``N`` particles ``K``
inner steps and returns a meta-gradient. To keep Python and dispatch out of the
measurement, ``R`` outer steps run inside **one** jitted ``lax.fori_loop`` whose trip
count ``R`` is a traced argument (a while loop), so the program is compiled exactly once
(ahead of time: ``jit(...).lower(...).compile()``) and the same executable is timed for
any ``R``. The loop carries the estimator state and a running sum of the gradients, so
nothing the estimate computes is dead code. After a warm-up call, untimed calls with
growing ``R`` size it so that one call lasts at least ``--min-time`` seconds (at most
``--max-steps``); then ``--repeats`` calls are timed (``jax.block_until_ready``) and the
median per step is kept.

* ``ms_per_step``: median seconds per outer step x 1000.
* ``particle_steps_per_s``: ``est.unroll_steps / seconds per step`` -- inner steps
  simulated per second over all particles (``N K``; ``1.5 N K`` for TES, whose
  unperturbed base particles are counted too).
* ``peak_mem_MB`` (10^6 bytes): XLA's static memory plan of the compiled loop,
  ``argument + output + temp`` bytes from ``compiled.memory_analysis()`` (the same on
  CPU and GPU; it includes the inputs: estimator state, theta and, for the ``lopt``
  problem, the dataset on device, identical for every row of a problem).
  On GPU, ``device_peak_MB`` adds ``memory_stats()["peak_bytes_in_use"]`` after the
  row: the process-wide high-water mark so far, so it never decreases along the sweep.
* ``compile_s``: lowering + compilation of the loop (not part of the timing).

Problems: ``lorenz`` (NRES's Lorenz-63 parameter learning, ``theta`` of size 2, sigma
0.04) and ``lopt`` (inner training of the default configuration's 64-32-10 MLP on digits
by the per-parameter MLP learned optimizer, ``theta`` of ~1.9k parameters, sigma 0.01).
Both use the episode horizon ``T = --horizon`` (default ``2 max(K)``, a multiple of every
``K``); ``full_es`` always uses ``K = T``. lopt's estimators run with ``step_unlock=True``
(their default), or with ``--lockstep`` with ``step_unlock=False``: the same schedule as
evosax's members (every pair at the same inner step, all resetting together), for which
the engine takes its no-reset-inside-the-window path on every window.

How evosax is driven, and why it is comparable
----------------------------------------------
evosax 0.3.2's ``PersistentES`` / ``NoiseReuseES`` are ask/tell strategies on the flat
(``ravel_pytree``) parameter vector: ``population_size = N`` members, antithetic noise
with ``std_schedule = constant(sigma)``, ``Params(T, K)``. One *generation* is

    ask -> (reset every member's inner state if the shared inner-step counter is 0)
        -> unroll every member's own inner state K steps (jax.vmap over members,
           lax.scan over steps, the same ``system.init`` / ``system.step`` lopt uses)
        -> tell with each member's mean loss over the window,

the online-ES loop of evosax's PES examples: members run in lockstep and all reset
together when the counter reaches ``T`` (a ``lax.cond``: the reset costs nothing in the
other generations). The gradient normaliser is the same as lopt's (``1 / (N sigma^2)
sum_i xi_i L_i``). ``tell`` also applies the outer update; it is given ``optax.sgd(0)``
so that, as on the lopt side, theta stays fixed while the gradient is still computed.
Generations are timed exactly like outer steps (same loop, same accounting: ``N K``
particle-steps per generation), and ``ratio_vs_evosax`` = lopt throughput / evosax
throughput for ``pes`` vs ``PersistentES`` and ``nres`` vs ``NoiseReuseES`` at the same
problem, ``N``, ``K``, ``sigma`` and ``T``.

Known differences (cost, not statistics, is compared): lopt step-unlocks particles (each
pair at its own inner step, so resets are per particle inside the window: the engine
builds the next episode's state once per window, and only in windows where some
particle reaches the horizon) while evosax members are in lockstep; lopt's
engine derives each step's PRNG key from (particle key, episode, step), the evosax loop
from (generation key, member pair, step); lopt works on theta pytrees, evosax on flat
vectors unravelled per member; ``tell`` also tracks the best member and some metrics.

Scaling check
-------------
The second table fits the log-log least-squares slope of ``ms_per_step`` against ``N``
(at ``K = 10``, or the largest swept ``K`` if 10 is not swept) and against ``K`` (at
``N = 128``, or the largest swept ``N``), over all points and over the two largest only
("tail"). Linear cost in ``N K`` gives slopes near 1 once the machine is saturated;
slopes well below 1 mean fixed overhead or unused parallelism at small sizes.

Usage
-----
    python benchmarks/estimators.py --quick                       # smoke run, seconds
    python benchmarks/estimators.py --csv results/estimators.csv  # the full sweep
    python benchmarks/estimators.py --problems lorenz --estimators pes nres full_es \\
        --num-particles 8 32 128 --trunc-lengths 1 10 100 --repeats 5

Record measured tables in ``benchmarks/RESULTS.md`` (with the command, machine and date).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOPT_ESTIMATORS = ("tbptt", "tes", "pes", "nres", "full_es")
EVOSAX_NAMES = {"pes": "evosax_PersistentES", "nres": "evosax_NoiseReuseES"}
DEFAULT_SIGMA = {"lorenz": 0.04, "lopt": 0.01}
SCALING_REF_N = 128
SCALING_REF_K = 10
MB = 1e6

# (loop carry, (theta, key, data)) -> loop carry, for outer step / generation i
Body = Callable[[jax.Array, Any, Any], Any]


class Problem(NamedTuple):
    name: str
    system: Any  # lopt.unroll.UnrolledSystem
    theta: Any
    data: Any
    sigma: float


class Bench(NamedTuple):
    """A benchmarked program: the loop body, its initial carry and the work per step."""

    body: Body
    carry: Any
    particle_steps: int


@dataclasses.dataclass
class Row:
    problem: str
    implementation: str
    N: int
    K: int
    particle_steps_per_s: float = math.nan
    ms_per_step: float = math.nan
    peak_mem_MB: float = math.nan
    device_peak_MB: float = math.nan
    compile_s: float = math.nan
    steps_timed: int = 0
    ratio_vs_evosax: float = math.nan
    error: str = ""


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


def lorenz_problem(horizon: int, sigma: float | None) -> Problem:
    from lopt.tasks.systems import Lorenz

    system = Lorenz(horizon=horizon)
    return Problem("lorenz", system, system.initial_theta(), None, _sigma("lorenz", sigma))


def lopt_problem(horizon: int, sigma: float | None, config: str) -> Problem:
    from lopt.config import load_config
    from lopt.optimizers import from_config, update_rule
    from lopt.tasks import InnerTraining, build_task

    cfg = load_config(config)
    if not (Path(cfg.data.root) / cfg.meta_train.task.dataset / "manifest.json").exists():
        raise SystemExit(f"data missing: run `lopt prepare-data --config {config}` first")
    lopt = from_config(cfg.lopt)
    task, data = build_task(cfg.meta_train.task, cfg.data.root)
    system = InnerTraining(task, lopt.to_optax, horizon, "train", update_rule=update_rule(lopt))
    theta = lopt.init(jax.random.PRNGKey(0))
    return Problem("lopt", system, theta, data, _sigma("lopt", sigma))


def _sigma(name: str, sigma: float | None) -> float:
    return DEFAULT_SIGMA[name] if sigma is None else sigma


def build_problem(name: str, horizon: int, sigma: float | None, config: str) -> Problem:
    if name == "lorenz":
        return lorenz_problem(horizon, sigma)
    if name == "lopt":
        return lopt_problem(horizon, sigma, config)
    raise ValueError(f"unknown problem {name!r}; allowed: lorenz, lopt")


# --------------------------------------------------------------------------------------
# The two implementations as loop bodies
# --------------------------------------------------------------------------------------


def lopt_bench(
    problem: Problem, name: str, num_particles: int, trunc_length: int, step_unlock: bool = True,
    particle_chunk: int | None = None,
) -> Bench:
    """lopt estimator ``name``: carry = (estimator state, gradient sum).

    ``particle_chunk`` (the estimators' option) applies only when it splits the particles
    (ES: the pairs) into several chunks; otherwise the particles run all at once.
    """
    from lopt.config import particle_chunk_unit
    from lopt.estimators import make_estimator

    unit = particle_chunk_unit(num_particles, name)
    extra = {"particle_chunk": particle_chunk} if particle_chunk and particle_chunk < unit else {}
    est = make_estimator(
        name,
        problem.system,
        num_particles=num_particles,
        trunc_length=trunc_length,
        sigma=problem.sigma,
        step_unlock=step_unlock,
        **extra,
    )

    def body(i: jax.Array, carry: Any, consts: Any) -> Any:
        theta, key, data = consts
        state, grad_sum = carry
        grad, state, _ = est.estimate(theta, state, jax.random.fold_in(key, i), data)
        return state, jax.tree.map(jnp.add, grad_sum, grad)

    state = est.init(problem.theta, jax.random.PRNGKey(1), problem.data)
    carry = (state, jax.tree.map(jnp.zeros_like, problem.theta))
    return Bench(body, carry, est.unroll_steps)


def evosax_strategy(name: str, problem: Problem, num_particles: int) -> Any:
    from evosax.algorithms import NoiseReuseES, PersistentES

    cls = {"pes": PersistentES, "nres": NoiseReuseES}[name]
    return cls(
        population_size=num_particles,
        solution=problem.theta,
        optimizer=optax.sgd(0.0),
        std_schedule=optax.constant_schedule(problem.sigma),
    )


def pair_keys(key: jax.Array, num: int) -> jax.Array:
    """``num`` keys where member ``i`` and ``i + num/2`` share one (antithetic pairs)."""
    keys = jax.random.split(key, num // 2)
    return jnp.concatenate([keys, keys])


def strong(tree: Any) -> Any:
    """Drop weak types (evosax's init returns some) so the loop carry's type is stable."""
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), tree)


def evosax_bench(problem: Problem, name: str, num_particles: int, trunc_length: int) -> Bench:
    """evosax strategy for lopt estimator ``name``: carry = (evosax state, inner states)."""
    algo = evosax_strategy(name, problem, num_particles)
    params = algo.default_params.replace(T=problem.system.horizon, K=trunc_length)
    vinit = jax.vmap(problem.system.init, in_axes=(0, 0, None))
    vstep = jax.vmap(problem.system.step, in_axes=(0, 0, None, 0, None))
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

    def body(i: jax.Array, carry: Any, consts: Any) -> Any:
        _, key, data = consts
        es_state, inner = carry
        key_ask, key_init, key_step, key_tell = jax.random.split(jax.random.fold_in(key, i), 4)
        t0 = es_state.inner_step_counter
        population, es_state = algo.ask(key_ask, es_state, params)
        inner = jax.lax.cond(
            t0 == 0,
            lambda: vinit(population, pair_keys(key_init, num_particles), data),
            lambda: inner,
        )
        step_keys = pair_keys(key_step, num_particles)

        def step(inner: Any, j: jax.Array) -> tuple[Any, jax.Array]:
            return vstep(population, inner, t0 + j, fold(step_keys, j), data)

        inner, losses = jax.lax.scan(step, inner, jnp.arange(trunc_length))
        es_state, _ = algo.tell(key_tell, population, losses.mean(axis=0), es_state, params)
        return strong(es_state), inner

    es_state = strong(algo.init(jax.random.PRNGKey(1), problem.theta, params))
    thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_particles, *x.shape)), problem.theta)
    inner = vinit(thetas, pair_keys(jax.random.PRNGKey(2), num_particles), problem.data)
    return Bench(body, (es_state, inner), num_particles * trunc_length)


# --------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------


def compile_loop(bench: Bench, consts: Any) -> Any:
    """AOT-compile ``R`` iterations of ``bench.body`` with ``R`` a traced int32."""

    def loop(carry: Any, consts: Any, num_steps: jax.Array) -> Any:
        return jax.lax.fori_loop(0, num_steps, lambda i, c: bench.body(i, c, consts), carry)

    return jax.jit(loop).lower(bench.carry, consts, jnp.int32(1)).compile()


def static_peak_bytes(compiled: Any) -> float:
    """``argument + output + temp`` bytes of XLA's memory plan (NaN if unavailable)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return math.nan
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    return float(sum(getattr(stats, f, 0) or 0 for f in fields))


def device_peak_bytes() -> float:
    """The device's allocator high-water mark (GPU/TPU), NaN where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("peak_bytes_in_use", math.nan))


def timed_call(compiled: Any, carry: Any, consts: Any, num_steps: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(carry, consts, jnp.int32(num_steps)))
    return time.perf_counter() - start


def calibrate(compiled: Any, carry: Any, consts: Any, min_time: float, max_steps: int) -> int:
    """Steps per call so that one call lasts ``min_time`` (the first call also warms up)."""
    timed_call(compiled, carry, consts, 1)
    steps, elapsed = 1, timed_call(compiled, carry, consts, 1)
    while elapsed < min_time and steps < max_steps:
        guess = math.ceil(steps * min_time / max(elapsed, 1e-9))
        steps = min(max_steps, max(2 * steps, guess))
        elapsed = timed_call(compiled, carry, consts, steps)
    return steps


def measure(bench: Bench, consts: Any, repeats: int, min_time: float, max_steps: int) -> Row:
    """Time one benchmark (see the module docstring); fills the numeric fields of a Row."""
    start = time.perf_counter()
    compiled = compile_loop(bench, consts)
    compile_s = time.perf_counter() - start
    steps = calibrate(compiled, bench.carry, consts, min_time, max_steps)
    times = [timed_call(compiled, bench.carry, consts, steps) for _ in range(repeats)]
    per_step = statistics.median(times) / steps
    return Row(
        problem="",
        implementation="",
        N=0,
        K=0,
        particle_steps_per_s=bench.particle_steps / per_step,
        ms_per_step=per_step * 1e3,
        peak_mem_MB=static_peak_bytes(compiled) / MB,
        device_peak_MB=device_peak_bytes() / MB,
        compile_s=compile_s,
        steps_timed=steps,
    )


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


def configurations(
    estimators: Sequence[str], ns: Sequence[int], ks: Sequence[int], horizon: int, evosax: bool
) -> list[tuple[str, str, int, int]]:
    """``(kind, estimator, N, K)`` rows; kind is ``lopt`` or ``evosax``; full_es at K = T."""
    configs = []
    for n in ns:
        if "full_es" in estimators:
            configs.append(("lopt", "full_es", n, horizon))
        for k in ks:
            for name in (e for e in estimators if e != "full_es"):
                configs.append(("lopt", name, n, k))
                if evosax and name in EVOSAX_NAMES:
                    configs.append(("evosax", name, n, k))
    return configs


def run_one(problem: Problem, kind: str, name: str, n: int, k: int, args: Any) -> Row:
    label = name if kind == "lopt" else EVOSAX_NAMES[name]
    if kind == "lopt":
        make = functools.partial(lopt_bench, step_unlock=not args.lockstep, particle_chunk=args.particle_chunk)
    else:
        make = evosax_bench
    consts = (problem.theta, jax.random.PRNGKey(3), problem.data)
    try:
        row = measure(
            make(problem, name, n, k), consts, args.repeats, args.min_time, args.max_steps
        )
    except (jax.errors.JaxRuntimeError, MemoryError) as exc:  # e.g. out of device memory
        row = Row(problem="", implementation="", N=0, K=0, error=str(exc).splitlines()[0][:120])
    return dataclasses.replace(row, problem=problem.name, implementation=label, N=n, K=k)


def add_ratios(rows: list[Row]) -> None:
    """``ratio_vs_evosax`` of pes / nres rows: lopt throughput over evosax's, same config."""
    evo = {(r.problem, r.implementation, r.N, r.K): r.particle_steps_per_s for r in rows}
    for row in rows:
        if row.implementation in EVOSAX_NAMES:
            ref = evo.get((row.problem, EVOSAX_NAMES[row.implementation], row.N, row.K))
            if ref:
                row.ratio_vs_evosax = row.particle_steps_per_s / ref


def sweep(args: Any, horizon: int) -> list[Row]:
    rows = []
    configs = configurations(
        args.estimators, args.num_particles, args.trunc_lengths, horizon, not args.no_evosax
    )
    for problem_name in args.problems:
        problem = build_problem(problem_name, horizon, args.sigma, args.config)
        for kind, name, n, k in configs:
            row = run_one(problem, kind, name, n, k, args)
            print(progress_line(row), file=sys.stderr, flush=True)
            rows.append(row)
            if args.csv is not None:  # after every row: a run cut short keeps what it measured
                write_csv(args.csv, rows)
    add_ratios(rows)
    return rows


def progress_line(row: Row) -> str:
    what = f"{row.problem} {row.implementation} N={row.N} K={row.K}"
    if row.error:
        return f"  {what}: FAILED {row.error}"
    return (
        f"  {what}: {row.ms_per_step:.3f} ms/step x{row.steps_timed}, compile {row.compile_s:.1f} s"
    )


# --------------------------------------------------------------------------------------
# Scaling fits
# --------------------------------------------------------------------------------------


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x``; NaN with fewer than two points."""
    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0 and math.isfinite(y)]
    if len({x for x, _ in pts}) < 2:
        return math.nan
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def reference(values: Sequence[int], preferred: int) -> int:
    return preferred if preferred in values else max(values)


def slopes(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Slope over all points and over the two largest x ("tail")."""
    points = sorted(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return loglog_slope(xs, ys), loglog_slope(xs[-2:], ys[-2:])


def scaling_rows(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    groups = sorted({(r.problem, r.implementation) for r in rows}, key=lambda g: g)
    for problem, impl in groups:
        group = [r for r in rows if (r.problem, r.implementation) == (problem, impl)]
        ref_k = reference(sorted({r.K for r in group}), SCALING_REF_K)
        ref_n = reference(sorted({r.N for r in group}), SCALING_REF_N)
        vs_n = slopes([(r.N, r.ms_per_step) for r in group if r.K == ref_k])
        vs_k = slopes([(r.K, r.ms_per_step) for r in group if r.N == ref_n])
        out.append(
            {
                "problem": problem,
                "implementation": impl,
                "slope_vs_N": vs_n[0],
                "tail_slope_vs_N": vs_n[1],
                "at_K": ref_k,
                "slope_vs_K": vs_k[0],
                "tail_slope_vs_K": vs_k[1],
                "at_N": ref_n,
            }
        )
    return out


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else format(value, spec)
    return str(value)


def markdown(headers: Sequence[str], table: Sequence[Sequence[str]], right: int) -> str:
    """A Markdown table; the first ``right`` columns left-aligned, the rest right-aligned."""
    align = [":--" if i < right else "--:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def results_table(rows: list[Row]) -> str:
    gpu = any(math.isfinite(r.device_peak_MB) for r in rows)
    headers = ["problem", "implementation", "N", "K", "particle_steps_per_s", "ms_per_step"]
    headers += ["peak_mem_MB"] + (["device_peak_MB"] if gpu else []) + ["ratio_vs_evosax"]
    table = []
    for r in rows:
        if r.error:
            table.append(
                [r.problem, r.implementation, str(r.N), str(r.K), f"failed: {r.error}"]
                + [""] * (len(headers) - 5)
            )
            continue
        cells = [r.problem, r.implementation, str(r.N), str(r.K)]
        cells += [fmt(r.particle_steps_per_s, ",.0f"), fmt(r.ms_per_step, ".4g")]
        cells += [fmt(r.peak_mem_MB, ".3f")] + ([fmt(r.device_peak_MB, ".1f")] if gpu else [])
        cells.append(fmt(r.ratio_vs_evosax, ".2f"))
        table.append(cells)
    return markdown(headers, table, right=2)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0]) if rows else []
    table = [[fmt(v, ".2f") for v in row.values()] for row in rows]
    return markdown(headers, table, right=2)


def write_csv(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(Row)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and peak memory of lopt's estimators vs evosax PES / NRES.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--estimators", nargs="+", default=["pes", "nres", "tes", "tbptt"], choices=LOPT_ESTIMATORS
    )
    parser.add_argument("--num-particles", nargs="+", type=int, default=[8, 32, 128, 512, 1024])
    parser.add_argument("--trunc-lengths", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument(
        "--problems", nargs="+", default=["lorenz", "lopt"], choices=["lorenz", "lopt"]
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="episode length T (default 2 max(K); every K must divide it)",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"ES noise scale (default per problem: {DEFAULT_SIGMA})",
    )
    parser.add_argument(
        "--config", default="configs/default.yaml", help="experiment config of the lopt problem"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls; median kept")
    parser.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="seconds one timed call should last (sets the steps per call)",
    )
    parser.add_argument("--max-steps", type=int, default=10_000, help="cap on steps per call")
    parser.add_argument("--no-evosax", action="store_true", help="skip the evosax rows")
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="lopt estimators with step_unlock=False (evosax's schedule) instead of True",
    )
    parser.add_argument(
        "--particle-chunk", type=int, default=None,
        help="lopt estimators unroll this many particles at a time (their particle_chunk; "
        "ES: must divide N / 2); default: all at once",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N {8, 32}, K {1, 10}, 2 repeats, 0.05 s calls",
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_particles, args.trunc_lengths = [8, 32], [1, 10]
        args.repeats, args.min_time, args.max_steps = 2, 0.05, 200
    if any(n < 2 or n % 2 for n in args.num_particles):
        parser.error("--num-particles must be even (antithetic pairs)")
    return args


def horizon_for(args: argparse.Namespace) -> int:
    horizon = args.horizon or 2 * max(args.trunc_lengths)
    bad = [k for k in args.trunc_lengths if horizon % k]
    if bad:
        raise SystemExit(f"horizon {horizon} is not a multiple of K = {bad} (evosax lockstep)")
    return horizon


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    horizon = horizon_for(args)
    if not args.no_evosax:
        try:
            import evosax.algorithms  # noqa: F401
        except ImportError as exc:  # e.g. a GPU image without it: keep the lopt rows
            print(f"evosax unavailable ({exc}): lopt rows only", file=sys.stderr)
            args.no_evosax = True
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}) x{jax.device_count()}, "
        f"jax {jax.__version__}, T = {horizon}, repeats = {args.repeats}"
    )
    rows = sweep(args, horizon)
    print()
    print(results_table(rows))
    print()
    print(scaling_table(scaling_rows([r for r in rows if not r.error])))
    if args.csv is not None:
        write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
