"""Cluster execution through Snakemake's SLURM executor plugin, checked without a cluster.

Every rule declares its stage's resources from the config (`resources.<stage>`); the
`workflow/profiles/slurm` profile plans them, and the plugin turns them into an sbatch
call. Fake `sbatch` / `sacct` / `squeue` / `scontrol` / `sacctmgr` / `sshare` scripts on
PATH record what the plugin runs, so the test reads the exact submission command.

The last tests check what a cluster job's log shows for a user's mistake: a clear
one-line error, never a traceback (several --configfile, an unknown evaluation task,
checkpoints a non-resuming meta-train would overwrite).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, sandbox_env
from pipeline_utils import cluster_config, copy_repo, planned_jobs, planned_resources, run

CONFIG = cluster_config("quadslurm", {"gpus": 4, "gpu_model": "a100", "partition": "gpu", "mem_mb": 16000,
                                     "runtime": 180, "cpus": 16, "nodes": 2})
# one host: the job's GPUs as --gpus (the multi-host CONFIG asks per node, --gres)
ONE_HOST = cluster_config("quadslurm1", {"gpus": 2, "gpu_model": "a100", "partition": "gpu", "mem_mb": 16000,
                                         "runtime": 180, "cpus": 16})
FAKES = {
    "sbatch": 'echo "$@" >> "$FAKE_SLURM_LOG"\necho 12345',
    "sacctmgr": "echo lopt",  # the account the profile names exists
    "sshare": "echo lopt",
    "sacct": "exit 0",
    "squeue": "exit 0",
    "scontrol": "exit 0",
    "sinfo": "exit 0",
}


@pytest.fixture(scope="module")
def cluster_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    repo = copy_repo(tmp / "repo")
    (repo / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    (repo / "one_host.yaml").write_text(yaml.safe_dump(ONE_HOST))
    fakes = tmp / "bin"
    fakes.mkdir()
    for name, body in FAKES.items():
        path = fakes / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    env = sandbox_env(tmp)
    env["PATH"] = f"{fakes}{os.pathsep}{env['PATH']}"
    env["FAKE_SLURM_LOG"] = str(tmp / "sbatch.log")
    return repo, env, tmp


def test_slurm_profile_plans_every_rule_with_configured_resources(cluster_repo):
    repo, env, _ = cluster_repo
    proc, _ = run(["snakemake", "-n", "-p", "--profile", "workflow/profiles/slurm", "--configfile", "cfg.yaml"], repo, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_resources(proc.stdout)
    # resources.meta_train.nodes = 2: srun starts one lopt process per host; others run once
    commands = [line for line in proc.stdout.splitlines() if line.startswith("Shell command:")]
    assert any(c.startswith("Shell command: srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 -n 2 lopt meta-train --config") for c in commands), commands
    assert any(c.startswith("Shell command: lopt evaluate") for c in commands), commands
    assert {"meta_train", "evaluate", "analyze"} <= set(jobs), jobs
    meta = jobs["meta_train"]
    # 4 GPUs over 2 hosts: 2 per node (sbatch --gpus would be a job total SLURM may split unevenly)
    assert "gres=gpu:a100:2" in meta and " gpu=" not in meta and "gpu_model=" not in meta, meta
    for item in ("slurm_partition=gpu", "mem_mb=16000", "runtime=180",
                 "nodes=2", "tasks=2", "mpi=srun"):
        assert item in meta, meta
    # other stages keep the defaults: no GPU, the profile's partition
    assert "gpu=" not in jobs["evaluate"] and "slurm_partition=cpu" in jobs["evaluate"], jobs["evaluate"]
    assert "runtime=60" in jobs["evaluate"] and "mem_mb=4000" in jobs["evaluate"]
    for item in ("gpu=", "slurm_partition=cpu", "runtime=60", "mem_mb=4000"):  # resources.evaluate's
        assert (item in jobs["baselines"]) == (item in jobs["evaluate"]), (item, jobs["baselines"])


def test_slurm_plans_every_meta_seed_with_the_meta_train_resources(cluster_repo):
    """num_meta_seeds > 1: each other seed is its own meta-train job with the GPUs, nodes and
    launcher of `resources.meta_train` (on a cluster the seeds run side by side)."""
    repo, env, _ = cluster_repo
    (repo / "seeds.yaml").write_text(yaml.safe_dump(dict(CONFIG, name="quadseeds", num_meta_seeds=3)))
    proc, _ = run(["snakemake", "-n", "-p", "--profile", "workflow/profiles/slurm", "--configfile", "seeds.yaml"], repo, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout)["meta_train_seed"] == 2 and planned_jobs(proc.stdout)["evaluate_seed"] == 2
    jobs = planned_resources(proc.stdout)
    assert jobs["meta_train_seed"] == jobs["meta_train"], (jobs["meta_train_seed"], jobs["meta_train"])
    assert jobs["evaluate_seed"] == jobs["evaluate"]
    commands = [line for line in proc.stdout.splitlines() if line.startswith("Shell command:")]
    for seed in (1, 2):
        flags = f"seeds.yaml --meta-seed {seed} --out results/quadseeds/meta_seeds/seed{seed}/meta --resume"
        assert any(c.startswith("Shell command: srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 -n 2 lopt meta-train")
                   and c.endswith(flags) for c in commands), commands
        # the seed's evaluation reads the seed's optimizer and writes beside it
        evaluate = (f"--meta-seed {seed} --task quad --checkpoint results/quadseeds/meta_seeds/seed{seed}/meta/meta_params.npz "
                    f"--baselines results/quadseeds/baselines/quad --out results/quadseeds/meta_seeds/seed{seed}/eval/quad")
        assert any(c.startswith("Shell command: lopt evaluate") and evaluate in c for c in commands), commands


def _first_sbatch_call(repo, env, target, configfile):
    """Start snakemake on the SLURM profile and return the plugin's first sbatch call."""
    log = Path(env["FAKE_SLURM_LOG"])
    log.unlink(missing_ok=True)
    cmd = ["snakemake", target, "--profile", "workflow/profiles/slurm", "--configfile", configfile]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (log.exists() and log.read_text().strip()):
            assert proc.poll() is None, "snakemake exited before submitting"
            assert time.time() < deadline, "no sbatch call within 120 s"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    return log.read_text().splitlines()[0].split()


