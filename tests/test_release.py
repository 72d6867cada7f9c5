"""The released default experiment: what `lopt pull -r release` gives a fresh clone.

The repository ships the default experiment's DVC outputs (data, the meta-trained
optimizer with its checkpoints, evaluation, figures, tables) in its ``release`` remote
(``dvc-release/``, ``dvc.lock``). These tests fail when that release no longer matches
the code and ``configs/default.yaml``; ``make release`` refreshes it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import sandbox_env
from pipeline_utils import assert_lopt_beats_tuned_sgd, copy_repo, planned_jobs, run

pytestmark = pytest.mark.e2e

RELEASED = ("data", "pretrained@default", "experiment@default")


def _pull(tmp_path, *targets: str):
    repo = copy_repo(tmp_path / "repo")
    env = sandbox_env(tmp_path)
    proc, _ = run(["lopt", "pull", "--remote", "release", *targets], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return repo, env


def test_pulled_optimizer_is_the_current_default_config_and_only_evaluation_is_planned(tmp_path, monkeypatch):
    """A colleague's path without a shared remote: pull the optimizer, re-run the figures.

    No ``--remote`` anywhere: the default remote (the lab store, absent in a fresh clone)
    fails and both ``lopt pull`` and ``--checkpoint`` resolution fall back to ``release``.
    """
    from lopt.artifacts import remotes, resolve_checkpoint
    from lopt.config import load_config
    from lopt.meta_train import fingerprint
    from lopt.optimizers.pretrained import load_pretrained

    repo = copy_repo(tmp_path / "repo")
    env = sandbox_env(tmp_path)
    assert remotes(repo) == ["local", "release"]
    assert not (tmp_path / "lopt-dvc-store").exists()  # where the default remote points
    proc, _ = run(["lopt", "pull", "data"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trying remote 'release'" in proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr  # the failed attempt's DVC error is held back
    monkeypatch.chdir(repo)
    meta = repo / "results" / "default" / "meta"
    assert not meta.exists()
    assert resolve_checkpoint("results/default/meta") == Path("results/default/meta/meta_params.npz")
    cfg = load_config(repo / "configs" / "default.yaml")
    stamp = json.loads((meta / "checkpoints" / "fingerprint.json").read_text())
    assert stamp["fingerprint"] == fingerprint(cfg), (
        "configs/default.yaml changed what meta-training computes: refresh the release (make release)"
    )
    released = load_pretrained(meta / "meta_params.npz")  # verifies the sha256 in its metadata
    assert released.metadata["config"]["lopt"] == cfg.to_dict()["lopt"]
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/default.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tasks = len(cfg.evaluation.tasks)
    assert planned_jobs(proc.stdout) == {"baselines": tasks, "evaluate": tasks, "analyze": 1, "all": 1}


def test_released_evaluation_is_what_the_current_code_computes_from_the_released_optimizer(tmp_path):
    """Re-train one held-out task with the released optimizer; compare with the released curves.

    Tolerance 2 % of each seed's final test loss: float32 sums reassociate differently on
    another CPU (XLA picks kernels per instruction set) and 200 inner steps amplify that,
    while a changed task, data split, optimizer or evaluation protocol moves the loss far
    more (the untrained optimizer leaves it at ~2.3 nats; the released one at ~0.17).
    """
    from lopt.config import load_config
    from lopt.evaluate import train_curves
    from lopt.evaluate.baselines import baseline_factory
    from lopt.optimizers.pretrained import load_pretrained
    from lopt.tasks import build_task

    repo, env = _pull(tmp_path, *RELEASED)
    cfg = load_config(repo / "configs" / "default.yaml")
    ev = cfg.evaluation

    assert_lopt_beats_tuned_sgd(repo / "results/default", {t.name for t in ev.tasks})  # as released

    spec = next(t for t in ev.tasks if t.name == "digits_mlp32_heldout")
    num_steps = spec.num_steps or ev.num_steps
    task, data = build_task(spec.task, repo / cfg.data.root, ev.eval_batch_size, data_cfg=cfg.data)
    seeds = ev.seed_offset + np.arange(ev.num_seeds)
    released = pd.read_csv(repo / "results/default/eval" / spec.name / "curves.csv")
    final = released[(released.split == "test") & (released.step == num_steps)]

    def released_final(optimizer: str) -> np.ndarray:
        return final[final.optimizer == optimizer].set_index("seed").loc[seeds, "loss"].to_numpy()

    learned = load_pretrained(repo / "results/default/meta/meta_params.npz").to_optax(num_steps)
    curves = train_curves(task, lambda _: learned, jnp.zeros((1,)), seeds, data, num_steps, ev.eval_every)
    assert released_final("lopt").mean() < 1.0  # the released optimizer trains this task (untrained: ~2.3)
    np.testing.assert_allclose(curves["test_loss"][0, :, -1], released_final("lopt"), rtol=0.02)

    # and the other side of the headline: tuned SGD at its released rate and schedule
    sgd = final[final.optimizer == "sgd"].iloc[0]
    make_sgd = baseline_factory(task, "sgd", sgd.schedule, num_steps)
    curves = train_curves(task, make_sgd, jnp.asarray([sgd.learning_rate]), seeds, data, num_steps, ev.eval_every)
    np.testing.assert_allclose(curves["test_loss"][0, :, -1], released_final("sgd"), rtol=0.02)

    # and with everything pulled, Snakemake has nothing left to do
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/default.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {}, proc.stdout

    # pulled outputs carry no Snakemake metadata, so the params trigger cannot see a config
    # edit made after the pull; the config recorded in meta_params.npz.json can
    config = repo / "configs" / "default.yaml"
    text = config.read_text()
    assert "outer_steps: 400" in text
    config.write_text(text.replace("outer_steps: 400", "outer_steps: 300"))
    future = time.time() + 60  # newer than every pulled file, whatever the clock's resolution
    os.utime(config, (future, future))
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/default.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {"meta_train": 1, "evaluate": 3, "analyze": 1, "all": 1}, proc.stdout
    # the message names the setting that changed, not every section compared
    assert re.search(r"meta_params\.npz\.json was computed with other settings than \S+ \(meta_train\.outer_steps\)", proc.stderr)
    assert "settings.json was computed with other" not in proc.stderr  # the baselines stay

    # an evaluation edit: the pulled baselines record their config too, and rerun
    config.write_text(text.replace("num_seeds: 5", "num_seeds: 4"))
    os.utime(config, (future, future))
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/default.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {"baselines": 3, "evaluate": 3, "analyze": 1, "all": 1}, proc.stdout
    assert re.search(r"settings\.json was computed with other settings than \S+ \(evaluation\.num_seeds\)", proc.stderr)


RETRACED_STEPS = 20


def test_meta_training_from_scratch_retraces_the_released_run(tmp_path):
    """The current code, meta-training the default config from scratch, walks the released path.

    The fingerprint check above catches a config edit; this catches a code change to what
    the default run computes (tasks, data, features, estimator, outer update), which the
    full pipeline (tests/test_default_run.py, opt-in) would otherwise be needed for. The
    first 20 outer steps' meta-losses must match the released log to 1e-3 relative.

    Why 20 steps and 1e-3: on a CPU other than the release's, float32 sums reassociate and
    the path differs by 2e-7 over the first 33 steps, then jumps (3e-5 at step 35, 1e-2 by
    step 80, 1e-1 by step 400: meta-training amplifies rounding), so 20 steps keep a wide
    margin (other rounding on purpose, XLA:CPU at LLVM -O0 or on one core: 4.5e-7). Over those 20 steps a 0.5 % change of sigma moves the path by 1.4e-3, a 1 %
    change of the outer learning rate by 1.3e-2, and MLPLOpt's epsilon 1e-8 -> 1e-7 by 8e-3.
    """
    from lopt.config import validate_config
    from lopt.meta_train import meta_train

    repo, _ = _pull(tmp_path, "data", "pretrained@default")
    raw = yaml.safe_load((repo / "configs" / "default.yaml").read_text())
    raw["data"]["root"] = str(repo / raw["data"]["root"])
    raw["meta_train"]["outer_steps"] = RETRACED_STEPS  # nothing in a step depends on the total
    raw["tracking"] = {"mode": "disabled"}
    out = tmp_path / "out"
    meta_train(validate_config(raw), out, progress=False)

    ours = pd.read_csv(out / "metrics.csv")
    released = pd.read_csv(repo / "results/default/meta/metrics.csv").iloc[:RETRACED_STEPS]
    assert list(ours["step"]) == list(released["step"]) == list(range(1, RETRACED_STEPS + 1))
    for column in ("episodes_done", "diverged", "skipped_updates"):
        np.testing.assert_array_equal(ours[column], released[column], err_msg=column)
    np.testing.assert_allclose(ours["meta_loss"], released["meta_loss"], rtol=1e-3)
    assert released["meta_loss"].iloc[-1] < 0.5 * released["meta_loss"].iloc[0]  # a path that learns
