"""Run the Snakemake pipeline in a throwaway copy of the repository."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from conftest import REPO, sandbox_env

_TOP_LEVEL = {".venv", ".git", "data", "results", ".snakemake", "wandb", ".pytest_cache", ".ruff_cache"}
_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _ignore(directory: str, names: list[str]) -> set[str]:
    """Skip outputs and caches: top-level run state, and caches at any depth."""
    skipped = set(_ANYWHERE(directory, names))
    if Path(directory) == REPO:
        skipped |= _TOP_LEVEL & set(names)
    if Path(directory) == REPO / ".dvc":
        skipped |= {"cache", "tmp"} & set(names)
    return skipped


def copy_repo(dest: Path) -> Path:
    """Copy the working tree (no venv, outputs or caches) to ``dest`` and git-init it."""
    shutil.copytree(REPO, dest, ignore=_ignore)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc, time.perf_counter() - start


def run_pipeline(tmp_path: Path, config: str, cores: int = 2):
    """Copy the repo into ``tmp_path/repo`` and run ``snakemake`` for ``config``."""
    repo = copy_repo(tmp_path / "repo")
    env = sandbox_env(tmp_path)
    proc, seconds = run(["snakemake", "--cores", str(cores), "--configfile", config], repo, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return repo, env, seconds, proc


def planned_resources(dry_run: str) -> dict[str, str]:
    """rule name -> its `resources:` line, from a dry run's job listing."""
    jobs, rule = {}, None
    for line in dry_run.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            jobs[rule] = line.strip()
    return jobs


def planned_jobs(dry_run: str) -> dict[str, int]:
    """rule -> job count from a dry run's "Job stats" table ({} when nothing is to be done)."""
    if "Nothing to be done" in dry_run:
        return {}
    lines = dry_run.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    jobs = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def cluster_config(name: str, meta_train_resources: dict) -> dict:
    """A seconds-scale quadratic experiment for the cluster-executor tests (plans and
    submissions, never real training); ``resources.meta_train`` as given."""
    return {
        "name": name,
        "meta_train": {"task": {"kind": "quadratic", "dim": 10}, "num_particles": 8,
                       "trunc_length": 5, "horizon": 20, "outer_steps": 5},
        "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}],
                       "num_steps": 20, "eval_every": 10},
        "resources": {"meta_train": meta_train_resources},
    }


def assert_lopt_beats_tuned_sgd(results: Path, tasks: set[str]) -> None:
    """The default experiment's headline from its ``tables/summary.csv``: the learned
    optimizer's mean final training loss over the held-out ``tasks`` is below tuned SGD's."""
    import pandas as pd

    summary = pd.read_csv(results / "tables" / "summary.csv")
    train = summary[summary["split"] == "train"]
    assert set(train["task"]) == tasks
    for name in ("lopt", "sgd"):  # every task present and not NaN: a mean must not skip one
        mine = train[train["optimizer"] == name]
        assert set(mine["task"]) == tasks and mine["loss_mean"].notna().all(), mine
    mean_final = train.groupby("optimizer")["loss_mean"].mean()
    assert mean_final["lopt"] < mean_final["sgd"], mean_final.to_dict()
