"""Meta-training: estimator + optax outer optimizer, checkpointed, resumable, tracked.

One outer step is a single jitted pure function

    meta_step(MetaState, data) -> (MetaState, metrics)

that draws its PRNG key as ``fold_in(PRNGKey(seed), step)``, asks the estimator for a
meta-gradient over one truncation window of every particle, clips it by global norm
and applies the outer optimizer (Adam by default). Because the key is a function of
the step and the state holds everything else, a run resumed from a checkpoint
computes bit-identical meta-parameters on the same machine.

Outputs (``out_dir``):
    checkpoints/        run state: orbax steps of the whole MetaState every
                        ``checkpoint_every``, ``fingerprint.json``, and
                        ``metrics.live.csv``, the per-step log appended as training
                        goes (kept with the checkpoints it belongs to)
    metrics.csv         final: one row per outer step (step, meta_loss, grad_norm, ...)
    model_card.md       final: architecture card + how it was meta-trained
    meta_params.npz     final: meta-parameters (+ .json with sha256 and config)

The final files are written only when training completes, so a pipeline that sees them
sees a finished run. A resume continues only from checkpoints whose fingerprint (every
config field that changes the computation; ``outer_steps`` and logging cadence excluded,
so a run can be extended) matches; stale checkpoints are moved aside, never deleted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.config import ExperimentConfig
from lopt.estimators import Estimator, estimator_options, make_estimator, multi_task
from lopt.optimizers import LearnedOptimizer
from lopt.optimizers.pretrained import from_config as lopt_from_config
from lopt.tasks import build_task
from lopt.tasks.training import InnerTraining

METRIC_FIELDS = (
    "step",
    "meta_loss",
    "grad_norm",
    "episodes_done",
    "diverged",
    "skipped_updates",
    "wall_time",
)


LIVE_METRICS = "metrics.live.csv"

# fold_in tags of a run's PRNG key: one branch per use. (``split(key)[i]`` equals
# ``fold_in(key, i)`` under JAX's partitionable threefry, so two uses must never take
# split/fold_in index i of the same key.)
KEY_THETA, KEY_STEPS, KEY_ESTIMATOR_INIT = 0, 1, 2


class MetaState(NamedTuple):
    """Everything the outer loop carries; exactly what a checkpoint stores."""

    theta: Any
    opt_state: Any
    estimator_state: Any
    step: jax.Array  # int32 scalar: outer steps completed


class MetaTrainer(NamedTuple):
    """The pieces of one meta-training configuration, built once."""

    lopt: LearnedOptimizer
    estimator: Estimator
    outer_opt: optax.GradientTransformation
    data: Any
    key: jax.Array
    normalize_grad: bool = False

    def init(self) -> MetaState:
        # one compiled program: op by op, the ~70 small initialisation ops each compile
        # on their own (2-3 s of every CLI start on CPU)
        return jax.jit(self._init)(self.key, self.data)

    def _init(self, key: jax.Array, data: Any) -> MetaState:
        # Key layout (see meta_step_fn): 0 -> theta, 1 -> every outer step, 2 -> estimator
        # init. Disjoint branches, so no init draw can repeat a step's draw.
        theta = self.lopt.init(jax.random.fold_in(key, KEY_THETA))
        est_state = self.estimator.init(theta, jax.random.fold_in(key, KEY_ESTIMATOR_INIT), data)
        return MetaState(theta, self.outer_opt.init(theta), est_state, jnp.zeros([], jnp.int32))


def build_trainer(cfg: ExperimentConfig) -> MetaTrainer:
    """Build the learned optimizer, inner system, estimator and outer optimizer."""
    mt = cfg.meta_train
    lopt = lopt_from_config(cfg.lopt)
    extra = estimator_options(
        mt.estimator, noise_reuse_steps=mt.noise_reuse_steps, loss_diff_clip=mt.loss_diff_clip,
        particle_chunk=mt.particle_chunk,
    )
    estimators, datas = [], []
    for task_cfg in mt.tasks():
        task, data = build_task(task_cfg, cfg.data.root, precision=cfg.compute.precision, data_cfg=cfg.data)
        system = InnerTraining(task, lopt.to_optax, mt.horizon, mt.meta_loss_split)
        estimators.append(
            make_estimator(
                mt.estimator,
                system,
                num_particles=mt.num_particles,
                trunc_length=mt.trunc_length,
                sigma=mt.sigma,
                step_unlock=mt.step_unlock,
                **extra,
            )
        )
        datas.append(data)
    if len(estimators) == 1:
        estimator, data = estimators[0], datas[0]
    else:  # a task family: one estimator per drawn task, gradients averaged
        estimator, data = multi_task(estimators), tuple(datas)
    outer = {"adam": optax.adam, "sgd": optax.sgd}[mt.outer_optimizer](mt.outer_lr)
    outer_opt = outer_optimizer(outer, mt.grad_clip)
    return MetaTrainer(lopt, estimator, outer_opt, data, jax.random.PRNGKey(cfg.seed), mt.normalize_grad)


def outer_optimizer(
    update: optax.GradientTransformation, grad_clip: float | None
) -> optax.GradientTransformation:
    """``update`` after an optional global-norm clip, skipping non-finite gradients.

    A non-finite meta-gradient (a diverged unroll) skips the update instead of
    poisoning theta; optax counts the skips in its state (``total_notfinite``).
    """
    chain = [optax.clip_by_global_norm(grad_clip)] if grad_clip is not None else []
    return optax.apply_if_finite(optax.chain(*chain, update), max_consecutive_errors=1_000_000)


def meta_step_fn(
    estimator: Estimator,
    outer_opt: optax.GradientTransformation,
    key: jax.Array,
    normalize_grad: bool = False,
):
    """The pure outer step ``(MetaState, data) -> (MetaState, metrics)`` (not jitted).

    ``outer_opt`` must come from :func:`outer_optimizer` (its state counts skipped
    non-finite updates). The step's key is ``fold_in(fold_in(key, KEY_STEPS), step)``;
    initialisation draws from the other branches of ``key`` (:data:`KEY_THETA`,
    :data:`KEY_ESTIMATOR_INIT`), never from a step's.
    """

    def meta_step(state: MetaState, data: Any) -> tuple[MetaState, dict[str, jax.Array]]:
        step_key = jax.random.fold_in(jax.random.fold_in(key, KEY_STEPS), state.step)
        grad, est_state, metrics = estimator.estimate(state.theta, state.estimator_state, step_key, data)
        grad_norm = optax.global_norm(grad)
        if normalize_grad:
            # direction only: the outer learning rate sets the step length
            grad = jax.tree.map(lambda g: g / (grad_norm + 1e-12), grad)
        updates, opt_state = outer_opt.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        metrics = dict(metrics, grad_norm=grad_norm, skipped_updates=opt_state.total_notfinite)
        return MetaState(theta, opt_state, est_state, state.step + 1), metrics

    return meta_step


def make_meta_step(trainer: MetaTrainer, mesh: Any = None):
    """The jitted outer step ``(MetaState, data) -> (MetaState, metrics)``.

    With a ``mesh`` (:func:`lopt.sharding.particle_mesh`) the estimator state's particle
    axis is split over its devices and everything else replicated; pass the state through
    :func:`meta_state_shardings` / :func:`lopt.sharding.place` first.
    """
    fn = meta_step_fn(trainer.estimator, trainer.outer_opt, trainer.key, trainer.normalize_grad)
    if mesh is None:
        return jax.jit(fn)
    from lopt.sharding import jit_sharded

    return jit_sharded(fn, meta_state_shardings(trainer, mesh), mesh)


def meta_state_shardings(trainer: MetaTrainer, mesh: Any) -> Any:
    """Shardings of the :class:`MetaState`: particle / pair axes of the estimator state split."""
    from lopt.sharding import state_shardings

    return state_shardings(jax.eval_shape(trainer.init), mesh, particle_leaves)


def particle_leaves(state: MetaState) -> MetaState:
    """Which parts of a :class:`MetaState` have a leading particle / pair axis: the
    estimator state's (for :func:`lopt.sharding.state_shardings`)."""
    return MetaState(False, False, True, False)


