"""Meta-training: losses go down, and a run killed after a checkpoint resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, sandbox_env

from lopt.config import validate_config

# The inner task of tests about files, keys and the outer update, not about learning: the
# cheapest meta-step to compile (about 2 s less than the smoke config's digits MLP).
QUAD = {"kind": "quadratic", "dim": 6}


def _config(tmp_path, **meta):
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["data"]["root"] = str(tmp_path / "data")
    raw["tracking"] = {"mode": "disabled"}
    raw["meta_train"].update(meta)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, validate_config(raw)




def _run(args, tmp_path, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "lopt.cli", *args, "--quiet"],
        cwd=tmp_path, env=sandbox_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def _read_params(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def test_resume_after_kill_is_bit_identical(tmp_path, digits_root):
    """SIGKILL after the first checkpoint, resume, compare with an uninterrupted run.

    On CPU, XLA executes the same compiled program on the same inputs deterministically,
    and every PRNG key is a function of the step, so we demand bit-identical results.
    """
    os.symlink(digits_root, tmp_path / "data")
    # log_every does not divide checkpoint_every: rows up to a checkpoint must still survive
    cfg_path, _ = _config(tmp_path, outer_steps=200, checkpoint_every=10, log_every=4)

    full = _run(["meta-train", "--config", str(cfg_path), "--out", "full"], tmp_path)
    assert full.wait(timeout=600) == 0, full.stdout.read()

    killed = _run(["meta-train", "--config", str(cfg_path), "--out", "killed"], tmp_path)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())):
        assert killed.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "meta_params.npz").exists(), "killed too late to test resume"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 200

    resumed = _run(["meta-train", "--config", str(cfg_path), "--out", "killed", "--resume"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()

    a = _read_params(tmp_path / "full" / "meta_params.npz")
    b = _read_params(tmp_path / "killed" / "meta_params.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma = pd.read_csv(tmp_path / "full" / "metrics.csv")
    mb = pd.read_csv(tmp_path / "killed" / "metrics.csv")
    assert mb["wall_time"].is_monotonic_increasing  # cumulative across the resume
    pd.testing.assert_frame_equal(ma.drop(columns="wall_time"), mb.drop(columns="wall_time"))
    assert list(mb["step"]) == list(range(1, 201))


def _damage(step_dir):
    """Empty every OCDBT data chunk of one orbax step: bytes lost on disk, not a torn save."""
    chunks = [f for f in step_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert chunks, f"no OCDBT chunks under {step_dir}"
    for f in chunks:
        f.write_bytes(b"")


def test_unreadable_newest_checkpoint_is_set_aside_and_resume_is_exact(tmp_path):
    """A damaged newest step is moved aside (never deleted) and the run resumes from the step
    before it, republishing byte-identical meta-parameters; when no step reads, nothing moves
    and the error names every step."""
    from lopt.checkpoint import CheckpointError
    from lopt.meta_train import meta_train

    # a quadratic inner task: the test is about files, so the cheapest program to compile
    _, cfg = _config(tmp_path, task=QUAD, outer_steps=6, checkpoint_every=2, log_every=2)
    out = tmp_path / "out"
    meta_train(cfg, out, progress=False)
    published = (out / "meta_params.npz").read_bytes()
    ckpt = out / "checkpoints"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 4, 6]
    _damage(ckpt / "6")

    with pytest.warns(UserWarning, match=r"checkpoints/6: unreadable checkpoint .*resuming from step 4"):
        state = meta_train(cfg, out, resume=True, progress=False)
    assert int(state.step) == 6
    assert (out / "checkpoints.unreadable" / "6" / "default").is_dir()  # kept for inspection
    assert (out / "meta_params.npz").read_bytes() == published
    assert list(pd.read_csv(out / "metrics.csv")["step"]) == [1, 2, 3, 4, 5, 6]

    for step in (2, 4, 6):
        _damage(ckpt / str(step))
    with pytest.raises(CheckpointError, match=r"unreadable checkpoint step\(s\) 6 .*; 4 .*; 2 .*no step reads back"):
        meta_train(cfg, out, resume=True, progress=False)
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "4", "6"]

    # the CLI says so in one line: the reads orbax left in flight when the first one failed
    # land on its closed event loop later and once printed ~130 lines of tracebacks after it
    cfg_path = tmp_path / "cfg.yaml"
    proc = _run(["meta-train", "--config", str(cfg_path), "--out", str(out), "--resume"], tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, output
    assert output.count("\n") == 1 and output.startswith(f"error: {ckpt}: unreadable checkpoint step(s) 6"), output


def test_stray_read_filter_drops_only_the_failed_restore_noise(tmp_path):
    """What the filter behind the one-line error above swallows, and what it passes on."""
    import asyncio
    import gc
    import logging
    import types
    import warnings

    from lopt.checkpoint import _StrayReads

    reads = _StrayReads()
    reads.directories = {str(tmp_path / "checkpoints")}
    passed = []
    reads._previous_hook = passed.append

    def record(message, exc):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, (type(exc), exc, None))

    ours = ValueError(f'Error reading "w/.zarray" at local file "{tmp_path}/checkpoints/4/default/"')
    assert not reads.filter(record("Future exception was never retrieved\nfuture: <Future>", ours))
    assert not reads.filter(record("Task exception was never retrieved", ours))
    assert reads.filter(record("Future exception was never retrieved", ValueError("/elsewhere/x")))
    assert reads.filter(record("Exception in callback", ours))

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as exc:
        closed = exc
    reads.unraisable_hook(types.SimpleNamespace(exc_value=closed, exc_traceback=closed.__traceback__, object=None))
    assert passed == []
    other = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), exc_traceback=None, object=None)
    reads.unraisable_hook(other)
    assert passed == [other]  # the same words raised anywhere else are not swallowed

    # a read that never started: its coroutine is collected unawaited (CPython warns then)
    async def read():
        pass

    def dropped_read() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            read()
            gc.collect()
        return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]

    assert dropped_read() == [f"coroutine '{read.__qualname__}' was never awaited"]  # before any failure: shown
    reads.read_failed()
    assert dropped_read() == []


def test_existing_checkpoints_are_never_overwritten(tmp_path):
    from lopt.meta_train import meta_train

    _, cfg = _config(tmp_path, task=QUAD, outer_steps=4, checkpoint_every=2, log_every=2)
    meta_train(cfg, tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        meta_train(cfg, tmp_path / "out", progress=False)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_nres_meta_training_lowers_meta_loss(tmp_path, digits_root, precision):
    """200 outer steps of NRES on digits: the windowed meta-loss falls well below its start.

    The untrained optimizer is a no-op (zero output layer), so the first windows sit at
    the initial loss (~2.3 = log 10); a working estimator + outer loop must cut it, also
    with the inner task computed in bfloat16 (``compute.precision``).
    """
    from lopt.meta_train import build_trainer, fingerprint, make_meta_step, meta_train

    _, cfg = _config(tmp_path, outer_steps=200, checkpoint_every=200, log_every=50, horizon=40, trunc_length=10)
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"root": str(digits_root)}),
        "compute": cfg.compute.model_copy(update={"precision": precision}),
    })
    trainer = build_trainer(cfg)
    traced = str(jax.make_jaxpr(make_meta_step(trainer))(trainer.init(), trainer.data))
    assert ("bf16" in traced) == (precision == "bfloat16")  # the inner task's dtype, from config
    as_float32 = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"precision": "float32"})})
    assert (fingerprint(cfg) != fingerprint(as_float32)) == (precision == "bfloat16")  # no stale resume
    meta_train(cfg, tmp_path / "out", progress=False)
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    first = metrics["meta_loss"].iloc[:10].mean()
    last = metrics["meta_loss"].iloc[-20:].mean()
    assert first > 2.0
    assert last < 0.75 * first, (first, last)


def test_resume_extends_run_but_never_reuses_stale_checkpoints(tmp_path, capsys):
    """outer_steps can grow across a resume; a changed sigma starts afresh (old run kept aside)."""
    from lopt.meta_train import meta_train

    _, cfg = _config(tmp_path, task=QUAD, outer_steps=6, checkpoint_every=3, log_every=3)
    out = tmp_path / "out"
    meta_train(cfg, out, progress=False)
    # a run from before the live log moved into checkpoints/ resumes with its log
    (out / "checkpoints" / "metrics.live.csv").replace(out / "metrics.live.csv")
    longer = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"outer_steps": 9})})
    state = meta_train(longer, out, resume=True, progress=False)
    assert int(state.step) == 9
    assert list(pd.read_csv(out / "metrics.csv")["step"]) == list(range(1, 10))
    # the extended run equals a run of 9 steps from scratch
    fresh = meta_train(longer, tmp_path / "fresh", progress=False)
    for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(fresh.theta)):
        np.testing.assert_array_equal(a, b)

    # shortening a run below its checkpoints is refused (it would publish the longer run)
    shorter = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"outer_steps": 7})})
    with pytest.raises(FileExistsError, match=r"up to step 9 .*outer_steps = 7"):
        meta_train(shorter, out, resume=True, progress=False)
    # ... and through the CLI it is a one-line error, exit status 2, not a traceback
    from lopt.cli import main

    path, _ = _config(tmp_path, task=QUAD, outer_steps=7, checkpoint_every=3, log_every=3)
    argv = ["meta-train", "--config", str(path), "--out", str(out), "--resume", "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "outer_steps = 7" in err and "Traceback" not in err
    assert list(pd.read_csv(out / "checkpoints" / "metrics.live.csv")["step"]) == list(range(1, 10))

    first_params = (out / "meta_params.npz").read_bytes()
    changed = longer.model_copy(update={"meta_train": longer.meta_train.model_copy(update={"sigma": 0.05})})
    seen = {}

    def spy(*args, **kwargs):  # what out/ holds while the changed config's run is going
        seen.setdefault("files", sorted(p.name for p in out.iterdir() if p.is_file()))
        return real_flush(*args, **kwargs)

    import lopt.meta_train.run as run_module

    real_flush = run_module.rows_of
    run_module.rows_of = spy
    try:
        with pytest.warns(UserWarning, match="starting afresh"):
            state = meta_train(changed, out, resume=True, progress=False)
    finally:
        run_module.rows_of = real_flush
    assert seen["files"] == [], seen  # the other config's optimizer was moved aside with its run
    assert int(state.step) == 9
    stale = list(tmp_path.joinpath("out").glob("checkpoints.stale-*"))
    assert len(stale) == 1 and any(p.name == "9" for p in stale[0].iterdir())
    assert (stale[0] / "published" / "meta_params.npz").read_bytes() == first_params
    changed_metrics = pd.read_csv(out / "metrics.csv")

    # back to the first config: its run is put back and continued, the other kept aside
    longest = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"outer_steps": 12})})
    with pytest.warns(UserWarning, match="resuming this config's earlier run"):
        state = meta_train(longest, out, resume=True, progress=False)
    assert int(state.step) == 12
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["step"]) == list(range(1, 13))
    assert not np.allclose(metrics["meta_loss"].iloc[:9], changed_metrics["meta_loss"])  # its own log, not sigma 0.05's
    stale = list(tmp_path.joinpath("out").glob("checkpoints.stale-*"))
    assert len(stale) == 1 and any(p.name == "9" for p in stale[0].iterdir())
    with pytest.warns(UserWarning, match="resuming"):  # and forth again: nothing deleted
        meta_train(changed, out, resume=True, progress=False)
    last = lambda d: max(int(p.name) for p in d.iterdir() if p.name.isdigit())
    assert last(out / "checkpoints") == 9  # sigma 0.05's run, put back
    assert not (out / "checkpoints" / "published").exists()  # its published files are back in out/
    (stale,) = tmp_path.joinpath("out").glob("checkpoints.stale-*")
    assert last(stale) == 12  # the first config's, moved aside again
    assert json.loads((stale / "published" / "meta_params.npz.json").read_text())["outer_steps"] == 12


def test_resuming_a_finished_run_leaves_its_published_files_alone(tmp_path):
    """``--resume`` with no steps left must not rewrite the published set: a new
    modification time would make Snakemake re-run evaluation downstream, and the metadata's
    wall time would be overwritten with 0. A missing file, or a run whose resolved config
    changed outside the fingerprint (here log_every), is republished."""
    from lopt.meta_train import PUBLISHED, meta_train

    _, cfg = _config(tmp_path, task=QUAD, outer_steps=4, checkpoint_every=2, log_every=2)
    out = tmp_path / "out"
    meta_train(cfg, out, progress=False)

    def snapshot():
        return {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in PUBLISHED}

    before = snapshot()
    wall = json.loads(before["meta_params.npz.json"][0])["compute"]["wall_seconds_this_process"]
    assert wall > 0
    meta_train(cfg, out, resume=True, progress=False)
    assert snapshot() == before
    (out / "model_card.md").unlink()
    meta_train(cfg, out, resume=True, progress=False)
    assert (out / "model_card.md").read_bytes() == before["model_card.md"][0]
    assert (out / "meta_params.npz").read_bytes() == before["meta_params.npz"][0]  # the same weights
    relogged = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"log_every": 1})})
    meta_train(relogged, out, resume=True, progress=False)
    assert json.loads((out / "meta_params.npz.json").read_text())["config"]["meta_train"]["log_every"] == 1


def test_moved_data_and_stamps_of_the_older_lopt_resume_in_place(tmp_path):
    """``data.root`` says where the datasets are, not what they hold: a run resumes with its
    data moved (a node's scratch disk). Stamps of the lopt that hashed the root too, and
    runs it moved aside under that name, still resume; the resume re-stamps them."""
    import warnings

    import lopt.meta_train as mt_module
    from lopt.meta_train import meta_train

    _, cfg = _config(tmp_path, task=QUAD, outer_steps=6, checkpoint_every=3, log_every=3)
    out = tmp_path / "out"
    ckpt = out / "checkpoints"
    meta_train(cfg, out, progress=False)

    def extended(steps, root):
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(tmp_path / root)}),
                                      "meta_train": cfg.meta_train.model_copy(update={"outer_steps": steps})})

    def resume_quietly(c):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = meta_train(c, out, resume=True, progress=False)
        assert not [w for w in caught if "checkpoints" in str(w.message)], [str(w.message) for w in caught]
        assert not list(out.glob("checkpoints.stale-*"))
        return state

    assert int(resume_quietly(extended(9, "scratch")).step) == 9  # data moved: continued, not restarted
    # a stamp the older lopt wrote (root hashed in) stands for the same run
    c = extended(12, "scratch")
    legacy = mt_module.run_dir._legacy_fingerprint(c)
    assert legacy != mt_module.fingerprint(c) == mt_module.fingerprint(cfg)
    stamp = json.loads((ckpt / "fingerprint.json").read_text())
    (ckpt / "fingerprint.json").write_text(json.dumps({**stamp, "fingerprint": legacy}))
    assert int(resume_quietly(c).step) == 12
    assert json.loads((ckpt / "fingerprint.json").read_text())["fingerprint"] == mt_module.fingerprint(cfg)
    # a run the older lopt moved aside under its fingerprint is put back
    ckpt.rename(out / f"checkpoints.stale-{mt_module.run_dir._legacy_fingerprint(extended(15, 'scratch'))}")
    with pytest.warns(UserWarning, match="held no checkpoints; resuming this config's earlier run"):
        state = meta_train(extended(15, "scratch"), out, resume=True, progress=False)
    assert int(state.step) == 15 and not list(out.glob("checkpoints.stale-*"))
    fresh = meta_train(extended(15, "elsewhere"), tmp_path / "fresh", progress=False)
    for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(fresh.theta)):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_of_the_old_particle_layout_are_moved_aside_not_resumed(tmp_path):
    """Checkpoints from before pairs were adjacent (stamp without ``particle_layout``) hold
    estimator states whose particle i pairs with i + P/2: resuming them would difference
    unrelated particles, so a resume moves them aside, as for another config."""
    import lopt.meta_train as mt_module

    _, cfg = _config(tmp_path)
    ckpt = tmp_path / "out" / "checkpoints"
    (ckpt / "6").mkdir(parents=True)
    old_stamp = {"fingerprint": mt_module.fingerprint(cfg), "experiment": cfg.name}
    (ckpt / "fingerprint.json").write_text(json.dumps(old_stamp))
    with pytest.warns(UserWarning, match="older lopt with another particle layout"):
        mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    (aside,) = ckpt.parent.glob("checkpoints.stale-*")
    assert aside.name == f"checkpoints.stale-{old_stamp['fingerprint']}-pairs-halves" and (aside / "6").is_dir()
    assert not (ckpt / "6").exists()
    stamp = json.loads((ckpt / "fingerprint.json").read_text())
    assert stamp["particle_layout"] == mt_module.PARTICLE_LAYOUT == "pairs-adjacent"
    # a stamp of the current layout resumes in place
    (ckpt / "7").mkdir()
    mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    assert (ckpt / "7").is_dir() and len(list(ckpt.parent.glob("checkpoints.stale-*"))) == 1


@pytest.mark.parametrize("stamp_text", ["{bad", "[]", '{"experiment": "x"}'])
def test_unreadable_stamp_moves_the_checkpoints_aside_instead_of_crashing(tmp_path, stamp_text):
    """A torn or hand-edited ``fingerprint.json`` cannot say which config its checkpoints
    belong to: a resume warns, moves them aside (never deletes, never resumes them) and
    starts afresh with a whole new stamp."""
    import lopt.meta_train as mt_module

    _, cfg = _config(tmp_path)
    ckpt = tmp_path / "out" / "checkpoints"
    (ckpt / "6").mkdir(parents=True)
    (ckpt / "fingerprint.json").write_text(stamp_text)
    with pytest.warns(UserWarning, match="no readable fingerprint.json"):
        mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    (aside,) = ckpt.parent.glob("checkpoints.stale-*")
    assert aside.name == "checkpoints.stale-unknown" and (aside / "6").is_dir()
    assert (aside / "fingerprint.json").read_text() == stamp_text
    assert json.loads((ckpt / "fingerprint.json").read_text())["fingerprint"] == mt_module.fingerprint(cfg)
    assert sorted(p.name for p in ckpt.iterdir()) == ["fingerprint.json"]


def test_a_move_of_published_files_cut_short_is_completed_by_the_next_resume(tmp_path):
    """Moving a run aside puts its published files into its checkpoint directory first, then
    renames that: a kill between the two leaves them with their own checkpoints. Putting
    an earlier run back renames first: a kill before its files come out is finished by the
    next resume. Either way no config's optimizer sits in out/ beside another's run."""
    import lopt.meta_train as mt_module

    _, cfg = _config(tmp_path)
    other = cfg.model_copy(update={"meta_train": cfg.meta_train.model_copy(update={"sigma": 0.05})})
    out = tmp_path / "out"
    ckpt = out / "checkpoints"
    # the other config's run, killed after its files went into checkpoints/published
    (ckpt / "published").mkdir(parents=True)
    (ckpt / "4").mkdir()
    (ckpt / "published" / "meta_params.npz").write_text("other")
    (ckpt / "fingerprint.json").write_text(json.dumps(
        {"fingerprint": mt_module.fingerprint(other), "particle_layout": mt_module.PARTICLE_LAYOUT}))
    with pytest.warns(UserWarning, match="config changed"):
        mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    (aside,) = out.glob("checkpoints.stale-*")
    assert (aside / "published" / "meta_params.npz").read_text() == "other" and (aside / "4").is_dir()
    assert not (out / "meta_params.npz").exists() and sorted(p.name for p in ckpt.iterdir()) == ["fingerprint.json"]
    # this config's own run, killed after being put back but before its files came out
    (ckpt / "7").mkdir()
    (ckpt / "published").mkdir()
    (ckpt / "published" / "meta_params.npz").write_text("own")
    mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    assert (out / "meta_params.npz").read_text() == "own" and not (ckpt / "published").exists()
    assert (ckpt / "7").is_dir()
    # killed after this run was moved aside but before the earlier one came back: no
    # checkpoints/ (or one holding only a stamp); the resume still finds the earlier run
    (ckpt / "published").mkdir()
    (ckpt / "published" / "meta_params.npz").write_text("own again")
    ckpt.rename(out / f"checkpoints.stale-{mt_module.fingerprint(cfg)}")
    ckpt.mkdir()
    (ckpt / "fingerprint.json").write_text("{}")
    with pytest.warns(UserWarning, match="held no checkpoints; resuming this config's earlier run"):
        mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=True)
    assert (ckpt / "7").is_dir() and (out / "meta_params.npz").read_text() == "own again"
    assert sorted(p.name for p in out.glob("checkpoints.stale-*")) == [aside.name]
    # a temporary file a kill left behind is not a checkpoint: a fresh start is not refused
    empty = tmp_path / "fresh" / "checkpoints"
    empty.mkdir(parents=True)
    (empty / ".metrics.live.csv.tmp").write_text("step\n")
    mt_module.prepare_checkpoint_dir(empty, cfg, resume=False)


def test_refused_start_leaves_nothing_that_blocks_the_next(tmp_path, digits_root, capsys):
    """A config refused at start-up (here: more devices than the process has) is a one-line
    error, exit status 2, and leaves no stamp that would make the corrected run's start
    fail with "already holds checkpoints"."""
    import lopt.meta_train as mt_module
    from lopt.cli import main

    path, cfg = _config(tmp_path, devices=2)
    out = tmp_path / "out"
    argv = ["meta-train", "--config", str(path), "--data-root", str(digits_root), "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: meta_train.devices=2") and "allowed" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()
    # a stamp (and live log) alone, as runs stopped before their first checkpoint leave: nothing to protect
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "fingerprint.json").write_text('{"fingerprint": "other"}')
    (ckpt / mt_module.LIVE_METRICS).write_text("step\n")
    mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=False)
    assert json.loads((ckpt / "fingerprint.json").read_text())["fingerprint"] == mt_module.fingerprint(cfg)
    (ckpt / "0").mkdir()  # a checkpoint: now it is refused
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        mt_module.prepare_checkpoint_dir(ckpt, cfg, resume=False)


def test_metrics_log_drops_a_torn_last_row(tmp_path):
    from lopt.meta_train import METRIC_FIELDS, MetricsLog

    path = tmp_path / "metrics.live.csv"
    whole = ",".join("1" if f == "step" else "0.5" for f in METRIC_FIELDS)
    path.write_text(",".join(METRIC_FIELDS) + "\n" + whole + "\n" + "2,0.4\n" + "3")  # killed mid-write
    log = MetricsLog(path, resume_step=20)
    log.close()
    rows = pd.read_csv(path)
    assert list(rows["step"]) == [1] and not rows.isna().any().any()


def test_metrics_log_keeps_rows_with_blank_columns_across_resumes(tmp_path):
    """A log begun before a column existed keeps its rows through every later resume."""
    from lopt.meta_train import METRIC_FIELDS, MetricsLog

    path = tmp_path / "metrics.live.csv"
    old_fields = [f for f in METRIC_FIELDS if f not in ("diverged", "skipped_updates")]
    body = "".join(",".join(str(s) if f == "step" else "0.5" for f in old_fields) + "\n" for s in (1, 2, 3))
    path.write_text(",".join(old_fields) + "\n" + body)
    for resume_step in (3, 3):  # the first resume rewrites with blank new columns; the second reads them
        MetricsLog(path, resume_step=resume_step).close()
        rows = pd.read_csv(path)
        assert list(rows["step"]) == [1, 2, 3]
        assert list(rows.columns) == list(METRIC_FIELDS)
    # a kill that tears the last line anywhere (here mid-number) still loses only that line
    whole = ",".join("4" if f == "step" else "0.25" for f in METRIC_FIELDS)
    path.write_text(path.read_text() + whole[:-1])
    MetricsLog(path, resume_step=9).close()
    assert list(pd.read_csv(path)["step"]) == [1, 2, 3]


def test_nres_new_episodes_draw_new_noise(tmp_path):
    """A pair starting a new episode gets noise unlike its last episode's.

    Guards the run's key layout: the estimator's init draws (the first episodes' noise)
    must not come from a key an outer step reuses (once they did: the step-1 key).
    """
    from lopt.meta_train import build_trainer, make_meta_step

    _, cfg = _config(tmp_path, task=QUAD, num_particles=32)
    trainer = build_trainer(cfg)
    step = make_meta_step(trainer)
    state = trainer.init()
    renewed = 0
    for _ in range(8):  # two horizons: every pair starts at least one new episode
        before = state.estimator_state
        state, _ = step(state, trainer.data)
        after = state.estimator_state
        reset = np.asarray(after.particles.episode[::2] > before.particles.episode[::2])  # + copies
        # a repeated draw matches to rounding (jit may fuse sigma * normal differently)
        same = [np.isclose(a, b, rtol=1e-5, atol=0).reshape(16, -1).all(axis=1)
                for a, b in zip(jax.tree.leaves(after.noise), jax.tree.leaves(before.noise))]
        changed = ~np.logical_and.reduce(same)
        np.testing.assert_array_equal(changed, reset)
        renewed += int(reset.sum())
    assert renewed >= 16


def test_normalized_meta_gradient_makes_sgd_steps_of_length_lr(tmp_path):
    import optax

    from lopt.meta_train import build_trainer, make_meta_step

    _, cfg = _config(tmp_path, task=QUAD, outer_optimizer="sgd", outer_lr=0.01, grad_clip=1e6, normalize_grad=True,
                     loss_diff_clip=10.0)
    trainer = build_trainer(cfg)
    step = make_meta_step(trainer)
    state = trainer.init()
    new, metrics = step(state, trainer.data)
    moved = optax.global_norm(jax.tree.map(lambda a, b: a - b, new.theta, state.theta))
    assert float(metrics["grad_norm"]) > 0
    np.testing.assert_allclose(float(moved), 0.01, rtol=1e-4)


# The three ways an estimator drives the engine: two thetas and a reset (NRES; PES, GPES and
# FullES pass the same keyword the same way), a second unroll over P / 2 pairs (TES), and
# reverse-mode through the chunked map (TBPTT).
@pytest.mark.parametrize("estimator", ["nres", "tes", "tbptt"])
def test_particle_chunk_computes_the_same_estimates(estimator):
    """``particle_chunk`` unrolls the particles a few at a time (lax.map over chunks) for
    cache locality; the particles are independent within a window, so four windows
    (step-unlocked, so windows hold resets and the reset path runs) must give the same
    estimates and particle states as all at once. The system has a pytree theta, a matmul
    and per-particle noise in every step (so a chunk that got another particle's key or
    theta would show). Tolerance: the chunks' batched matmuls may round differently from
    the full batch's, at float32 epsilon level. (The meta-trainer passes the config's
    ``particle_chunk`` to the estimator factory: test_every_estimator_passes_particle_chunk.)"""
    from lopt.estimators import make_estimator

    system = _NoisyLinear(horizon=6)
    theta = {"b": jnp.array([0.1, -0.2, 0.3]), "a": jnp.eye(3) * 0.9}
    out = {}
    for chunk in (None, 2):
        est = make_estimator(estimator, system, num_particles=8, trunc_length=4, sigma=0.1,
                             step_unlock=True, particle_chunk=chunk)

        def windows(key, est=est):
            def body(state, i):
                grad, state, _ = est.estimate(theta, state, jax.random.fold_in(key, i))
                return state, grad

            return jax.lax.scan(body, est.init(theta, key), jnp.arange(1, 5))

        out[chunk] = jax.jit(windows)(jax.random.PRNGKey(3))
    (state, grads), (chunked_state, chunked_grads) = out[None], out[2]
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-2  # estimates are not trivial
    for a, b in zip(jax.tree.leaves((grads, state)), jax.tree.leaves((chunked_grads, chunked_state)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class _NoisyLinear:
    """``s <- a @ s + b + 0.1 noise``, loss ``0.5 ||s||^2``; a fresh random start per episode."""

    horizon: int

    def init(self, theta, key, data=None):
        return jax.random.normal(key, (3,))

    def step(self, theta, s, t, key, data=None):
        s = theta["a"] @ s + theta["b"] + 0.1 * jax.random.normal(key, (3,))
        return s, 0.5 * jnp.sum(s**2)


def test_particle_chunk_keeps_the_fingerprint():
    """A checkpoint resumes with or without chunking (it only changes the working set)."""
    from lopt.meta_train import fingerprint

    base = {"name": "chunk", "meta_train": {"task": {"kind": "quadratic"}, "num_particles": 8},
            "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}]}}
    prints = {fingerprint(validate_config({**base, "meta_train": {**base["meta_train"], "particle_chunk": c}}))
              for c in (None, 2, 4)}
    assert len(prints) == 1


def test_particle_chunk_must_split_the_pairs_on_one_device():
    base = {
        "name": "chunk", "meta_train": {"task": {"kind": "quadratic"}, "num_particles": 8},
        "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}]},
    }
    from lopt.config import ConfigError

    with pytest.raises(ConfigError, match=r"meta_train\.particle_chunk: 3 must divide the antithetic pairs"):
        validate_config({**base, "meta_train": {**base["meta_train"], "particle_chunk": 3}})
    with pytest.raises(ConfigError, match=r"meta_train\.particle_chunk: applies to one device"):
        validate_config({**base, "meta_train": {**base["meta_train"], "particle_chunk": 2, "devices": 2}})
    ok = validate_config({**base, "meta_train": {**base["meta_train"], "particle_chunk": 2}})
    assert ok.meta_train.particle_chunk == 2


@pytest.mark.parametrize("estimator", ["tbptt", "full_es", "tes", "pes", "gpes", "nres"])
def test_every_estimator_passes_particle_chunk_to_the_engine(estimator):
    """The chunked unroll adds a lax.map (a scan over P / c chunks) around each window, so
    the traced estimate holds more scans with the option than without (tracing only: cheap).
    test_particle_chunk_computes_the_same_estimates shows the result is the same; this one that it is used."""
    from lopt.estimators import make_estimator
    from lopt.tasks.systems import InfluenceBalancing

    system = InfluenceBalancing(horizon=8)
    theta = system.initial_theta()
    extra = {"noise_reuse_steps": 8} if estimator == "gpes" else {}
    scans = {}
    for chunk in (None, 2):
        est = make_estimator(estimator, system, num_particles=8, trunc_length=8 if estimator == "full_es" else 4,
                             sigma=0.1, particle_chunk=chunk, **extra)
        state = est.init(theta, jax.random.PRNGKey(0))
        jaxpr = str(jax.make_jaxpr(est.estimate)(theta, state, jax.random.PRNGKey(1)))
        scans[chunk] = jaxpr.count("scan[")
    assert scans[2] > scans[None] > 0, scans


def test_grad_clip_null_turns_the_outer_clip_off(tmp_path):
    """`meta_train.grad_clip: null` (the papers' setting) leaves the meta-gradient unclipped."""
    import optax

    from lopt.meta_train import outer_optimizer

    _, cfg = _config(tmp_path, grad_clip=None)
    assert cfg.meta_train.grad_clip is None
    grad = {"w": jax.numpy.full((4,), 5.0)}  # global norm 10
    norms = {}
    for clip in (None, 1.0):
        opt = outer_optimizer(optax.sgd(1.0), clip)
        update, _ = opt.update(grad, opt.init(grad))
        norms[clip] = float(optax.global_norm(update))
    assert norms == pytest.approx({None: 10.0, 1.0: 1.0}, rel=1e-6)


def test_grad_clip_applies_to_the_gradient_before_adam():
    """The outer optimizer clips the meta-*gradient*, before Adam.

    Clipping Adam's step instead (norm about lr * sqrt(n), hardly ever clipped) passes every
    other meta-training test. Adam's scale invariance shows the difference only over two
    steps of different gradient size: clipped first, both gradients below have norm 1 and
    point the same way, so Adam's second update is exactly -lr per element (m_hat /
    sqrt(v_hat) = 1); unclipped, the first gradient (norm 500) dominates the moments and the
    second update is about 0.67 lr.
    """
    import optax

    from lopt.meta_train import outer_optimizer

    lr = 0.1
    opt = outer_optimizer(optax.adam(lr), grad_clip=1.0)
    params = jnp.zeros(2)
    state = opt.init(params)
    for g in ([300.0, 400.0], [0.6, 0.8]):  # norms 500 (clipped to [0.6, 0.8]) and 1
        updates, state = opt.update(jnp.array(g), state, params)
        params = optax.apply_updates(params, updates)
    # Adam on two equal gradients: m_hat = g, v_hat = g^2, update = -lr g / (|g| + 1e-8).
    # float32 rounding (the clipped [0.6, 0.8] is not bit-equal to the literal one, and the
    # bias corrections divide by 1 - 0.999^2 ~ 2e-3, amplifying rounding ~500x) leaves
    # ~1e-5 relative (measured 1.0e-5): rtol 1e-4. Unclipped gives ~0.67 lr, 33 % off.
    np.testing.assert_allclose(np.asarray(updates), [-lr, -lr], rtol=1e-4)
    # and a non-finite gradient is skipped, not applied
    updates, state = opt.update(jnp.array([jnp.nan, 1.0]), state, params)
    np.testing.assert_array_equal(np.asarray(updates), 0.0)


def test_checkpoint_root_lets_a_fresh_job_directory_resume(tmp_path):
    """``compute.checkpoint_root`` keeps the live checkpoints outside the job's directory
    (a persistent volume on Kubernetes, where a killed pod loses its scratch space): a job
    in a fresh directory resumes the run there and publishes the whole log, and a config
    change moves that run aside together with the files it published elsewhere."""
    from lopt.meta_train import checkpoint_dir, meta_train

    _, base = _config(tmp_path, task=QUAD, outer_steps=6, checkpoint_every=3, log_every=3)
    root = tmp_path / "volume"

    def with_root(steps, **meta):
        return base.model_copy(update={
            "compute": base.compute.model_copy(update={"checkpoint_root": str(root)}),
            "meta_train": base.meta_train.model_copy(update={"outer_steps": steps, **meta})})

    assert checkpoint_dir(base, tmp_path / "x") == tmp_path / "x" / "checkpoints"
    assert checkpoint_dir(with_root(6), tmp_path / "x") == root / base.name
    meta_train(with_root(6), tmp_path / "pod1", progress=False)
    assert not (tmp_path / "pod1" / "checkpoints").exists()
    assert sorted(int(p.name) for p in (root / base.name).iterdir() if p.name.isdigit()) == [3, 6]
    # the next job starts in an empty directory and continues from step 6, not from 0
    state = meta_train(with_root(9), tmp_path / "pod2", resume=True, progress=False)
    assert int(state.step) == 9
    assert list(pd.read_csv(tmp_path / "pod2" / "metrics.csv")["step"]) == list(range(1, 10))
    fresh = meta_train(base.model_copy(update={"meta_train": with_root(9).meta_train}), tmp_path / "fresh", progress=False)
    for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(fresh.theta)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "pod2" / "metrics.csv")["meta_loss"],
                                  pd.read_csv(tmp_path / "fresh" / "metrics.csv")["meta_loss"])
    # a run trained before the setting was on (or a pulled release) is copied in and resumed
    meta_train(base, tmp_path / "local", progress=False)
    first_six = pd.read_csv(tmp_path / "local" / "metrics.csv")
    moved = base.model_copy(update={
        "compute": base.compute.model_copy(update={"checkpoint_root": str(tmp_path / "volume2")}),
        "meta_train": with_root(9).meta_train})
    with pytest.warns(UserWarning, match="copied this config's run"):
        resumed = meta_train(moved, tmp_path / "local", resume=True, progress=False)
    assert sorted(int(p.name) for p in (tmp_path / "local" / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    for a, b in zip(jax.tree.leaves(resumed.theta), jax.tree.leaves(fresh.theta)):
        np.testing.assert_array_equal(a, b)
    continued = pd.read_csv(tmp_path / "local" / "metrics.csv")
    assert list(continued["step"]) == list(range(1, 10))
    # steps 1-6 were not re-run: their rows, wall times included, are the first run's
    pd.testing.assert_frame_equal(continued.iloc[:6], first_six)
    # another config moves the run aside in the volume, with what it published in pod2/
    published = (tmp_path / "pod2" / "meta_params.npz").read_bytes()
    with pytest.warns(UserWarning, match="starting afresh"):
        meta_train(with_root(3, sigma=0.05), tmp_path / "pod2", resume=True, progress=False)
    (aside,) = root.glob(f"{base.name}.stale-*")
    assert (aside / "published" / "meta_params.npz").read_bytes() == published and (aside / "9").is_dir()


def test_meta_seeds_under_a_checkpoint_root_keep_their_own_runs(tmp_path):
    """Two meta-seeds of one experiment with `compute.checkpoint_root`: each keeps its own
    checkpoint directory (one seed's resume never takes the other's run for a stale config and
    moves it aside), trains from its own seed, and resuming either is a no-op."""
    from lopt.meta_train import meta_train

    _, cfg = _config(tmp_path, task=QUAD, outer_steps=4, checkpoint_every=2, log_every=2)
    root = tmp_path / "scratch"
    cfg = cfg.model_copy(update={"num_meta_seeds": 2,
                                 "compute": cfg.compute.model_copy(update={"checkpoint_root": str(root)})})
    outs = {s: tmp_path / f"out{s}" for s in (0, 1)}
    for seed, out in outs.items():
        meta_train(cfg, out, resume=True, progress=False, meta_seed=seed)
    assert sorted(p.name for p in root.iterdir()) == ["smoke", "smoke.seed1"]  # nothing moved aside
    params = {s: _read_params(out / "meta_params.npz") for s, out in outs.items()}
    assert any(not np.array_equal(params[0][k], params[1][k]) for k in params[0])  # two draws
    assert json.loads((outs[1] / "meta_params.npz.json").read_text())["config"]["seed"] == 1
    for seed, out in outs.items():  # each resumes its own finished run: nothing re-trained or republished
        before = (out / "meta_params.npz").stat().st_mtime_ns
        meta_train(cfg, out, resume=True, progress=False, meta_seed=seed)
        assert (out / "meta_params.npz").stat().st_mtime_ns == before
    assert sorted(p.name for p in root.iterdir()) == ["smoke", "smoke.seed1"]
