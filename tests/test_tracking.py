"""W&B tracking: mode resolution, offline round trip, fallbacks (no network needed)."""

from __future__ import annotations

import logging
import math
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from lopt import tracking
from lopt.tracking import (
    Tracker,
    find_offline_runs,
    load_offline_table,
    read_offline_run,
    resolve_mode,
    sanitize_artifact_name,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B with every wandb directory inside tmp_path."""
    home = tmp_path / "wandb_home"
    home.mkdir()
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking.tracker, "_online_unreachable", False)
    return tmp_path


def _tracker(run_root: Path, **kw) -> Tracker:
    args = {
        "project": "lopt-test",
        "name": "run-a",
        "group": "exp-1",
        "job_type": "meta_train",
        "config": {"lr": 1e-3},
        "dir": run_root,
        "settings": {"x_disable_stats": True},
    }
    args.update(kw)
    return Tracker(**args)


# --------------------------------------------------------------------------- #
# resolve_mode
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("mode", ["online", "offline", "disabled", " Offline "])
def test_resolve_mode_env_var_wins(mode, tmp_path):
    env = {"WANDB_MODE": mode, "HOME": str(tmp_path)}
    assert resolve_mode(env) == mode.strip().lower()


def test_resolve_mode_aliases_and_bad_values_never_fail(tmp_path):
    assert resolve_mode({"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode({"WANDB_MODE": "Run"}) == "online"
    with pytest.warns(RuntimeWarning, match="WANDB_MODE='bogus'.*tracking offline") as record:
        assert resolve_mode({"WANDB_MODE": "bogus"}) == "offline"
    assert all(m in str(record[0].message) for m in ("online", "offline", "disabled", "dryrun"))


def test_resolve_mode_without_key_is_offline(tmp_path):
    assert resolve_mode({"HOME": str(tmp_path)}) == "offline"
    assert resolve_mode({"HOME": str(tmp_path), "WANDB_MODE": "  "}) == "offline"


def test_resolve_mode_with_key_is_still_offline(tmp_path):
    """A configured API key never turns tracking online by itself: online is opt-in."""
    assert resolve_mode({"HOME": str(tmp_path), "WANDB_API_KEY": FAKE_KEY}) == "offline"
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_mode({"HOME": str(tmp_path), "WANDB_API_KEY": FAKE_KEY}) == "offline"
    asked = {"HOME": str(tmp_path), "WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "online"}
    assert resolve_mode(asked) == "online"


def test_tracker_with_key_but_no_mode_runs_offline(wandb_env, monkeypatch):
    """Default Tracker (no mode argument, no WANDB_MODE) with a key present: offline, no network."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    tr = _tracker(wandb_env)
    try:
        assert tr.requested_mode == "offline"
        assert tr.mode == "offline"
    finally:
        tr.finish()


def test_config_tracking_mode_is_the_explicit_switch(wandb_env, monkeypatch):
    """`tracking.mode` reaches the Tracker as its mode; unset, the default is offline."""
    from lopt.cli import _tracker as cli_tracker
    from lopt.config import load_config

    seen = []
    monkeypatch.setattr(tracking, "Tracker", lambda **kw: seen.append(kw["mode"]))
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    assert cfg.tracking.mode is None
    cli_tracker(cfg, "evaluate", "x")
    online = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mode": "online"})})
    cli_tracker(online, "evaluate", "x")
    assert seen == [None, "online"]
    assert resolve_mode() == "offline"  # what the Tracker does with None


def test_tracker_rejects_invalid_mode(wandb_env):
    with pytest.raises(ValueError, match="online, offline, disabled"):
        _tracker(wandb_env, mode="sometimes")


def test_sanitize_artifact_name():
    assert sanitize_artifact_name("ckpt/seed=0:best run") == "ckpt-seed-0-best-run"
    assert sanitize_artifact_name("ok_name-1.2") == "ok_name-1.2"
    assert sanitize_artifact_name("///") == "artifact"
    assert len(sanitize_artifact_name("x" * 500)) == 128


# --------------------------------------------------------------------------- #
# Offline round trip
# --------------------------------------------------------------------------- #


N_STEPS = 300


def _metrics(step: int) -> dict[str, float]:
    return {"meta/loss": 1.0 / (step + 1), "meta/grad_norm": 0.5 * step, "lr": 1e-3 * (step % 7)}


def test_offline_round_trip(wandb_env):
    big = "0123456789" * 5_000  # 50 KB: one record spans two 32 KiB blocks
    config = {
        "lr": 3e-4,
        "steps": N_STEPS,
        "estimator": {"name": "pes", "sigma": 0.01, "antithetic": True},
        "seeds": (0, 1, 2),
        "out": Path("results/exp-1"),
        "value": {"value": 5},  # a genuine {"value": ...} entry must survive
        "blob": big,
    }
    ckpt = wandb_env / "ckpt.bin"
    ckpt.write_bytes(b"\x00\x01" * 100)
    df = pd.DataFrame({"task": ["mlp", "cnn"], "loss": [0.25, 0.5]})

    with _tracker(wandb_env, config=config, tags=("smoke", "pes")) as tr:
        assert tr.mode == "offline" and tr.active
        for step in range(N_STEPS):
            tr.log(_metrics(step), step=step)
        tr.log({"eval/acc": 0.75}, step=N_STEPS - 1)  # same step: merges into the row
        tr.summary({"final/loss": 0.125, "meta/loss": -1.0})
        tr.log_table("results", df)
        art = tr.log_artifact(
            ckpt, name="ckpt/exp-1:seed0", type="checkpoint", metadata={"seed": 0}
        )
        run_dir = tr.run_dir
        run_id = tr.run_id
    assert art == "ckpt-exp-1-seed0"
    assert not tr.active
    tr.finish()  # idempotent

    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert find_offline_runs(wandb_env) == [run_dir]
    log_file = run_dir / f"run-{run_id}.wandb"
    assert log_file.stat().st_size > 2 * 32 * 1024  # several blocks exercised

    # wandb's service process may append the exit record just after finish() returns
    # on a loaded machine; wait for it (bounded) rather than race it.
    deadline = time.monotonic() + 30
    run = read_offline_run(run_dir)
    while run.exit_code is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = read_offline_run(run_dir)
    assert run.path == log_file
    assert (run.run_id, run.project, run.name) == (run_id, "lopt-test", "run-a")
    assert (run.group, run.job_type) == ("exp-1", "meta_train")
    assert run.tags == ["smoke", "pes"]
    assert run.exit_code == 0

    assert run.config == {
        "lr": 3e-4,
        "steps": N_STEPS,
        "estimator": {"name": "pes", "sigma": 0.01, "antithetic": True},
        "seeds": [0, 1, 2],
        "out": "results/exp-1",
        "value": {"value": 5},
        "blob": big,
    }

    assert len(run.history) == N_STEPS
    for step, row in enumerate(run.history):
        assert row["_step"] == step
        for key, value in _metrics(step).items():
            assert row[key] == pytest.approx(value, rel=1e-12, abs=0), (step, key)
    assert run.history[-1]["eval/acc"] == 0.75
    assert "eval/acc" not in run.history[-2]
    assert run.series("meta/grad_norm")[:3] == [(0, 0.0), (1, 0.5), (2, 1.0)]

    # explicit summary values win over the last logged value
    assert run.summary["final/loss"] == 0.125
    assert run.summary["meta/loss"] == -1.0
    assert run.summary["meta/grad_norm"] == 0.5 * (N_STEPS - 1)
    assert run.summary["_step"] == N_STEPS - 1
    assert "_wandb" not in run.summary

    table_ref = run.history[-1]["results"]
    assert table_ref["_type"] == "table-file"
    assert (table_ref["nrows"], table_ref["ncols"]) == (2, 2)
    pd.testing.assert_frame_equal(load_offline_table(run, "results"), df)

    arts = {a["name"]: a for a in run.artifacts}
    assert arts["ckpt-exp-1-seed0"]["type"] == "checkpoint"
    assert arts["ckpt-exp-1-seed0"]["metadata"] == {"seed": 0}
    assert arts["ckpt-exp-1-seed0"]["files"] == ["ckpt.bin"]
    assert any(a["type"] == "run_table" for a in run.artifacts)


def test_directory_artifact_nan_and_failed_exit(wandb_env):
    out = wandb_env / "eval_out"
    (out / "sub").mkdir(parents=True)
    (out / "a.json").write_text("{}")
    (out / "sub" / "b.csv").write_text("x\n1\n")
    tr = _tracker(wandb_env, name="run-b", job_type="evaluate")
    with pytest.raises(RuntimeError, match="boom"), tr:
        tr.log({"x": float("nan"), "y": float("inf"), "n": 3, "nested": {"k": 1.5}}, step=0)
        tr.log_artifact(out, name="eval outputs", type="eval")
        raise RuntimeError("boom")
    run = read_offline_run(tr.run_dir / f"run-{tr.run_id}.wandb")
    assert run.exit_code == 1
    (row,) = run.history
    assert math.isnan(row["x"]) and row["y"] == math.inf
    assert row["n"] == 3 and row["nested"] == {"k": 1.5}
    (art,) = run.artifacts
    assert art["name"] == "eval-outputs"
    assert sorted(art["files"]) == ["a.json", "sub/b.csv"]
    with pytest.raises(FileNotFoundError):
        tr.log_artifact(wandb_env / "missing", name="m", type="t")


def test_sequential_runs_in_one_process(wandb_env):
    ids = []
    for i in range(2):
        with _tracker(wandb_env, name=f"run-{i}", config={"i": i}) as tr:
            tr.log({"i": float(i)}, step=0)
            ids.append(tr.run_id)
    runs = [read_offline_run(p) for p in find_offline_runs(wandb_env / "wandb")]
    assert [r.run_id for r in runs] == ids
    assert [r.config for r in runs] == [{"i": 0}, {"i": 1}]
    assert [r.history[0]["i"] for r in runs] == [0.0, 1.0]


@pytest.mark.parametrize("raw", ["bogus", "dryrun"])
def test_unknown_or_alias_env_mode_still_records_offline(wandb_env, monkeypatch, raw):
    """A WANDB_MODE wandb itself rejects (or spells differently) must not cost the run.

    wandb validates WANDB_MODE from the environment even when ``mode=`` is
    given, so without the override an unknown value made every init raise and
    the tracker silently end as a no-op.
    """
    monkeypatch.setenv("WANDB_MODE", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resolve_mode's warning for 'bogus'
        tr = _tracker(wandb_env, name=f"run-{raw}")
    with tr:
        assert tr.mode == "offline" and tr.active
        tr.log({"a": 1.0}, step=0)
    assert os.environ["WANDB_MODE"] == raw  # restored after init
    (run,) = [read_offline_run(p) for p in find_offline_runs(wandb_env / "wandb")]
    assert run.history[0]["a"] == 1.0


def test_shared_mode_is_online():
    assert resolve_mode({"WANDB_MODE": "shared"}) == "online"


def test_disabled_mode_writes_nothing(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    f = wandb_env / "f.txt"
    f.write_text("x")
    before = sorted(wandb_env.rglob("*"))
    with _tracker(wandb_env / "runs") as tr:
        assert tr.mode == "disabled" and not tr.active
        assert tr.run_dir is None and tr.run_id is None
        tr.log({"a": 1.0}, step=0)
        tr.summary({"a": 1.0})
        tr.log_table("t", pd.DataFrame({"a": [1]}))
        assert tr.log_artifact(f, name="f", type="t") is None
    assert sorted(wandb_env.rglob("*")) == before


def test_wandb_errors_are_swallowed(wandb_env, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise wandb.errors.CommError("backend gone")

    with _tracker(wandb_env) as tr:
        tr.log({"a": 1.0}, step=5)
        with pytest.warns(RuntimeWarning, match="step 3 < last step 5"):
            tr.log({"a": 2.0}, step=3)
        with pytest.warns(RuntimeWarning, match="log_table failed"):
            tr.log_table("bad", object())
        original = tr._run.log
        monkeypatch.setattr(tr._run, "log", broken)
        with pytest.warns(RuntimeWarning, match="log failed.*backend gone"):
            tr.log({"b": 1.0}, step=6)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tr.log({"b": 2.0}, step=7)  # each failure kind warns once only
        monkeypatch.setattr(tr._run, "log", original)
    run = read_offline_run(tr.run_dir)
    assert [r["_step"] for r in run.history] == [5]
    assert run.history[0]["a"] == 1.0


# --------------------------------------------------------------------------- #
# Fallbacks
# --------------------------------------------------------------------------- #


def test_unreachable_online_falls_back_quickly(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning, match="falling back") as caught:
        tr = _tracker(wandb_env, init_timeout=3)
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller
    with tr:
        tr.log({"a": 1.0}, step=0)
        tr.summary({"b": 2.0})
    elapsed = time.monotonic() - t0
    assert elapsed < 60, elapsed
    assert tr.requested_mode == "online"
    assert tr.mode in ("offline", "disabled")
    if tr.mode == "offline":
        run = read_offline_run(tr.run_dir)
        assert run.history[0]["a"] == 1.0 and run.summary["b"] == 2.0
        # the failed online attempt's directory is not mistaken for a run
        assert find_offline_runs(wandb_env) == [tr.run_dir]

    # Later trackers in the process skip the online attempt entirely.
    t1 = time.monotonic()
    with _tracker(wandb_env, name="run-2", init_timeout=3) as tr2:
        pass
    assert tr2.mode == "offline"
    assert time.monotonic() - t1 < 2.5
    assert len(find_offline_runs(wandb_env)) == 2


def test_init_failure_everywhere_gives_noop(wandb_env, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise wandb.errors.CommError("no service")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.warns(RuntimeWarning, match="no-op"):
        tr = _tracker(wandb_env)
    with tr:
        assert tr.mode == "disabled" and not tr.active
        tr.log({"a": 1.0}, step=0)
        tr.summary({"a": 1.0})
    assert tr.run_dir is None


# --------------------------------------------------------------------------- #
# Reader edge cases on a synthetic log
# --------------------------------------------------------------------------- #


def _write_log(path: Path, payloads: list[bytes]) -> None:
    """Write records the way wandb-core's leveldb-style writer does."""
    block = 32 * 1024
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first = True
        rest = payload
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\x00" * left
                continue
            room = left - 7
            chunk, rest = rest[:room], rest[room:]
            if first and not rest:
                kind = 1
            elif first:
                kind = 2
            elif rest:
                kind = 3
            else:
                kind = 4
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if not rest:
                break
    path.write_bytes(bytes(out))


def test_reader_multi_chunk_records(tmp_path, caplog):
    from wandb.proto import wandb_internal_pb2 as pb

    payloads = []
    rec = pb.Record()
    rec.run.run_id = "abc"
    rec.run.run_group = "g"
    rec.run.job_type = "jt"
    item = rec.run.config.update.add()
    item.key, item.value_json = "huge", '"' + "y" * 100_000 + '"'  # first/middle/last chunks
    item = rec.run.config.update.add()
    item.key, item.value_json = "_wandb", "{}"
    payloads.append(rec.SerializeToString())
    for step in range(2000):
        rec = pb.Record()
        item = rec.history.item.add()
        item.nested_key.append("loss")
        item.value_json = repr(step / 2)
        rec.history.step.num = step
        payloads.append(rec.SerializeToString())
    rec = pb.Record()
    item = rec.summary.update.add()
    item.nested_key.extend(["a", "b"])
    item.value_json = "1"
    payloads.append(rec.SerializeToString())
    log_file = tmp_path / "run-abc.wandb"
    _write_log(log_file, payloads)

    run = read_offline_run(log_file)
    assert run.run_id == "abc" and run.group == "g" and run.job_type == "jt"
    assert run.config == {"huge": "y" * 100_000}
    assert [r["_step"] for r in run.history] == list(range(2000))
    assert [r["loss"] for r in run.history] == [s / 2 for s in range(2000)]
    assert run.summary == {"a": {"b": 1}}
    assert run.exit_code is None

    # A truncated tail (killed run) keeps everything before it.
    data = log_file.read_bytes()
    log_file.write_bytes(data[:-5])
    with caplog.at_level(logging.WARNING, logger="lopt.tracking.offline"):
        truncated = read_offline_run(log_file)
        assert len(truncated.history) == 2000 and truncated.summary == {}
        assert "(run still writing or crashed?)" in caplog.text
        caplog.clear()
        # a reader polling a run it knows is being written (the tracker's wait) is quiet
        read_offline_run(log_file, warn_truncated=False)
        assert caplog.text == ""

    # Corruption is an error, not silently wrong data.
    bad = bytearray(data)
    bad[20] ^= 0xFF
    log_file.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="CRC"):
        read_offline_run(log_file)
    log_file.write_bytes(b"nope" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        read_offline_run(log_file)


def test_reader_unwraps_legacy_value_nesting(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    rec = pb.Record()
    for key, value in {
        "lr": '{"value": 0.1, "desc": null}',
        "n": '{"value": 3}',
        "_wandb": '{"value": {}}',
    }.items():
        item = rec.config.update.add()
        item.key, item.value_json = key, value
    _write_log(tmp_path / "run-x.wandb", [rec.SerializeToString()])
    assert read_offline_run(tmp_path).config == {"lr": 0.1, "n": 3}


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, lopt.tracking; print('wandb' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_stalled_wandb_call_stops_tracking_instead_of_hanging_the_job(wandb_env, monkeypatch):
    """A call into the run that never returns (the service hung) costs the job at most
    the call timeout once: tracking stops with a warning, and later calls and finish()
    return at once without touching the run."""
    monkeypatch.setenv(tracking.tracker.CALL_TIMEOUT_ENV, "0.5")
    calls = []
    release = threading.Event()

    class HungRun:
        id = "hung"

        def log(self, data, step):
            calls.append(("log", step))
            if step == 2:
                release.wait(60)  # the service stopped answering

        def finish(self, exit_code=None):
            calls.append(("finish",))

    t = _tracker(wandb_env, mode="disabled")
    t._run, t.mode = HungRun(), "offline"
    t.log({"a": 1.0}, step=1)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match=r"W&B log did not return within 0\.5 s .*tracking stops"):
        t.log({"a": 2.0}, step=2)
    assert 0.4 < time.monotonic() - start < 5
    assert not t.active
    t.log({"a": 3.0}, step=3)
    t.summary({"b": 1})
    t.finish()
    assert calls == [("log", 1), ("log", 2)]  # nothing after the stall reached the run
    release.set()


def test_a_stopped_wandb_service_cannot_hang_a_real_run(tmp_path):
    """With the real wandb-core service frozen (SIGSTOP), a job that keeps logging still
    finishes and exits: the stalled call times out, the tracker kills the service it
    started, and wandb's exit hook then has nothing to wait for."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, time, warnings\n"
        "from pathlib import Path\n"
        "from wandb.sdk import wandb_setup\n"
        "from lopt.tracking import Tracker\n"
        f"t = Tracker('lopt-test', 'frozen', 'g', 'jt', {{}}, dir=Path({str(tmp_path)!r}), mode='offline',\n"
        "            settings={'x_disable_stats': True})\n"
        "assert t.active, 'no run'\n"
        "t.log({'x': 0.0}, step=0)\n"
        "pid = wandb_setup._singleton._connection._proc._process.pid\n"
        "os.kill(pid, signal.SIGSTOP)\n"
        "start = time.monotonic()\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    for step in range(1, 5000):\n"
        "        t.log({f'v{i}': float(i) for i in range(200)}, step=step)\n"
        "        if not t.active:\n"
        "            break\n"
        "    t.finish()\n"
        "print('STALLED' if any('tracking stops' in str(w.message) for w in seen) else 'NOT STALLED',\n"
        "      round(time.monotonic() - start, 1), flush=True)\n"
    )
    env = {**os.environ, "LOPT_WANDB_CALL_TIMEOUT": "3", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path),
           "WANDB_DATA_DIR": str(tmp_path)}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)  # this process's service (an earlier test's run): the job starts its own
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert "STALLED" in proc.stdout and "NOT STALLED" not in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # wandb's exit hook does not report the killed service
    assert time.monotonic() - start < 60, proc.stdout  # exit included: nothing waited on the frozen service