def test_slurm_submission_requests_the_configured_gpus(cluster_repo):
    repo, env, _ = cluster_repo
    call = _first_sbatch_call(repo, env, "results/quadslurm/meta/meta_params.npz", "cfg.yaml")
    # the plugin's sbatch flags for the meta_train job, from resources.meta_train:
    # 4 GPUs over 2 hosts, as 2 on each node
    assert "--gres=gpu:a100:2" in call and not any(flag.startswith("--gpus") for flag in call), call
    assert call[call.index("-p") + 1] == "gpu"
    assert call[call.index("-t") + 1] == "180"
    assert call[call.index("--mem") + 1] == "16000"
    assert call[call.index("-A") + 1] == "lopt"
    # two hosts, one process each (the rule's command starts with `srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=16 -n 2`), 16 cores each
    assert "--nodes=2" in call and "--ntasks=2" in call and "--cpus-per-task=16" in call
    assert not any(flag.startswith("--ntasks-per-gpu") for flag in call)
    assert "--comment" in call and call[call.index("--comment") + 1] == "rule_meta_train"


def test_slurm_one_host_submission_requests_the_job_gpus(cluster_repo):
    repo, env, _ = cluster_repo
    call = _first_sbatch_call(repo, env, "results/quadslurm1/meta/meta_params.npz", "one_host.yaml")
    assert "--gpus=a100:2" in call and not any(flag.startswith("--gres") for flag in call), call
    assert "--cpus-per-task=16" in call and call[call.index("-p") + 1] == "gpu"
    assert not any(flag.startswith("--nodes") for flag in call), call


