"""Run one (method, seed) of a study: meta-train and record the evaluation curve.

The outer loop is the meta-training step of :mod:`lopt.meta_train` (estimator +
optax outer optimizer, non-finite updates skipped), run ``evaluation.every`` steps (or
the method's ``eval_every``) at a time inside one jitted ``lax.scan`` so that nothing
syncs with the host between evaluations. Both chunk sizes (``every`` and the remainder)
are compiled ahead of time, so the wall-clock column measures training only: no
compilation, no evaluation.

Outputs (``out_dir``), written only when the run completes (atomic renames):

    curve.csv     one row per evaluation: outer_step, unroll_steps, wall_time,
                  eval_loss, train_loss (mean window loss since the last row),
                  grad_norm, skipped_updates, theta_<i> (low-dimensional theta only)
    theta.npz     final meta-parameters (+ .json with sha256 and the run's settings)
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.atomic import write_rows
from lopt.estimators import estimator_options, make_estimator
from lopt.meta_train import (
    KEY_ESTIMATOR_INIT,
    MetaState,
    meta_step_fn,
    outer_optimizer,
    particle_leaves,
)
from lopt.studies.config import MethodConfig, StudyConfig
from lopt.studies.systems import StudySystem, build_system

log = logging.getLogger(__name__)

CURVE_FIELDS = (
    "outer_step",
    "unroll_steps",
    "wall_time",
    "eval_loss",
    "train_loss",
    "grad_norm",
    "skipped_updates",
)
# Record theta coordinates in the curve when theta has at most this many entries.
MAX_THETA_COLUMNS = 8


def build_outer(method: MethodConfig) -> optax.GradientTransformation:
    """The method's outer optimizer: SGD/Adam with its step-decay schedule."""
    o = method.outer
    lr: Any = o.lr
    if o.lr_decay:
        lr = optax.piecewise_constant_schedule(o.lr, {int(k): float(v) for k, v in o.lr_decay.items()})
    update = optax.sgd(lr) if o.name == "sgd" else optax.adam(lr, b1=o.b1, b2=o.b2)
    return outer_optimizer(update, method.grad_clip)


def build_method(study: StudyConfig, method: MethodConfig, system: StudySystem):
    """``(estimator, outer optimizer)`` of a method over the study's system."""
    extra = estimator_options(
        method.estimator, noise_reuse_steps=method.noise_reuse_steps, loss_diff_clip=method.loss_diff_clip,
        window_loss=method.window_loss, particle_chunk=method.particle_chunk,
    )
    estimator = make_estimator(
        method.estimator,
        system.system,
        num_particles=method.num_particles,
        trunc_length=study.trunc_length(method),
        sigma=method.sigma,
        step_unlock=method.step_unlock,
        **extra,
    )
    return estimator, build_outer(method)


def particle_mesh_for(study: StudyConfig, method: MethodConfig) -> Any:
    """The ``particles`` mesh a run shards over, or None for one device.

    ``compute.devices`` local devices (:mod:`lopt.sharding`); None when that is one device,
    or when the method's particles do not split into whole antithetic pairs (TBPTT: whole
    particles) per device, which is logged: such a method runs on one device.
    """
    if study.compute.devices == 1:
        return None
    from lopt.sharding import particle_mesh

    mesh = particle_mesh(None if study.compute.devices == "all" else study.compute.devices, "compute.devices")
    n = mesh.devices.size
    per_device = n if method.estimator == "tbptt" else 2 * n
    if n == 1 or method.num_particles % per_device:
        if n > 1:
            log.warning(
                "%s: num_particles %d is not a multiple of %d (%s over %d devices): it runs on one device",
                method.name, method.num_particles, per_device,
                "particles" if method.estimator == "tbptt" else "antithetic pairs", n,
            )
        return None
    return mesh


def _theta_columns(theta: Any) -> list[float]:
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(theta))])
    return [float(v) for v in flat] if flat.size <= MAX_THETA_COLUMNS else []


