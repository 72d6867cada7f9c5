"""Where the numerics run: JAX platform and the processes of a multi-host job.

:func:`setup` is called once per process by the command line, after the config is
validated and before anything touches a JAX backend. It

1. selects the platform (``compute.platform``: ``auto``, ``cpu``, ``gpu``, ``tpu``), and
2. joins a multi-host job through :func:`jax.distributed.initialize` when
   ``compute.distributed`` asks for it: one process per host, each driving all its
   local accelerators; afterwards ``jax.devices()`` lists every device of every host
   and one jitted program spans them (:mod:`lopt.sharding`).
3. lowers Threefry on CPU round by round (:mod:`lopt.threefry_cpu`): the same random
   bits, compiled about twice as fast.

Who launches the processes is the cluster's business, never lopt's: SLURM's ``srun``
(the Snakemake rule does this when ``resources.meta_train.nodes > 1``), Open MPI's
``mpirun``, or a person starting one process per host with ``LOPT_PROCESS_ID=i`` and an
explicit ``coordinator_address`` / ``num_processes``. JAX reads the launcher's
environment itself (coordinator = first host of the SLURM step); lopt only decides
*whether* to join and which devices a process owns. Under ``mode: auto`` a process joins
only when the launcher started more than one process, so a one-process ``srun`` step
keeps every GPU of its node (JAX would otherwise pin it to GPU ``SLURM_LOCALID``).

CPU-only multi-process runs (tests) use gloo collectives, set here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PROCESS_ID_ENV = "LOPT_PROCESS_ID"


class SetupError(RuntimeError):
    """The configured platform or process layout cannot be set up here (names the key)."""


@dataclass(frozen=True)
class Launch:
    """How this process was started: by whom, and its place among its peers."""

    launcher: str  # "slurm", "openmpi", "config" or "single"
    num_processes: int
    process_id: int | None


def detect_launch(env: dict[str, str] | None = None) -> Launch:
    """The launcher that started this process, read from its environment variables."""
    env = os.environ if env is None else env
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm):
        return Launch("slurm", int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]))
    if "OMPI_COMM_WORLD_SIZE" in env and "OMPI_COMM_WORLD_RANK" in env:
        return Launch("openmpi", int(env["OMPI_COMM_WORLD_SIZE"]), int(env["OMPI_COMM_WORLD_RANK"]))
    return Launch("single", 1, 0)


def _local_accelerators(env: dict[str, str]) -> list[int] | None:
    """Indices of every GPU the launcher gave this host, or None where it says nothing."""
    visible = env.get("CUDA_VISIBLE_DEVICES", env.get("ROCR_VISIBLE_DEVICES"))
    if visible:
        return list(range(len(visible.split(","))))
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return list(range(int(env["SLURM_GPUS_ON_NODE"])))
    return None


def distributed_args(dist: Any, process_id: int | None = None, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Keyword arguments for :func:`jax.distributed.initialize`, or None to stay single-process.

    Args:
        dist: a :class:`lopt.config.DistributedConfig`.
        process_id: this process's rank when started by hand (else ``LOPT_PROCESS_ID``,
            else the launcher's).
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    if dist.mode == "off":
        return None
    launch = detect_launch(env)
    if process_id is None and env.get(PROCESS_ID_ENV, "").strip():
        process_id = int(env[PROCESS_ID_ENV])
    explicit = dist.coordinator_address is not None
    if dist.mode == "auto" and not explicit and launch.num_processes <= 1:
        return None
    if explicit and process_id is None and launch.launcher == "single":
        raise SetupError(
            f"compute.distributed.coordinator_address is set but this process has no rank: "
            f"start each process with {PROCESS_ID_ENV}=<0..{dist.num_processes - 1}> "
            "(or --process-id), or launch with srun / mpirun"
        )
    if not explicit:
        # jax.distributed finds the coordinator itself only under a launcher it knows; a
        # launch it cannot complete would end in JAX's bare "coordinator_address should be defined"
        how = (
            f"set compute.distributed.coordinator_address (host:port of process 0) and "
            f"compute.distributed.num_processes, and start each process with {PROCESS_ID_ENV}=<rank>"
        )
        if launch.launcher == "single":
            raise SetupError(
                "compute.distributed.mode is 'on' but no multi-process launcher (srun, mpirun) "
                f"started this process: {how}, or use mode 'auto' / 'off'"
            )
        if launch.launcher == "openmpi" and "OMPI_MCA_orte_hnp_uri" not in env:
            # JAX recognises Open MPI by this variable, which Open MPI 5 (PRRTE) no longer sets
            raise SetupError(
                "started by mpirun, but OMPI_MCA_orte_hnp_uri is unset (Open MPI >= 5), so JAX "
                f"cannot find the coordinator: {how}"
            )
    kwargs: dict[str, Any] = {"initialization_timeout": dist.initialization_timeout}
    if explicit:
        kwargs.update(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=process_id if process_id is not None else launch.process_id,
        )
    elif process_id is not None:
        kwargs["process_id"] = process_id
    if dist.local_device_ids == "all":
        ids = _local_accelerators(env)
        if ids is not None:
            kwargs["local_device_ids"] = ids
        elif launch.launcher == "slurm":
            log.warning(
                "one process per host, but neither CUDA_VISIBLE_DEVICES nor SLURM_GPUS_ON_NODE "
                "says how many GPUs it has: JAX will pin this process to GPU SLURM_LOCALID; set "
                "compute.distributed.local_device_ids to list them"
            )
    else:
        kwargs["local_device_ids"] = list(dist.local_device_ids)
    return kwargs


def setup(compute: Any, *, distributed: bool = True, process_id: int | None = None) -> Launch:
    """Select the JAX platform and join the multi-host job if configured; call once, first.

    Args:
        compute: a :class:`lopt.config.ComputeConfig`.
        distributed: False for stages that always run as one process (evaluation).
        process_id: rank for hand-started processes (see :func:`distributed_args`).

    Returns:
        the :class:`Launch` this process belongs to (``num_processes`` after joining).
    Raises:
        SetupError: the requested platform has no devices here, or a hand-started process
            of an explicit multi-host job has no rank (names the config key).
    """
    import jax

    from lopt.threefry_cpu import use_unrolled_threefry_on_cpu

    use_unrolled_threefry_on_cpu()
    if compute.platform in ("cpu", "tpu"):
        jax.config.update("jax_platforms", compute.platform)
    # "gpu" is checked below rather than forced: jax_platforms wants the plugin's own
    # name (cuda or rocm), and a GPU host picks its GPU by default anyway.
    kwargs = distributed_args(compute.distributed, process_id) if distributed else None
    if kwargs is not None:
        if compute.platform in ("auto", "cpu"):
            # CPU devices need a collectives backend to talk across processes
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kwargs)
    try:
        backend = jax.default_backend()
    except RuntimeError as exc:
        backend = f"none ({exc})"
    if compute.platform != "auto" and backend != compute.platform:
        raise SetupError(
            f"compute.platform: {compute.platform!r} requested but JAX runs on {backend} here; "
            "allowed: auto, cpu, gpu, tpu (install jax[cuda12] / jax[tpu] for accelerators)"
        )
    launcher = "single"
    if kwargs is not None:
        launcher = detect_launch().launcher
        launcher = "config" if launcher == "single" else launcher
    launch = Launch(launcher, jax.process_count(), jax.process_index())
    log.info(
        "JAX %s: process %d of %d, %d local / %d global devices",
        backend, launch.process_id, launch.num_processes, jax.local_device_count(), jax.device_count(),
    )
    return launch