def test_several_configfiles_fail_naming_them(cluster_repo):
    """lopt reads one experiment file: Snakemake merging several would not reach it."""
    repo, env, _ = cluster_repo
    (repo / "other.yaml").write_text(yaml.safe_dump(CONFIG | {"name": "other"}))
    proc, _ = run(["snakemake", "-n", "--cores", "1", "--configfile", "cfg.yaml", "other.yaml"], repo, env, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    out = proc.stdout + proc.stderr
    assert "WorkflowError" in out and "one experiment config per run" in out, out[-3000:]
    assert f"{repo / 'cfg.yaml'} {repo / 'other.yaml'}" in out, out[-3000:]
    # the same file twice is still one config
    proc, _ = run(["snakemake", "-n", "--cores", "1", "--configfile", "cfg.yaml", "cfg.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _lopt(repo, env, *args: str) -> subprocess.CompletedProcess:
    """`lopt ARGS` in-process in a fresh interpreter; fails if validation imported JAX."""
    code = "import sys; from lopt.cli import main; rc = main(sys.argv[1:]); print('jax' in sys.modules); sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_evaluate_unknown_task_is_a_config_error_before_any_work(cluster_repo):
    repo, env, _ = cluster_repo
    proc = _lopt(repo, env, "evaluate", "--config", "cfg.yaml", "--task", "nope")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("error: cfg.yaml: --task 'nope' is not one of the config's evaluation.tasks; "
                                   "allowed: quad"), proc.stderr
    assert proc.stdout.strip() == "False"  # validated before JAX (and before any W&B run)


@pytest.mark.parametrize("damage", ["flipped_byte", "not_npz", "bad_json"])
def test_evaluate_with_a_damaged_checkpoint_is_a_one_line_error(cluster_repo, tmp_path, damage):
    """A corrupt meta_params.npz or sidecar: exit 2, one line naming the file, no traceback,
    and no tracked (W&B) run started for it."""
    repo, env, _ = cluster_repo
    run_dir = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "old_run", run_dir)
    npz, sidecar = run_dir / "meta_params.npz", run_dir / "meta_params.npz.json"
    if damage == "flipped_byte":
        raw = bytearray(npz.read_bytes())
        raw[-40] ^= 0xFF
        npz.write_bytes(bytes(raw))
        expected = f"error: {npz}: corrupt (its sha256 differs from the one in {sidecar})"
    elif damage == "not_npz":
        npz.write_bytes(b"not a zip file")
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps(dict(meta, sha256=hashlib.sha256(b"not a zip file").hexdigest())))
        expected = f"error: {npz}: not a meta-parameter .npz"
    else:
        sidecar.write_text("{\n")
        expected = f"error: {sidecar}: not valid JSON"
    proc = _lopt(repo, env, "evaluate", "--config", "cfg.yaml", "--task", "quad", "--checkpoint", str(npz))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "wandb" not in proc.stderr.lower(), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr


def test_evaluate_with_baselines_of_other_settings_is_a_one_line_error(cluster_repo, tmp_path):
    """`lopt evaluate --baselines DIR` checks DIR before any training or tracked run: other
    settings, or no `lopt baselines` output at all, are one line naming the file."""
    repo, env, _ = cluster_repo
    npz = REPO / "tests" / "fixtures" / "old_run" / "meta_params.npz"
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"settings": {"task_name": "quad", "num_seeds": 99}}))
    for directory, expected in ((other, f"error: {other / 'settings.json'}: baselines computed under other settings ("),
                                (tmp_path, f"error: {tmp_path / 'settings.json'}: not found; write the baselines")):
        proc = _lopt(repo, env, "evaluate", "--config", "cfg.yaml", "--task", "quad", "--checkpoint", str(npz),
                     "--baselines", str(directory), "--out", str(tmp_path / "out"))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and "wandb" not in proc.stderr.lower(), proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
        assert directory == tmp_path or "num_seeds: 99 there, 5 here" in lines[0] and "lr_grid: absent there" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_analyze_without_results_and_variance_without_its_section_are_one_line_errors(cluster_repo, tmp_path):
    repo, env, _ = cluster_repo
    proc = _lopt(repo, env, "analyze", "--config", "cfg.yaml", "--results", str(tmp_path / "none"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: cfg.yaml: no results to analyse at {tmp_path / 'none' / 'meta' / 'metrics.csv'}, "), proc.stderr
    assert "run meta-train and evaluate first" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    study = "configs/paper/pes_influence.yaml"  # has no analysis.variance
    proc = _lopt(repo, env, "variance", "--config", study)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: {study}: analysis.variance is not set; give it (trunc_lengths, ...) to run `lopt variance`"
    assert proc.stdout.strip() == "False"  # refused before JAX


def test_meta_train_over_existing_checkpoints_is_a_one_line_error(cluster_repo, tmp_path):
    repo, env, _ = cluster_repo
    out = tmp_path / "meta"
    (out / "checkpoints" / "5").mkdir(parents=True)
    proc = _lopt(repo, env, "meta-train", "--config", "cfg.yaml", "--out", str(out), "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # the last line (W&B's offline notes come first: the run had started)
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {out / 'checkpoints'} already holds checkpoints; "
                                                    "pass --resume to continue or delete it"), proc.stderr


def test_slurm_profile_plans_a_study_with_its_resources_and_compute(cluster_repo):
    """A paper study on the SLURM profile: every (method, seed) run asks for the GPU and
    memory of `resources.study_run`, the analysis keeps the defaults (no GPU, the profile's
    CPU partition), and a study's `compute` section (devices, platform) validates there."""
    repo, env, _ = cluster_repo
    raw = yaml.safe_load((repo / "configs" / "paper" / "toy_schedule.yaml").read_text())
    raw["name"] = "toyslurm"
    raw["compute"] = {"devices": "all", "platform": "gpu"}
    raw["resources"] = {"study_run": {"gpus": 1, "gpu_model": "a100", "partition": "gpu", "mem_mb": 12000,
                                      "runtime": 45, "cpus": 4}}
    (repo / "study.yaml").write_text(yaml.safe_dump(raw))
    proc, _ = run(["snakemake", "-n", "-p", "--profile", "workflow/profiles/slurm", "--configfile", "study.yaml"],
                  repo, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_resources(proc.stdout)
    assert {"study_run", "study_analyze"} <= set(jobs), jobs
    for item in ("gpu=1", "gpu_model=a100", "slurm_partition=gpu", "mem_mb=12000", "runtime=45"):
        assert item in jobs["study_run"], jobs["study_run"]
    assert "gpu=" not in jobs["study_analyze"] and "slurm_partition=cpu" in jobs["study_analyze"], jobs["study_analyze"]
    runs = [line for line in proc.stdout.splitlines() if line.startswith("Shell command: lopt study-run")]
    assert len(runs) == len(raw["methods"]) * raw["seeds"], len(runs)
