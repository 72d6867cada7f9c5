"""Config of where jobs run: devices, precision, multi-host JAX (``compute:``) and scheduler resources (``resources:``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from lopt.config.base import Int, PosInt, _Strict


class DistributedConfig(_Strict):
    """Multi-host JAX: one process per host, joined by ``jax.distributed.initialize``.

    The config file is shared by every process, so it never holds a process id: that
    comes from the launcher (SLURM ``srun``, Open MPI ``mpirun``) or, for hand-started
    processes, ``LOPT_PROCESS_ID`` / ``lopt meta-train --process-id``.
    """

    mode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: join when a launcher started more than one process (SLURM, Open MPI) "
        "or coordinator_address is set; on: always join; off: single process.",
    )
    coordinator_address: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-\[\]:]+:[0-9]+$")] | None = Field(
        None, description="host:port of process 0 (default: detected from the launcher)."
    )
    num_processes: PosInt | None = Field(None, description="Processes in the job (default: detected).")
    local_device_ids: list[Annotated[Int, Field(ge=0)]] | Literal["all"] = Field(
        "all",
        description="Accelerators this process drives; 'all': every accelerator of the host "
        "(one process per host).",
    )
    initialization_timeout: PosInt = Field(300, description="Seconds to wait for every process.")

    @model_validator(mode="after")
    def _explicit(self) -> DistributedConfig:
        if (self.coordinator_address is None) != (self.num_processes is None):
            raise ValueError("give coordinator_address and num_processes together (or neither: detected)")
        return self


class DeviceConfig(_Strict):
    """The JAX platform and the inner task's compute dtype (shared by experiments and studies)."""

    platform: Literal["auto", "cpu", "gpu", "tpu"] = Field(
        "auto", description="JAX backend: auto (the best available), cpu, gpu or tpu."
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Inner-task compute dtype (forward/backward); parameters, optimizer "
        "states and losses stay float32.",
    )


class ComputeConfig(DeviceConfig):
    """Where and how the numerics run: platform, inner-task precision, processes."""

    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    checkpoint_root: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="Keep meta-training's live checkpoints in <checkpoint_root>/<name>/ instead of "
        "<out>/checkpoints: a directory that outlives the job, e.g. a persistent volume mounted "
        "in every Kubernetes pod, so a killed job resumes in a fresh pod. Unset: <out>/checkpoints.",
    )