# Fields that do not change what a step computes: a checkpoint stays valid across them.
# `devices` only reorders floating-point sums: a run may resume on more or fewer devices;
# `particle_chunk` only changes how many particles are unrolled at once.
_NON_FINGERPRINT = {"outer_steps", "checkpoint_every", "max_to_keep", "log_every", "devices", "particle_chunk"}


def fingerprint(cfg: ExperimentConfig) -> str:
    """Hash of every config field that affects the meta-training computation."""
    resolved = cfg.to_dict()
    meta = {k: v for k, v in resolved["meta_train"].items() if k not in _NON_FINGERPRINT}
    spec = {"seed": resolved["seed"], "data": resolved["data"], "lopt": resolved["lopt"], "meta_train": meta}
    if cfg.compute.precision != "float32":  # absent when float32: older checkpoints stay valid
        spec["precision"] = cfg.compute.precision
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# How the estimator state orders antithetic copies (lopt.unroll.pair_up). Checkpoints
# whose stamp names no layout were written with pair m at particles m and m + P/2; their
# estimator state would pair the wrong particles, so a resume moves them aside like those
# of another config (the stamp's fingerprint is unchanged: the computation is the same).
PARTICLE_LAYOUT = "pairs-adjacent"


def _stamped_identity(stamp: dict[str, Any]) -> str:
    """The fingerprint a checkpoint directory's stamp stands for, its layout included."""
    layout = stamp.get("particle_layout", "pairs-halves")
    return stamp["fingerprint"] if layout == PARTICLE_LAYOUT else f"{stamp['fingerprint']}-{layout}"


