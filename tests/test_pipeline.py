"""End to end: the smoke experiment through every stage, W&B read-back, DVC round trip."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pipeline_utils import planned_jobs, run, run_pipeline

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    repo, env, seconds, proc = run_pipeline(tmp, "configs/smoke.yaml")
    # the workflow profile (rerun triggers, rerun-incomplete) applies to a plain `snakemake`:
    # Snakemake looks for profiles/default next to the Snakefile (a link to workflow/profiles)
    assert "Using workflow specific profile profiles/default" in proc.stdout + proc.stderr
    return repo, env, seconds, tmp


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stage_wrote_its_outputs(smoke):
    repo, _, _, _ = smoke
    res = repo / "results" / "smoke"
    for png in ("meta_training.png", "eval_curves.png"):
        data = (res / "figures" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    table = (res / "tables" / "final_losses.md").read_text()
    for name in ("lopt", "sgd", "adam", "digits_mlp16"):
        assert name in table
    assert (repo / "data" / "digits" / "manifest.json").exists()
    steps = sorted(int(p.name) for p in (res / "meta" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 20
    metrics = pd.read_csv(res / "meta" / "metrics.csv")
    assert list(metrics["step"]) == list(range(1, 21))
    summary = pd.read_csv(res / "tables" / "summary.csv")
    assert set(summary["optimizer"]) == {"lopt", "sgd", "adam"}
    assert np.isfinite(summary["loss_mean"]).all()
    # baselines were tuned: the chosen rate is the best mean inner-valid loss of the sweep
    sweep = pd.read_csv(res / "eval" / "digits_mlp16" / "sweep.csv")
    for name, grp in sweep.groupby("optimizer"):
        assert grp.loc[grp["inner_valid_loss"].idxmin(), "selected"]


def test_wandb_offline_runs_hold_the_logged_metrics(smoke):
    from lopt.tracking import find_offline_runs, read_offline_run

    repo, env, _, _ = smoke
    runs = [read_offline_run(p) for p in find_offline_runs(Path(env["WANDB_DIR"]) / "wandb")]
    by_job = {r.job_type: r for r in runs}
    assert set(by_job) == {"meta-train", "baselines", "evaluate"}
    meta = by_job["meta-train"]
    assert meta.group == "smoke" and meta.config["name"] == "smoke"
    assert meta.config["meta_train"]["estimator"] == "nres"
    logged = dict(meta.series("meta/meta_loss"))
    metrics = pd.read_csv(repo / "results" / "smoke" / "meta" / "metrics.csv")
    assert sorted(logged) == list(metrics["step"])
    np.testing.assert_allclose([logged[s] for s in metrics["step"]], metrics["meta_loss"], rtol=1e-6)
    assert any(a["type"] == "learned-optimizer" for a in meta.artifacts)
    evaluate = by_job["evaluate"]
    summary = pd.read_csv(repo / "results" / "smoke" / "eval" / "digits_mlp16" / "summary.csv")
    row = summary[(summary.optimizer == "lopt") & (summary.split == "test")].iloc[0]
    assert evaluate.summary["eval/digits_mlp16/lopt/test_loss"] == pytest.approx(row.loss_mean)
    assert any("baselines/digits_mlp16/sweep" in row for row in by_job["baselines"].history)


def _push(repo, env, remote):
    for cmd in (
        ["dvc", "remote", "add", "-f", "-d", "testremote", str(remote)],
        ["dvc", "commit", "-f", "data", "pretrained@smoke", "experiment@smoke"],
        ["dvc", "push"],
    ):
        proc, _ = run(cmd, repo, env, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)


def _fresh_clone(repo: Path, dest: Path) -> Path:
    """Copy ``repo`` as a clone would have it: no outputs, DVC cache or Snakemake metadata."""

    def outputs_and_caches(directory, names):
        if Path(directory) == repo:
            return {"data", "results", ".snakemake"} & set(names)
        if Path(directory) == repo / ".dvc":
            return {"cache", "tmp"} & set(names)
        return set()

    shutil.copytree(repo, dest, ignore=outputs_and_caches)
    return dest


def test_dvc_push_pull_then_nothing_to_do(smoke):
    repo, env, _, tmp = smoke
    remote = tmp / "remote"
    before = {p: _sha(repo / p) for p in ("results/smoke/meta/meta_params.npz", "results/smoke/tables/summary.csv",
                                          "data/digits/train.npz")}
    _push(repo, env, remote)
    for path in ("data", "results", ".dvc/cache"):
        shutil.rmtree(repo / path)
    proc, _ = run(["dvc", "pull", "data", "pretrained@smoke", "experiment@smoke"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path, digest in before.items():
        assert _sha(repo / path) == digest, path
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_pull_pretrained_then_pipeline_reruns_only_evaluation_and_analysis(smoke, tmp_path):
    """A colleague's path: clone, `dvc pull data pretrained@smoke`, `snakemake`.

    Only the meta-trained optimizer (and data) come from the remote; Snakemake must plan
    evaluation and analysis and never meta-training, and the evaluation uses the pulled
    optimizer byte-for-byte.
    """
    repo, env, _, tmp = smoke
    remote = tmp / "remote_pretrained"
    _push(repo, env, remote)
    meta_sha = _sha(repo / "results/smoke/meta/meta_params.npz")
    clone = _fresh_clone(repo, tmp_path / "clone")
    proc, _ = run(["dvc", "pull", "data"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # `lopt evaluate --checkpoint` on a DVC-tracked path that is not in the workspace pulls
    # it; the baselines come from the first checkout's run (same settings: accepted)
    baselines = repo / "results/smoke/baselines/digits_mlp16"
    cmd = ["lopt", "evaluate", "--config", "configs/smoke.yaml", "--task", "digits_mlp16",
           "--checkpoint", "results/smoke/meta", "--baselines", str(baselines), "--out", str(tmp_path / "adhoc"),
           "--quiet"]
    proc, _ = run(cmd, clone, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    adhoc = (tmp_path / "adhoc" / "curves.csv").read_text()
    assert adhoc == (repo / "results/smoke/eval/digits_mlp16/curves.csv").read_text()  # the same optimizer
    proc, _ = run(["dvc", "pull", "data", "pretrained@smoke"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _sha(clone / "results/smoke/meta/meta_params.npz") == meta_sha
    assert not (clone / "results/smoke/eval").exists()
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    planned = _planned_rules(proc.stdout)
    assert planned == {"baselines", "evaluate", "analyze", "all"}, proc.stdout
    proc, _ = run(["snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml"], clone, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert _sha(clone / "results/smoke/meta/meta_params.npz") == meta_sha
    summary = pd.read_csv(clone / "results/smoke/tables/summary.csv")
    assert "lopt" in set(summary["optimizer"])


@pytest.mark.parametrize(
    ("old", "new", "planned"),
    [
        # an upstream job that reruns forces every job that reads its outputs
        # the baselines never depend on the learned optimizer: they stay
        ("outer_steps: 20", "outer_steps: 21", {"meta_train", "evaluate", "analyze"}),
        ("data: {root: data}", "data: {root: data, valid_fraction: 0.2}",
         {"prepare_data", "meta_train", "baselines", "evaluate", "analyze"}),
        ("num_seeds: 2", "num_seeds: 3", {"baselines", "evaluate", "analyze"}),
    ],
    ids=["meta_train", "data", "evaluation"],
)
def test_config_edit_reruns_the_stage_and_everything_downstream(smoke, old, new, planned):
    """Dry runs on the completed smoke pipeline: an edit plans its stage and all dependents."""
    repo, env, _, _ = smoke
    config = repo / "configs" / "smoke.yaml"
    text = config.read_text()
    assert old in text
    try:
        config.write_text(text.replace(old, new))
        proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], repo, env, timeout=300)
    finally:
        config.write_text(text)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert set(jobs) == planned | {"all"}, proc.stdout
    assert jobs["evaluate"] == 1  # every evaluation task of configs/smoke.yaml (one)


def test_fresh_clone_lopt_pull_everything_then_nothing_to_do(smoke, tmp_path):
    """`dvc pull` writes files in parallel in any order; `lopt pull` gives them one mtime,
    so a clone without Snakemake metadata plans nothing (Snakemake always compares times)."""
    repo, env, _, tmp = smoke
    _push(repo, env, tmp / "remote_everything")
    clone = _fresh_clone(repo, tmp_path / "clone")
    proc, _ = run(["lopt", "pull", "data", "pretrained@smoke", "experiment@smoke"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pulled = [p for d in ("data", "results/smoke") for p in (clone / d).rglob("*") if p.is_file()]
    assert len({p.stat().st_mtime_ns for p in pulled}) == 1
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
    # Pulling a subset again fetches nothing and must not make it newer than what was
    # made from it (a stamp of "now" would replan meta-training and everything after it).
    proc, _ = run(["lopt", "pull", "data"], clone, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], clone, env, timeout=300)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout


def _planned_rules(dry_run_stdout: str) -> set[str]:
    """Rule names in Snakemake's dry-run "Job stats" table."""
    lines = dry_run_stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    rules = set()
    for line in lines[start + 3 :]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        rules.add(parts[0])
    return rules


