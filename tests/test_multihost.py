"""Multi-host meta-training, simulated by several processes on this machine.

Two ``lopt meta-train`` processes, each with 2 fake CPU devices, are started the way
SLURM's ``srun --nodes=2 --ntasks-per-node=1 ... -n 2`` starts them: the same command, with SLURM_* variables giving each
its rank (JAX reads them itself; lopt decides to join because SLURM_NTASKS > 1). They
join through ``jax.distributed`` (gloo collectives on CPU) into one 4-device mesh. The
first run goes through the pipeline itself: Snakemake's meta_train rule with
``resources.meta_train.nodes: 2`` calls ``srun --nodes=2 --ntasks-per-node=1 ... -n 2 lopt meta-train ...``, answered by a
fake ``srun`` that starts the copies. Checked: the result matches a single process on
4 devices; only process 0 writes the outputs; the checkpoints they write together resume,
in two processes or in one. The launcher detection is unit-tested on fake environments.
"""

from __future__ import annotations

import csv
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import sandbox_env
from pipeline_utils import copy_repo, run

from lopt.config import DistributedConfig, validate_config
from lopt.runtime import SetupError, detect_launch, distributed_args

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "multihost",
    "lopt": {"kind": "mlp_lopt", "hidden_size": 8, "step_mult": 0.1},
    "meta_train": {
        "task": {"kind": "quadratic", "dim": 10},
        "estimator": "nres", "num_particles": 16, "trunc_length": 5, "horizon": 20,
        "outer_steps": 12, "checkpoint_every": 6, "log_every": 3, "devices": "all",
    },
    "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}], "num_steps": 20, "eval_every": 10},
    "tracking": {"mode": "disabled"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _config(tmp: Path, name: str, **meta_train) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(CONFIG))
    raw["data"] = {"root": str(tmp / "data")}
    raw["meta_train"].update(meta_train)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _env(tmp: Path, devices: int) -> dict[str, str]:
    env = sandbox_env(tmp)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


# `srun --nodes=N --ntasks-per-node=1 --cpus-per-task=C -n N CMD...` on one machine: N copies
# of CMD with the variables SLURM gives each task of a step (JAX derives the coordinator from
# them); fails if any copy fails, or if the options are not one task on each of N nodes.
FAKE_SRUN = """#!/bin/sh
case "$3" in --cpus-per-task=*) ;; *) echo "fake srun: no --cpus-per-task" >&2; exit 2;; esac
[ "$1" = "--nodes=$5" ] && [ "$2" = "--ntasks-per-node=1" ] && [ "$4" = "-n" ] || {
  echo "fake srun: expected --nodes=N --ntasks-per-node=1 --cpus-per-task=C -n N, got $*" >&2; exit 2; }
n=$5; shift 5
pids=""
i=0
while [ $i -lt $n ]; do
  SLURM_JOB_ID=4242 SLURM_STEP_NODELIST=localhost SLURM_NTASKS=$n SLURM_PROCID=$i \\
    SLURM_LOCALID=$i "$@" &
  pids="$pids $!"
  i=$((i + 1))
done
status=0
for pid in $pids; do wait $pid || status=1; done
exit $status
"""