def _barrier(name: str) -> None:
    """Wait for every process of a multi-host job (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _prepare_checkpoint_dir(ckpt_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
    """Refuse to overwrite, or move aside checkpoints of a different configuration.

    A resume under a changed config moves the old checkpoints to
    ``checkpoints.stale-<their fingerprint>`` and, when an earlier run of the current
    config was moved aside that way, puts it back so the resume continues it. The
    published files (:data:`PUBLISHED`) move with their run's checkpoints (into its
    ``published/`` folder) and come back with them. Nothing is deleted: a name already
    taken gets a numbered suffix. Every process reads (so all
    raise alike); only process 0 changes the directory.
    """
    stamp = ckpt_dir / "fingerprint.json"
    current = fingerprint(cfg)
    # a stamp or live log alone (a run stopped before its first checkpoint) holds nothing to resume
    exists = ckpt_dir.exists() and any(p.name not in (stamp.name, LIVE_METRICS) for p in ckpt_dir.iterdir())
    if exists and not resume:
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints; pass --resume to continue or delete it"
        )
    legacy_log = ckpt_dir.parent / LIVE_METRICS  # where runs before the log moved kept it
    if exists and legacy_log.exists() and not (ckpt_dir / LIVE_METRICS).exists() and jax.process_index() == 0:
        legacy_log.replace(ckpt_dir / LIVE_METRICS)
    stamped = json.loads(stamp.read_text()) if stamp.exists() else {}
    previous = _stamped_identity(stamped) if stamped else "unknown"
    _barrier("lopt-checkpoint-dir-read")
    if jax.process_index() == 0:
        if exists and previous != current:
            stale = _free_name(ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{previous}"))
            ckpt_dir.rename(stale)
            # the published files of that run go with it: until this run publishes, nothing
            # in out_dir may pass for this config's optimizer (e.g. `lopt evaluate`'s default)
            _move_published(ckpt_dir.parent, stale / PUBLISHED_ASIDE)
            earlier = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{current}")
            if earlier.exists():
                earlier.rename(ckpt_dir)
                _move_published(ckpt_dir / PUBLISHED_ASIDE, ckpt_dir.parent)
                warnings.warn(f"config changed since {ckpt_dir} was written; moved it to {stale} and "
                              f"resuming this config's earlier run from {earlier}")
            elif stamped.get("fingerprint") == current:  # same config, older layout
                warnings.warn(f"{ckpt_dir} was written by an older lopt with another particle layout, which "
                              f"cannot resume; moved it to {stale} and starting afresh")
            else:
                warnings.warn(f"config changed since {ckpt_dir} was written; moved it to {stale} and starting afresh")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"fingerprint": current, "experiment": cfg.name, "particle_layout": PARTICLE_LAYOUT}))
    _barrier("lopt-checkpoint-dir-ready")


# What a finished run publishes next to its checkpoints (see :func:`_publish`).
PUBLISHED = ("meta_params.npz", "meta_params.npz.json", "metrics.csv", "model_card.md")
PUBLISHED_ASIDE = "published"  # their folder inside a moved-aside checkpoint directory


def _move_published(src: Path, dst: Path) -> None:
    """Move whichever :data:`PUBLISHED` files ``src`` holds into ``dst`` (removing ``src`` if
    it is a now-empty ``published`` folder)."""
    files = [src / name for name in PUBLISHED if (src / name).exists()]
    if files:
        dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.replace(dst / f.name)
    if src.name == PUBLISHED_ASIDE and src.is_dir() and not any(src.iterdir()):
        src.rmdir()


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _complete(row: dict[str | None, str | None]) -> bool:
    """A row with as many fields as the header and an integer step.

    Blank fields are whole: a log begun before a column existed (``diverged``,
    ``skipped_updates``) gets it empty when first rewritten, and those rows
    must survive every later resume. Torn writes are caught by
    :func:`_whole_lines` (unterminated last line) and here (short rows).
    """
    return None not in row and None not in row.values() and (row.get("step") or "").isdigit()


def _whole_lines(text: str) -> str:
    """``text`` without an unterminated last line (a kill mid-write can tear it anywhere)."""
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


class _MetricsLog:
    """Append-only CSV of per-step metrics that survives kills and resumes cleanly."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step > 0 and path.exists():
            with open(path, newline="") as f:
                lines = io.StringIO(_whole_lines(f.read()))
            rows = [r for r in csv.DictReader(lines) if _complete(r) and int(r["step"]) <= resume_step]
        self.last_wall_time = float(rows[-1]["wall_time"]) if rows else 0.0
        # Rewrite (dropping rows past the checkpoint a killed run may have logged).
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        self._file = open(path, "a", newline="")  # noqa: SIM115 -- held open for the run, closed in close()
        # extra metrics (a task family's per-task meta_loss/<i>) go to the tracker only
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_FIELDS, extrasaction="ignore")

    def write(self, rows: list[dict[str, float]]) -> None:
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def meta_train(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    tracker: Any = None,
    progress: bool = True,
) -> MetaState:
    """Run (or resume) meta-training; returns the final :class:`MetaState`.

    Args:
        cfg: validated experiment config.
        out_dir: directory for checkpoints, metrics and the final meta-parameters.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints`` if any;
            without it an existing checkpoint directory is an error (never overwrite).
        tracker: optional :class:`lopt.tracking.Tracker` receiving scalars.
        progress: show a tqdm progress bar (steps, meta-loss, ETA).
    """
    from tqdm.auto import tqdm

    from lopt.checkpoint import Checkpointer

    mt = cfg.meta_train
    out_dir = Path(out_dir)
    primary = jax.process_index() == 0  # the one process that writes files and tracks
    if primary:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    # everything that can refuse this config (data, devices) before the checkpoint
    # directory is touched: a refused start must not leave a stamp that blocks the next
    trainer = build_trainer(cfg)
    mesh = None
    if mt.devices != 1 or jax.process_count() > 1:
        from lopt.sharding import particle_mesh

        mesh = particle_mesh(None if mt.devices == "all" else mt.devices)
        _check_split(mt.num_particles, mesh.devices.size)
    _prepare_checkpoint_dir(ckpt_dir, cfg, resume)
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
    log = _MetricsLog(ckpt_dir / LIVE_METRICS, start) if primary else None
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
                rows = _flush(pending, wall_before + time.perf_counter() - t0)
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
    if primary:
        _publish(out_dir, cfg, trainer, state, time.perf_counter() - t0)
    _barrier("lopt-published")
    return state