def test_more_meta_seeds_train_and_evaluate_only_the_new_optimizers(smoke, tmp_path):
    """`num_meta_seeds: 2` on the finished smoke run: Snakemake meta-trains and evaluates the
    seed-1 optimizer alone (the seed-0 run, its evaluation and the baselines stay), and
    tables/meta_seeds.csv holds each seed's ratio as the seed's own summary gives it."""
    from lopt.analysis.tables import generalization_frame
    from lopt.tracking import find_offline_runs, read_offline_run

    repo, env, _, _ = smoke
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns("cache", "tmp"))
    env = dict(env, WANDB_DIR=str(tmp_path))  # this test's W&B runs only
    config = copy / "configs" / "smoke.yaml"
    config.write_text(config.read_text().replace("seed: 0\n", "seed: 0\nnum_meta_seeds: 2\n"))
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], copy, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {"meta_train_seed": 1, "evaluate_seed": 1, "analyze": 1, "all": 1}, proc.stdout
    main_sha = _sha(copy / "results/smoke/meta/meta_params.npz")
    proc, _ = run(["snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml"], copy, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    res = copy / "results" / "smoke"
    seed1 = res / "meta_seeds" / "seed1"
    assert _sha(res / "meta/meta_params.npz") == main_sha
    assert _sha(seed1 / "meta/meta_params.npz") != main_sha  # another draw, not a copy
    recorded = pd.read_json(seed1 / "meta/meta_params.npz.json", typ="series")
    assert recorded["config"]["seed"] == 1
    assert "Meta-trained by experiment `smoke` from meta-training seed 1 (num_meta_seeds = 2):" in (seed1 / "meta/model_card.md").read_text()
    # both optimizers face the same tuned baselines, row for row
    curves = {s: pd.read_csv(d / "eval/digits_mlp16/curves.csv") for s, d in ((0, res), (1, seed1))}
    baselines = [c[c["optimizer"] != "lopt"].reset_index(drop=True) for c in curves.values()]
    pd.testing.assert_frame_equal(*baselines)
    table = pd.read_csv(res / "tables" / "meta_seeds.csv")
    assert sorted(table["meta_seed"]) == [0, 1]
    for seed, directory in ((0, res), (1, seed1)):
        own = generalization_frame(pd.read_csv(directory / "eval/digits_mlp16/summary.csv"))
        assert table.loc[table["meta_seed"] == seed, "ratio"].item() == pytest.approx(own["ratio"].item(), rel=1e-12)
    assert table["ratio"].nunique() == 2
    markdown = (res / "tables" / "meta_seeds.md").read_text()
    assert "seeds 0 / 1" in markdown and "digits_mlp16" in markdown
    assert (res / "figures" / "meta_seeds.png").read_bytes().startswith(b"\x89PNG")
    names = {read_offline_run(p).name for p in find_offline_runs(tmp_path / "wandb")}
    assert names == {"smoke-meta-train-seed1", "smoke-eval-digits_mlp16-seed1"}

    # `lopt evaluate --meta-seed 1` alone finds seed 1's optimizer (not the experiment's)
    cmd = ["lopt", "evaluate", "--config", "configs/smoke.yaml", "--task", "digits_mlp16", "--meta-seed", "1",
           "--baselines", "results/smoke/baselines/digits_mlp16", "--out", str(tmp_path / "adhoc"), "--quiet"]
    proc, _ = run(cmd, copy, dict(env, WANDB_MODE="disabled"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "adhoc/curves.csv").read_text() == (seed1 / "eval/digits_mlp16/curves.csv").read_text()

    # up to date: a touched config reruns nothing; a meta-training edit reruns every seed
    config.touch()
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], copy, env, timeout=300)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
    text = config.read_text()
    config.write_text(text.replace("outer_steps: 20", "outer_steps: 21"))
    proc, _ = run(["snakemake", "-n", "--configfile", "configs/smoke.yaml"], copy, env, timeout=300)
    assert planned_jobs(proc.stdout) == {"meta_train": 1, "meta_train_seed": 1, "evaluate": 1, "evaluate_seed": 1,
                                         "analyze": 1, "all": 1}, proc.stdout

    # back to one meta-seed: analyze reruns and drops the spread it no longer has
    config.write_text(text.replace("num_meta_seeds: 2\n", ""))
    proc, _ = run(["snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml"], copy, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert planned_jobs(proc.stderr) == {"analyze": 1, "all": 1}, proc.stderr  # a real run logs its plan on stderr
    assert not (res / "tables" / "meta_seeds.md").exists() and not (res / "figures" / "meta_seeds.png").exists()