class StageResources(_Strict):
    """What one Snakemake job of a stage asks the scheduler for (SLURM, Kubernetes)."""

    gpus: Annotated[Int, Field(ge=0)] = Field(
        0,
        description="GPUs per job, all hosts together (SLURM: --gpus; with nodes > 1 "
        "--gres=gpu:<gpus/nodes> on each host, so gpus must be a multiple of nodes).",
    )
    gpu_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$")] | None = Field(
        None,
        description="SLURM --gpus=<model>:<n> (several nodes: --gres=gpu:<model>:<n/nodes>), "
        "e.g. a100; needs gpus >= 1.",
    )
    mem_mb: PosInt = 4000
    runtime: PosInt = Field(60, description="Wall-clock limit in minutes.")
    partition: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="SLURM partition (default: the profile's)."
    )
    cpus: PosInt | None = Field(
        None,
        description="CPU cores per job: the rule's threads (capped by --cores locally; "
        "SLURM --cpus-per-task, Kubernetes cpu request). Unset: every core of --cores; "
        "on a cluster executor (no --cores) 4.",
    )
    nodes: PosInt = Field(
        1,
        description="Hosts per job, one process each (meta_train only: multi-host JAX; "
        "SLURM --nodes N --ntasks N, launched with srun).",
    )

    @model_validator(mode="after")
    def _gpu_model_needs_gpus(self) -> StageResources:
        # the SLURM plugin turns a lone gpu_model into --gpus=<model>:1: a GPU nobody asked for
        if self.gpu_model is not None and self.gpus < 1:
            raise ValueError(
                f"gpu_model ({self.gpu_model!r}) needs gpus >= 1 (got gpus: {self.gpus}); "
                "set gpus to the number of GPUs per job, or remove gpu_model"
            )
        return self

    @model_validator(mode="after")
    def _gpus_split_over_nodes(self) -> StageResources:
        if self.nodes > 1 and self.gpus % self.nodes:
            raise ValueError(
                f"gpus ({self.gpus}) must be a multiple of nodes ({self.nodes}): each host gets "
                "gpus / nodes GPUs (sbatch --gres=gpu:<gpus/nodes>), so that every JAX process "
                "sees the same number of local devices"
            )
        return self

    def snakemake(self) -> dict[str, Any]:
        """The rule's ``resources:`` (names the SLURM executor plugin reads)."""
        out: dict[str, Any] = {"mem_mb": self.mem_mb, "runtime": self.runtime}
        if self.partition is not None:
            out["slurm_partition"] = self.partition
        if self.nodes > 1:
            # The plugin's MPI path: sbatch --nodes N --ntasks N, and the rule starts its
            # command with `srun --nodes=N ... -n N` (resources.mpi), one process per host.
            # tasks_per_gpu 0 stops the plugin from turning `tasks` into --ntasks-per-gpu.
            out.update(nodes=self.nodes, tasks=self.nodes, mpi="srun", tasks_per_gpu=0)
            if self.gpus:
                # sbatch --gpus is the job's total, which SLURM may spread unevenly over the
                # nodes; every JAX process must see the same local devices, so ask per node.
                model = f"{self.gpu_model}:" if self.gpu_model is not None else ""
                out["gres"] = f"gpu:{model}{self.gpus // self.nodes}"
        elif self.gpus:  # never `gpu: 0`: Kubernetes would still tolerate GPU nodes for the pod
            out["gpu"] = self.gpus
            if self.gpu_model is not None:
                out["gpu_model"] = self.gpu_model
        return out

    def threads(self, default: int) -> int:
        """The rule's ``threads:`` (``cpus`` if set, else ``default``)."""
        return self.cpus if self.cpus is not None else default


# Each stage's defaults; a config's `resources.<stage>` overrides them key by key.
# Study runs leave `cpus` unset: every core (their figures time one run, not contention).
_STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prepare_data": {"mem_mb": 2000, "runtime": 30, "cpus": 1},
    "meta_train": {"mem_mb": 8000, "runtime": 240, "cpus": 8},
    "evaluate": {"mem_mb": 4000, "runtime": 60, "cpus": 1},
    "analyze": {"mem_mb": 2000, "runtime": 15, "cpus": 1},
    "study_run": {"mem_mb": 8000, "runtime": 120},
    "study_analyze": {"mem_mb": 2000, "runtime": 15, "cpus": 1},
    "study_variance": {"mem_mb": 4000, "runtime": 60},
}


def _stage(name: str) -> Any:
    return Field(default_factory=lambda: StageResources(**_STAGE_DEFAULTS[name]))


class ResourcesConfig(_Strict):
    """Per-stage job resources; every Snakemake rule declares its stage's."""

    prepare_data: StageResources = _stage("prepare_data")
    meta_train: StageResources = _stage("meta_train")
    evaluate: StageResources = _stage("evaluate")
    analyze: StageResources = _stage("analyze")
    study_run: StageResources = _stage("study_run")
    study_analyze: StageResources = _stage("study_analyze")
    study_variance: StageResources = _stage("study_variance")

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, raw: Any) -> Any:
        # `meta_train: {gpus: 2}` keeps meta_train's mem_mb, runtime and cpus defaults
        if not isinstance(raw, dict):
            return raw
        return {
            k: {**_STAGE_DEFAULTS[k], **v} if k in _STAGE_DEFAULTS and isinstance(v, dict) else v
            for k, v in raw.items()
        }

    @model_validator(mode="after")
    def _single_host(self) -> ResourcesConfig:
        for stage in type(self).model_fields:
            if stage != "meta_train" and getattr(self, stage).nodes > 1:
                raise ValueError(f"{stage}.nodes: only meta_train runs on several hosts (nodes must be 1)")
        return self