def _check_split(num_particles: int, num_devices: int) -> None:
    if num_particles % (2 * num_devices):
        from lopt.runtime import SetupError

        raise SetupError(
            f"meta_train.num_particles ({num_particles}) must be a multiple of 2 x the "
            f"{num_devices} devices of the run (all processes) so antithetic pairs split evenly"
        )


def _publish(out_dir: Path, cfg: ExperimentConfig, trainer: MetaTrainer, state: MetaState, wall: float) -> None:
    """Publish the finished run: the log and model card first, the meta-parameters last."""
    from lopt.checkpoint import save_meta_params

    mt = cfg.meta_train
    tmp = out_dir / ".metrics.csv.tmp"
    shutil.copyfile(out_dir / "checkpoints" / LIVE_METRICS, tmp)
    tmp.replace(out_dir / "metrics.csv")
    _write_model_card(out_dir / "model_card.md", trainer.lopt, cfg, int(state.step))
    save_meta_params(
        out_dir / "meta_params.npz",
        state.theta,
        {
            "experiment": cfg.name,
            "config": cfg.to_dict(),  # the resolved experiment config (every default filled)
            "optimizer": cfg.lopt.model_dump(),
            "estimator": mt.estimator,
            "meta_train_tasks": [t.model_dump() for t in mt.tasks()],
            "outer_steps": int(state.step),
            "num_meta_params": sum(int(x.size) for x in jax.tree.leaves(state.theta)),
            "compute": {
                # this process's share when resumed; metrics.csv's wall_time is the total
                "wall_seconds_this_process": round(wall, 1),
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "precision": cfg.compute.precision,
                "inner_steps_simulated": int(state.step) * trainer.estimator.unroll_steps,
            },
        },
    )


def _write_model_card(path: Path, lopt: LearnedOptimizer, cfg: ExperimentConfig, steps: int) -> None:
    """The architecture's card plus how it was meta-trained (estimator, tasks, steps)."""
    from lopt.optimizers import model_card_markdown

    mt = cfg.meta_train
    tasks = "; ".join(
        ", ".join(f"{k}={v}" for k, v in t.model_dump().items()) for t in mt.tasks()
    )
    text = model_card_markdown(lopt.card()) + (
        f"\nMeta-trained by experiment `{cfg.name}`: {mt.estimator.upper()}, "
        f"{mt.num_particles} particles per task, K = {mt.trunc_length}, T = {mt.horizon}, "
        f"sigma = {mt.sigma}, {steps} outer steps of {mt.outer_optimizer} (lr {mt.outer_lr}).\n"
        f"Meta-training tasks: {tasks}.\n"
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _flush(pending: list[dict[str, Any]], wall: float) -> list[dict[str, float]]:
    rows = []
    for item in jax.device_get(pending):
        row = {k: float(v) for k, v in item.items() if k != "step"}
        rows.append({"step": int(item["step"]), **row, "wall_time": round(wall, 3)})
    return rows