def _srun(cfg: Path, out: Path, tmp: Path, num_processes: int = 2, resume: bool = False) -> list[str]:
    """Start ``num_processes`` copies as ``srun ... -n N`` would; returns their outputs."""
    port = _free_port()
    procs = []
    for rank in range(num_processes):
        env = _env(tmp, 2)
        env.update(
            SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(num_processes),
            SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), JAX_COORDINATOR_PORT=str(port),
        )
        cmd = ["lopt", "meta-train", "--config", str(cfg), "--out", str(out), "--quiet"]
        procs.append(subprocess.Popen(cmd + (["--resume"] if resume else []), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, text[-4000:]
        outputs.append(text)
    return outputs


def _single(cfg: Path, out: Path, tmp: Path, devices: int, resume: bool = False) -> None:
    cmd = ["lopt", "meta-train", "--config", str(cfg), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd + (["--resume"] if resume else []), check=False, cwd=ROOT, env=_env(tmp, devices),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _theta(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "meta_params.npz") as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    # the pipeline's meta_train job on 2 "hosts" for 6 steps (as if preempted there) ...
    repo = copy_repo(tmp / "repo")
    raw = yaml.safe_load(_config(tmp, "six", outer_steps=6).read_text())
    raw["resources"] = {"meta_train": {"nodes": 2}}
    (repo / "cfg.yaml").write_text(yaml.safe_dump(raw))
    fakes = tmp / "bin"
    fakes.mkdir()
    (fakes / "srun").write_text(FAKE_SRUN)
    (fakes / "srun").chmod(0o755)
    env = _env(tmp, 2)
    env.update(PATH=f"{fakes}:{env['PATH']}", JAX_COORDINATOR_PORT=str(_free_port()))
    target = "results/multihost/meta/meta_params.npz"
    proc, _ = run(["snakemake", "--cores", "2", "--configfile", "cfg.yaml", "-p", target], repo, env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert re.search(r"srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=\d+ -n 2 lopt meta-train", proc.stdout + proc.stderr)
    hosts = tmp / "hosts"
    shutil.copytree(repo / "results" / "multihost" / "meta", hosts)
    compute = yaml.safe_load((hosts / "meta_params.npz.json").read_text())["compute"]
    assert (compute["processes"], compute["devices"]) == (2, 4), compute
    shutil.copytree(hosts, tmp / "one_device")
    # ... then resubmitted for 12: resumes from the checkpoints both processes wrote together
    logs = _srun(_config(tmp, "twelve"), hosts, tmp, resume=True)
    # the reference: one process, the same 4 devices, straight through
    _single(_config(tmp, "twelve"), tmp / "one_process", tmp, devices=4)
    # the 2-host checkpoint resumed by one process on one device (resharded on restore)
    _single(_config(tmp, "twelve_one_device", devices=1), tmp / "one_device", tmp, devices=1, resume=True)
    return SimpleNamespace(tmp=tmp, logs=logs)


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    # same keys, same particles; only the order of float32 sums across devices and
    # processes differs, so agreement to 1e-5 of the parameters' scale (the 12 outer
    # steps move theta by ~1e-2, so a wrong or missing particle would show)
    assert got.keys() == want.keys()
    for name, value in want.items():
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_two_processes_form_one_mesh_and_match_one_process(runs):
    _assert_close(_theta(runs.tmp / "hosts"), _theta(runs.tmp / "one_process"))
    meta = yaml.safe_load((runs.tmp / "hosts" / "meta_params.npz.json").read_text())
    assert meta["compute"]["processes"] == 2 and meta["compute"]["devices"] == 4
    # and training moved theta far beyond that tolerance
    import jax

    from lopt.meta_train import build_trainer

    theta0 = build_trainer(validate_config(CONFIG)).init().theta
    flat, _ = jax.tree_util.tree_flatten_with_path(theta0)
    hosts = _theta(runs.tmp / "hosts")
    moved = max(float(np.abs(hosts[jax.tree_util.keystr(k)] - np.asarray(v)).max()) for k, v in flat)
    assert moved > 1e-3, moved


def test_only_process_zero_writes_and_resume_continues_the_log(runs):
    out = runs.tmp / "hosts"
    with open(out / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 13)), steps  # one writer, resumed at 6: no duplicated rows
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "6"]
    assert not list(out.rglob("*.orbax-checkpoint-tmp*"))
    assert sum("meta-trained multihost" in log for log in runs.logs) == 1  # one process reports


def test_multihost_checkpoint_resumes_in_one_process_on_one_device(runs):
    _assert_close(_theta(runs.tmp / "one_device"), _theta(runs.tmp / "one_process"))


# --- launcher detection (no processes started) -------------------------------------------

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def test_auto_stays_single_process_without_a_multi_process_launcher():
    auto = DistributedConfig()
    assert distributed_args(auto, env={}) is None
    # a one-task srun step keeps every GPU of its node: no jax.distributed, no pinning
    assert distributed_args(auto, env=dict(SLURM, SLURM_NTASKS="1")) is None
    assert distributed_args(DistributedConfig(mode="off"), env=dict(SLURM, SLURM_NTASKS="2")) is None


def test_auto_joins_a_slurm_job_with_every_local_gpu():
    env = dict(SLURM, SLURM_NTASKS="2", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert detect_launch(env).num_processes == 2 and detect_launch(env).process_id == 1
    kwargs = distributed_args(DistributedConfig(), env=env)
    # coordinator, count and rank are left to JAX's own SLURM detection
    assert kwargs == {"initialization_timeout": 300, "local_device_ids": [0, 1, 2, 3]}
    kwargs = distributed_args(DistributedConfig(), env=dict(SLURM, SLURM_NTASKS="2", SLURM_GPUS_ON_NODE="8"))
    assert kwargs["local_device_ids"] == list(range(8))
    explicit = DistributedConfig(local_device_ids=[0, 2])
    assert distributed_args(explicit, env=dict(env))["local_device_ids"] == [0, 2]


def test_explicit_coordinator_needs_a_rank_per_process():
    dist = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=4)
    with pytest.raises(SetupError, match="LOPT_PROCESS_ID"):
        distributed_args(dist, env={})
    kwargs = distributed_args(dist, env={"LOPT_PROCESS_ID": "3"})
    assert kwargs["coordinator_address"] == "10.0.0.1:1234"
    assert (kwargs["num_processes"], kwargs["process_id"]) == (4, 3)
    assert distributed_args(dist, process_id=2, env={})["process_id"] == 2
    assert "local_device_ids" not in kwargs  # nothing says how many GPUs: JAX's default (all)
    # Open MPI ranks count as a launcher too
    assert detect_launch({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"}).process_id == 2


def test_launches_jax_cannot_complete_name_the_keys():
    """Where JAX would stop at a bare "coordinator_address should be defined"."""
    keys = r"compute\.distributed\.coordinator_address.*compute\.distributed\.num_processes"
    with pytest.raises(SetupError, match=r"mode is 'on' but no multi-process launcher.*" + keys):
        distributed_args(DistributedConfig(mode="on"), env={})
    ompi5 = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}  # Open MPI 5: no orte_hnp_uri
    with pytest.raises(SetupError, match=r"OMPI_MCA_orte_hnp_uri is unset.*" + keys):
        distributed_args(DistributedConfig(), env=ompi5)
    # Open MPI 4 (JAX detects it), or either with an explicit coordinator, goes ahead
    assert distributed_args(DistributedConfig(), env=dict(ompi5, OMPI_MCA_orte_hnp_uri="x")) is not None
    dist = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=2)
    assert distributed_args(dist, env=ompi5)["process_id"] == 0


def test_unavailable_platform_is_a_clear_error(tmp_path):
    raw = dict(CONFIG, compute={"platform": "tpu"}, data={"root": str(tmp_path / "data")})
    validate_config(raw)
    cfg = tmp_path / "tpu.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "lopt.cli", "meta-train", "--config", str(cfg), "--out", str(tmp_path / "o")],
                          check=False, cwd=ROOT, env=_env(tmp_path, 1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "compute.platform" in proc.stderr and "allowed: auto, cpu, gpu, tpu" in proc.stderr
    assert str(cfg) in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing started


@pytest.mark.parametrize("bad, message", [
    ({"coordinator_address": "h:1"}, "coordinator_address and num_processes together"),
    ({"coordinator_address": "no-port", "num_processes": 2}, "compute.distributed.coordinator_address"),
    ({"mode": "sometimes"}, "'auto', 'on' or 'off'"),
])
def test_bad_distributed_config_names_the_key(bad, message):
    from lopt.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate_config(dict(CONFIG, compute={"distributed": bad}), "exp.yaml")

