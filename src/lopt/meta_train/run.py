"""The outer loop: build, resume, step, log, checkpoint, publish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax

from lopt.config import ExperimentConfig
from lopt.meta_train.log import MetricsLog, rows_of
from lopt.meta_train.run_dir import (
    LIVE_METRICS,
    barrier,
    checkpoint_dir,
    is_published,
    prepare_checkpoint_dir,
    publish,
    seed_checkpoint_dir,
)
from lopt.meta_train.step import MetaState, build_trainer, make_meta_step, meta_state_shardings


def meta_train(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    tracker: Any = None,
    progress: bool = True,
    meta_seed: int | None = None,
) -> MetaState:
    """Run (or resume) meta-training; returns the final :class:`MetaState`.

    Args:
        cfg: validated experiment config.
        out_dir: directory for checkpoints, metrics and the final meta-parameters.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` (or
            ``<compute.checkpoint_root>/<name>``) if any; without it an existing checkpoint
            directory is an error (never overwrite).
        tracker: optional :class:`lopt.tracking.Tracker` receiving scalars.
        progress: show a tqdm progress bar (steps, meta-loss, ETA).
        meta_seed: meta-train from this seed, one of ``cfg.meta_seeds()``, instead of
            ``cfg.seed`` (the published files record it as the config's ``seed``).
    """
    from tqdm.auto import tqdm

    from lopt.checkpoint import Checkpointer

    mt = cfg.meta_train
    out_dir = Path(out_dir)
    primary = jax.process_index() == 0  # the one process that writes files and tracks
    if primary:
        out_dir.mkdir(parents=True, exist_ok=True)
    # the directory from the experiment's config (which knows its own seed), then the seed's run
    ckpt_dir = checkpoint_dir(cfg, out_dir, meta_seed)
    if meta_seed is not None:
        cfg = cfg.with_meta_seed(meta_seed)
    # everything that can refuse this config (data, devices) before the checkpoint
    # directory is touched: a refused start must not leave a stamp that blocks the next
    trainer = build_trainer(cfg)
    mesh = None
    if mt.devices != 1 or jax.process_count() > 1:
        from lopt.sharding import particle_mesh

        mesh = particle_mesh(None if mt.devices == "all" else mt.devices)
        _check_split(mt.num_particles, mesh.devices.size)
    if resume:
        seed_checkpoint_dir(ckpt_dir, cfg, out_dir)
    prepare_checkpoint_dir(ckpt_dir, cfg, resume, out_dir)
    meta_step = make_meta_step(trainer, mesh)
    state = trainer.init()
    data = trainer.data
    if mesh is not None:
        from lopt.sharding import place, replicate

        # placed before a restore, so orbax restores straight into the sharded layout
        state = place(state, meta_state_shardings(trainer, mesh))
        data = replicate(data, mesh)
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=mt.max_to_keep)
    start = 0
    latest = checkpointer.latest_step() if resume else None
    if latest is not None and latest > mt.outer_steps:
        # outer_steps is outside the fingerprint so that a run can be extended; shortening
        # one below its checkpoints would otherwise publish the longer run under this config
        # (or, from an earlier kept step, re-save steps orbax already holds)
        kept = sorted(checkpointer.all_steps())
        checkpointer.close()
        # FileExistsError like the no-resume refusal above: existing files stand in the way,
        # and the CLI turns it into a one-line error
        raise FileExistsError(
            f"{ckpt_dir} holds checkpoints up to step {latest} (kept: {kept}), beyond "
            f"meta_train.outer_steps = {mt.outer_steps}: set outer_steps >= {latest} to continue "
            f"that run, or move {ckpt_dir} aside to meta-train {mt.outer_steps} steps afresh"
        )
    if latest is not None:
        # a step damaged on disk is set aside beside the stale ones, never deleted
        try:
            _, state = checkpointer.restore_newest_readable(state, ckpt_dir.with_name(f"{ckpt_dir.name}.unreadable"))
        except BaseException:
            checkpointer.close()
            raise
        start = int(state.step)
    log = MetricsLog(ckpt_dir / LIVE_METRICS, start) if primary else None
    pending: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    # metrics' wall_time is cumulative over resumes: continue from the last logged row
    wall_before = log.last_wall_time if log is not None else 0.0
    bar = tqdm(total=mt.outer_steps, initial=start, desc=f"meta-train {cfg.name}", disable=not (progress and primary))
    try:
        for step in range(start, mt.outer_steps):
            state, metrics = meta_step(state, data)
            if mesh is not None:
                # Many queued multi-device calls can deadlock XLA's collectives on fake CPU
                # devices (../shared/notes/stack.md); one host sync per outer step avoids it.
                jax.block_until_ready(state.step)
            pending.append(dict(metrics, step=step + 1))
            done = step + 1
            checkpoint_due = done % mt.checkpoint_every == 0 or done == mt.outer_steps
            # rows up to a checkpoint are on disk before it is, so a resume loses none
            if done % mt.log_every == 0 or checkpoint_due:
                rows = rows_of(pending, wall_before + time.perf_counter() - t0)
                pending = []
                if log is not None:
                    log.write(rows)
                if tracker is not None:
                    for row in rows:
                        tracker.log({f"meta/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
                bar.set_postfix(meta_loss=f"{rows[-1]['meta_loss']:.4f}")
            bar.update(1)
            if checkpoint_due:
                checkpointer.save(done, state)  # every process: orbax writes each array once
    finally:
        bar.close()
        if log is not None:
            log.close()
        checkpointer.close()
    # a resume with no steps left keeps an intact publication (see is_published)
    if primary and not (start == mt.outer_steps and is_published(out_dir, cfg, start)):
        publish(out_dir, cfg, trainer, state, time.perf_counter() - t0, ckpt_dir)
    barrier("lopt-published")
    return state


def _check_split(num_particles: int, num_devices: int) -> None:
    if num_particles % (2 * num_devices):
        from lopt.runtime import SetupError

        raise SetupError(
            f"meta_train.num_particles ({num_particles}) must be a multiple of 2 x the "
            f"{num_devices} devices of the run (all processes) so antithetic pairs split evenly"
        )
