"""The run directory: which checkpoints belong to this configuration, and what a finished
run publishes beside them.

``checkpoints/fingerprint.json`` stamps the directory with :func:`fingerprint`; a resume
under another config moves the old run (and its published files) aside, never deletes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax

from lopt.atomic import replace_with, write_text
from lopt.config import ExperimentConfig
from lopt.meta_train.step import MetaState, MetaTrainer
from lopt.optimizers import LearnedOptimizer

LIVE_METRICS = "metrics.live.csv"

# `devices` only reorders floating-point sums: a run may resume on more or fewer devices;
# `particle_chunk` only changes how many particles are unrolled at once.
_NON_FINGERPRINT = {"outer_steps", "checkpoint_every", "max_to_keep", "log_every", "devices", "particle_chunk"}


def fingerprint(cfg: ExperimentConfig) -> str:
    """Hash of every config field that affects the meta-training computation.

    ``data.root`` is left out: it says where the prepared datasets are, not what they hold
    (that follows from the rest of ``data`` and the tasks), so a run may resume with its
    data moved, e.g. to a node's scratch disk through ``--data-root`` or a storage plugin.
    """
    return _fingerprint(cfg, with_root=False)


def _fingerprint(cfg: ExperimentConfig, with_root: bool) -> str:
    resolved = cfg.to_dict()
    meta = {k: v for k, v in resolved["meta_train"].items() if k not in _NON_FINGERPRINT}
    data = {k: v for k, v in resolved["data"].items() if with_root or k != "root"}
    spec = {"seed": resolved["seed"], "data": data, "lopt": resolved["lopt"], "meta_train": meta}
    if cfg.compute.precision != "float32":  # absent when float32: older checkpoints stay valid
        spec["precision"] = cfg.compute.precision
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _legacy_fingerprint(cfg: ExperimentConfig) -> str:
    """The fingerprint lopt before 2026-12-07 gave ``cfg``: it hashed ``data.root`` too.

    A stamp holding it (with the root the run now reads) stands for this config, so
    checkpoints written by that lopt still resume; the resume re-stamps them.
    """
    return _fingerprint(cfg, with_root=True)


# How the estimator state orders antithetic copies (lopt.unroll.pair_up). Checkpoints
# whose stamp names no layout were written with pair m at particles m and m + P/2; their
# estimator state would pair the wrong particles, so a resume moves them aside like those
# of another config (the stamp's fingerprint is unchanged: the computation is the same).
PARTICLE_LAYOUT = "pairs-adjacent"


def _read_stamp(path: Path) -> dict[str, Any]:
    """The checkpoint directory's stamp, or ``{}`` when it is absent or unreadable (edited
    by hand, or torn by a kill before stamps were written atomically)."""
    try:
        stamped = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stamped if isinstance(stamped, dict) and isinstance(stamped.get("fingerprint"), str) else {}


def _stamped_identity(stamp: dict[str, Any], cfg: ExperimentConfig) -> str:
    """The fingerprint a checkpoint directory's stamp stands for, its layout included
    (``cfg``'s own when the stamp holds the older lopt's fingerprint of ``cfg``)."""
    layout = stamp.get("particle_layout", "pairs-halves")
    fp = fingerprint(cfg) if stamp["fingerprint"] == _legacy_fingerprint(cfg) else stamp["fingerprint"]
    return fp if layout == PARTICLE_LAYOUT else f"{fp}-{layout}"


def _holds_checkpoints(ckpt_dir: Path) -> bool:
    """Whether ``ckpt_dir`` holds anything to resume: a stamp or live log alone (a run stopped
    before its first checkpoint) does not, nor does a temporary file a kill left behind
    (lopt.atomic's hidden ``.<name>.tmp``)."""
    def holds_nothing(p: Path) -> bool:
        return p.name in ("fingerprint.json", LIVE_METRICS) or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file())

    return ckpt_dir.exists() and not all(holds_nothing(p) for p in ckpt_dir.iterdir())