def run_method(
    study: StudyConfig,
    method_name: str,
    seed: int,
    out_dir: str | Path,
    *,
    tracker: Any = None,
    progress: bool = False,
) -> Path:
    """Meta-train ``method_name`` with ``seed``; returns the path of ``curve.csv``."""
    from tqdm.auto import tqdm

    from lopt.checkpoint import save_meta_params

    method = study.method(method_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    system = build_system(study, seed)
    estimator, outer = build_method(study, method, system)
    key = jax.random.PRNGKey(seed)
    theta = system.theta0
    state = MetaState(
        theta, outer.init(theta), estimator.init(theta, jax.random.fold_in(key, KEY_ESTIMATOR_INIT), system.data), jnp.zeros([], jnp.int32)
    )
    step = meta_step_fn(estimator, outer, key)
    data = system.data

    def chunk(state: MetaState, data: Any, length: int):
        def body(s, _):
            s, metrics = step(s, data)
            return s, (metrics["meta_loss"], metrics["grad_norm"], metrics["skipped_updates"])

        state, (loss, gnorm, skipped) = jax.lax.scan(body, state, None, length=length)
        return state, (jnp.mean(loss), jnp.mean(gnorm), skipped[-1])

    jit_chunk = lambda n: jax.jit(functools.partial(chunk, length=n))
    mesh = particle_mesh_for(study, method)
    if mesh is not None:
        from lopt.sharding import jit_sharded, place, replicate, state_shardings

        shard = state_shardings(state, mesh, particle_leaves)
        state, data = place(state, shard), replicate(data, mesh)
        jit_chunk = lambda n: jit_sharded(functools.partial(chunk, length=n), shard, mesh)

    total = study.outer_steps_for(method)
    every = study.eval_every_for(method)
    lengths = sorted({min(every, total), total % every} - {0})
    compiled = {n: jit_chunk(n).lower(state, data).compile() for n in lengths}
    evaluate = jax.jit(system.evaluate)  # not timed; recompiles once for sharded inputs

    steps_per_estimate = estimator.unroll_steps
    theta_cols = _theta_columns(theta)
    fields = list(CURVE_FIELDS) + [f"theta_{i}" for i in range(len(theta_cols))]
    rows = [_row(0, 0, 0.0, evaluate(theta, data), np.nan, np.nan, 0, theta_cols)]
    wall, done = 0.0, 0
    bar = tqdm(total=total, desc=f"{study.name}/{method.name}/seed{seed}", disable=not progress)
    while done < total:
        n = min(every, total - done)
        t0 = time.perf_counter()
        state, (loss, gnorm, skipped) = jax.block_until_ready(compiled[n](state, data))
        wall += time.perf_counter() - t0
        done += n
        row = _row(done, done * steps_per_estimate, wall, evaluate(state.theta, data), loss, gnorm, skipped,
                   _theta_columns(state.theta))
        rows.append(row)
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if k != "outer_step"}, step=done)
        bar.update(n)
        bar.set_postfix(eval_loss=f"{row['eval_loss']:.4g}")
    bar.close()

    # curve.csv marks a finished run: removed before theta.npz is replaced, written last
    (out_dir / "curve.csv").unlink(missing_ok=True)
    save_meta_params(
        out_dir / "theta.npz",
        state.theta,
        {"study": study.name, "method": method.model_dump(mode="json"),
         "seed": seed, "outer_steps": total, "unroll_steps": total * steps_per_estimate},
    )
    return write_rows(out_dir / "curve.csv", fields, rows)


def _row(step, unroll, wall, eval_loss, loss, gnorm, skipped, theta_cols) -> dict[str, float]:
    row = {
        "outer_step": int(step),
        "unroll_steps": int(unroll),
        "wall_time": round(float(wall), 4),
        "eval_loss": float(eval_loss),
        "train_loss": float(loss),
        "grad_norm": float(gnorm),
        "skipped_updates": int(skipped),
    }
    row.update({f"theta_{i}": v for i, v in enumerate(theta_cols)})
    return row