def barrier(name: str) -> None:
    """Wait for every process of a multi-host job (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def checkpoint_dir(cfg: ExperimentConfig, out_dir: Path, meta_seed: int | None = None) -> Path:
    """Where the run keeps its live checkpoints: ``out_dir/checkpoints``, or
    ``<compute.checkpoint_root>/<name>`` when the job's own directory does not outlive it
    (``<name>.seed<S>`` for a meta-seed other than the config's ``seed``: the experiment's
    meta-seeds never share a directory, and no experiment name holds a ".")."""
    root = cfg.compute.checkpoint_root
    if root is None:
        return out_dir / "checkpoints"
    return Path(root) / (cfg.name if meta_seed in (None, cfg.seed) else f"{cfg.name}.seed{meta_seed}")


def seed_checkpoint_dir(ckpt_dir: Path, cfg: ExperimentConfig, out_dir: Path) -> None:
    """Start an empty ``compute.checkpoint_root`` run from ``out_dir/checkpoints`` when that
    holds this config's run (one trained before the setting was on, or a pulled release),
    so turning the setting on resumes the run instead of restarting it from step 0.

    The copy goes to a hidden sibling first and is renamed into place, so a kill mid-copy
    leaves nothing a resume would take for checkpoints. Only process 0 copies.
    """
    local = out_dir / "checkpoints"
    if ckpt_dir == local:
        return
    if jax.process_index() == 0 and not _holds_checkpoints(ckpt_dir) and _holds_checkpoints(local):
        stamped = _read_stamp(local / "fingerprint.json")
        if stamped and _stamped_identity(stamped, cfg) == fingerprint(cfg):
            staging = ckpt_dir.with_name(f".{ckpt_dir.name}.seeding")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(local, staging)
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # a stamp or log alone at most (checked above)
            staging.rename(ckpt_dir)
            warnings.warn(f"{ckpt_dir} was empty; copied this config's run from {local} to resume it")
    barrier("lopt-checkpoint-dir-seeded")


def prepare_checkpoint_dir(ckpt_dir: Path, cfg: ExperimentConfig, resume: bool, out_dir: Path | None = None) -> None:
    """Refuse to overwrite, or move aside checkpoints of a different configuration.

    A resume under a changed config moves the old checkpoints to
    ``checkpoints.stale-<their fingerprint>`` and, when an earlier run of the current
    config was moved aside that way, puts it back so the resume continues it (also when
    ``ckpt_dir`` holds no checkpoints: a kill may have cut the move back short). The
    published files (:data:`PUBLISHED`, in ``out_dir``: by default ``ckpt_dir``'s parent)
    move with their run's checkpoints (into its ``published/`` folder) and come back with
    them. Nothing is deleted: a name already taken gets a numbered suffix. Every process
    reads (so all raise alike); only process 0 changes the directory.
    """
    out_dir = ckpt_dir.parent if out_dir is None else out_dir
    stamp = ckpt_dir / "fingerprint.json"
    current = fingerprint(cfg)
    exists = _holds_checkpoints(ckpt_dir)
    if exists and not resume:
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints; pass --resume to continue or delete it"
        )
    legacy_log = out_dir / LIVE_METRICS  # where runs before the log moved kept it
    if exists and legacy_log.exists() and not (ckpt_dir / LIVE_METRICS).exists() and jax.process_index() == 0:
        shutil.move(legacy_log, ckpt_dir / LIVE_METRICS)  # ckpt_dir may be on another disk
    stamped = _read_stamp(stamp)
    previous = _stamped_identity(stamped, cfg) if stamped else "unknown"  # unknown: moved aside, never resumed
    legacy = _legacy_fingerprint(cfg)
    barrier("lopt-checkpoint-dir-read")
    if jax.process_index() == 0:
        earlier = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{current}")
        if not earlier.exists():  # moved aside by a run of another config under the older lopt
            earlier = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{legacy}")
        moved_aside = exists and previous != current
        # this config's earlier run, moved aside by a run of another config; also when a kill
        # cut short the move that puts it back (no checkpoints/ then, or one holding nothing)
        restore = resume and earlier.exists() and (moved_aside or not exists)
        if moved_aside:
            stale = _free_name(ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{previous}"))
            # the published files of that run go with it: until this run publishes, nothing
            # in out_dir may pass for this config's optimizer (e.g. `lopt evaluate`'s default).
            # Into its directory first, then one rename: a kill between the two leaves them with
            # their checkpoints, which the next resume moves aside together.
            _move_published(out_dir, ckpt_dir / PUBLISHED_ASIDE)
            ckpt_dir.rename(stale)
        elif restore and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # a stamp or log alone: nothing to resume (see _holds_checkpoints)
        if restore:
            earlier.rename(ckpt_dir)  # its published files come back out below
            why = (f"config changed since {ckpt_dir} was written; moved it to {stale}" if moved_aside
                   else f"{ckpt_dir} held no checkpoints")
            warnings.warn(f"{why}; resuming this config's earlier run from {earlier}")
        elif moved_aside and not stamped:
            warnings.warn(f"{ckpt_dir} has no readable {stamp.name}, so its checkpoints cannot be matched "
                          f"to a config; moved it to {stale} and starting afresh")
        elif moved_aside and stamped.get("fingerprint") in (current, legacy):  # same config, older layout
            warnings.warn(f"{ckpt_dir} was written by an older lopt with another particle layout, which "
                          f"cannot resume; moved it to {stale} and starting afresh")
        elif moved_aside:
            warnings.warn(f"config changed since {ckpt_dir} was written; moved it to {stale} and starting afresh")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # this config's run, put back now or earlier (a kill may have cut the move short)
        _move_published(ckpt_dir / PUBLISHED_ASIDE, out_dir)
        write_text(stamp, json.dumps({"fingerprint": current, "experiment": cfg.name, "particle_layout": PARTICLE_LAYOUT}))
    barrier("lopt-checkpoint-dir-ready")


# What a finished run publishes next to its checkpoints (see :func:`publish`).
PUBLISHED = ("meta_params.npz", "meta_params.npz.json", "metrics.csv", "model_card.md")
PUBLISHED_ASIDE = "published"  # their folder inside a moved-aside checkpoint directory


def _move_published(src: Path, dst: Path) -> None:
    """Move whichever :data:`PUBLISHED` files ``src`` holds into ``dst`` (removing ``src`` if
    it is a now-empty ``published`` folder)."""
    files = [src / name for name in PUBLISHED if (src / name).exists()]
    if files:
        dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.move(f, dst / f.name)  # a rename, unless compute.checkpoint_root is on another disk
    if src.name == PUBLISHED_ASIDE and src.is_dir() and not any(src.iterdir()):
        src.rmdir()


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def is_published(out_dir: Path, cfg: ExperimentConfig, steps: int) -> bool:
    """Whether ``out_dir`` already holds exactly what :func:`publish` would write for this
    config's run at ``steps`` outer steps: every published file, metadata naming that step
    count and the resolved config, and the weights its sha256 names. A ``--resume`` of a
    finished run then leaves them untouched, so Snakemake sees no newer output to re-run
    evaluation from (and the recorded wall time is not overwritten with 0)."""
    from lopt.checkpoint import sha256_file

    if not all((out_dir / name).is_file() for name in PUBLISHED):
        return False
    try:
        meta = json.loads((out_dir / "meta_params.npz.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("outer_steps") == steps
        and meta.get("config") == json.loads(json.dumps(cfg.to_dict()))
        and meta.get("sha256") == sha256_file(out_dir / "meta_params.npz")
    )


def publish(
    out_dir: Path, cfg: ExperimentConfig, trainer: MetaTrainer, state: MetaState, wall: float, ckpt_dir: Path | None = None
) -> None:
    """Publish the finished run: the log and model card first, the meta-parameters last.

    The metadata ``meta_params.npz.json`` is the set's completion mark: removed first and
    written last, so a kill while republishing (an extended resume) leaves no old weights
    beside the new log and card that a loader would accept.
    """
    from lopt.checkpoint import save_meta_params

    mt = cfg.meta_train
    live_log = (out_dir / "checkpoints" if ckpt_dir is None else ckpt_dir) / LIVE_METRICS
    (out_dir / "meta_params.npz.json").unlink(missing_ok=True)
    replace_with(out_dir / "metrics.csv", lambda tmp: shutil.copyfile(live_log, tmp))
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
    lengths = f"T = {mt.horizon}" if mt.min_horizon is None or mt.min_horizon >= mt.horizon else (
        f"T log-uniform in [{mt.min_horizon}, {mt.horizon}]"
    )
    # with several meta-seeds, say which draw this is (cfg.seed is the run's own: with_meta_seed)
    draw = f" from meta-training seed {cfg.seed} (num_meta_seeds = {cfg.num_meta_seeds})" if cfg.num_meta_seeds > 1 else ""
    text = model_card_markdown(lopt.card()) + (
        f"\nMeta-trained by experiment `{cfg.name}`{draw}: {mt.estimator.upper()}, "
        f"{mt.num_particles} particles per task, K = {mt.trunc_length}, {lengths}, "
        f"sigma = {mt.sigma}, {steps} outer steps of {mt.outer_optimizer} (lr {mt.outer_lr}).\n"
        f"Meta-training tasks: {tasks}.\n"
    )
    write_text(path, text)
