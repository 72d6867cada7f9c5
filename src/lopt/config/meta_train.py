"""Config of meta-training (``meta_train:``): estimator, unroll geometry, outer optimizer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from lopt.config.base import Bool, Int, KeyedError, PosFloat, PosInt, _Strict
from lopt.config.tasks import ImageMLPTaskConfig, TaskConfig, TaskFamilyConfig

PARTICLE_CHUNK_HELP = (
    "Unroll the particles this many at a time (a lax.map over chunks) instead of all at once: "
    "same result, a working set that can stay in a CPU's cache for large num_particles "
    "(benchmarks/RESULTS.md). Must divide the antithetic pairs (TBPTT: the particles); one "
    "device only. Unset: all at once (right for GPUs)."
)


def particle_chunk_unit(num_particles: int, estimator: str) -> int:
    """What a particle chunk must divide: the antithetic pairs (TBPTT: the particles)."""
    return num_particles if estimator == "tbptt" else num_particles // 2


def check_particle_chunk(chunk: int, num_particles: int, estimator: str, devices: Any) -> None:
    """Raise a :class:`KeyedError` at ``particle_chunk`` unless it splits one device's particles evenly.

    ES estimators unroll ``P`` copies and TES also its ``P / 2`` unperturbed pairs, so the
    chunk must divide the number of pairs; TBPTT's particles are single.
    """
    unit = particle_chunk_unit(num_particles, estimator)
    what = "num_particles" if estimator == "tbptt" else "the antithetic pairs (num_particles / 2)"
    if unit % chunk:
        raise KeyedError(("particle_chunk",), f"{chunk} must divide {what} = {unit}")
    if devices != 1:
        raise KeyedError(
            ("particle_chunk",),
            f"applies to one device (a CPU cache setting); with devices {devices!r} "
            "leave it unset: each device already unrolls only its share of the particles"
        )


class MetaTrainConfig(_Strict):
    """Meta-training: estimator, unroll geometry and the optax outer optimizer."""

    task: TaskConfig = Field(default_factory=ImageMLPTaskConfig)
    task_family: TaskFamilyConfig | None = Field(
        None, description="Meta-train on tasks drawn from a family instead of the single `task`."
    )
    estimator: Literal["tbptt", "full_es", "tes", "pes", "gpes", "nres"] = "nres"
    noise_reuse_steps: PosInt | None = Field(
        None, description="GPES only: K', inner steps between fresh perturbations (multiple of K)."
    )
    num_particles: Annotated[Int, Field(ge=2)] = Field(
        16, description="All perturbed copies (antithetic pairs x 2); must be even."
    )
    trunc_length: PosInt = Field(10, description="K: inner steps per truncation window.")
    horizon: PosInt = Field(100, description="T: inner steps per episode (the longest, with min_horizon).")
    min_horizon: PosInt | None = Field(
        None,
        description="Episodes of random length: T drawn log-uniformly from [min_horizon, horizon] per "
        "episode (learned_optimization's LogUniformLengthSchedule); null: every episode lasts horizon.",
    )
    sigma: PosFloat = Field(0.01, description="Std of the Gaussian perturbation.")
    step_unlock: Bool = Field(True, description="Stagger particle starts over the horizon.")
    meta_loss_split: Literal["train", "outer_valid"] = Field(
        "train",
        description="Per-step meta-loss: the training-batch loss before the step's update "
        "(free), or an outer_valid batch's loss after it (one extra forward pass).",
    )
    devices: Annotated[Int, Field(ge=1)] | Literal["all"] = Field(
        1,
        description="Devices per process the particles are sharded over ('all': every local "
        "device; a multi-host job uses this many on each host); num_particles must be a "
        "multiple of 2 x the run's devices.",
    )
    loss_diff_clip: PosFloat | None = Field(
        None, description="ES only: clip each per-step antithetic loss difference to [-c, c]."
    )
    particle_chunk: PosInt | None = Field(None, description=PARTICLE_CHUNK_HELP)
    normalize_grad: Bool = Field(False, description="Divide the meta-gradient by its global norm.")
    outer_steps: PosInt = 200
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    outer_lr: PosFloat = 3e-3
    grad_clip: PosFloat | None = Field(1.0, description="Global-norm clip on the meta-gradient (null: none, as in the papers).")
    checkpoint_every: PosInt = 50
    max_to_keep: PosInt = 3
    log_every: PosInt = 10

    def tasks(self) -> list[Any]:
        """The meta-training task configs: ``[task]`` or the family's drawn tasks."""
        return self.task_family.sample() if self.task_family is not None else [self.task]

    @model_validator(mode="after")
    def _check_geometry(self) -> MetaTrainConfig:
        if self.task_family is not None and "task" in self.model_fields_set:
            raise ValueError("give either task or task_family, not both")
        if self.num_particles % 2:
            raise KeyedError(("num_particles",), f"must be even (antithetic pairs), got {self.num_particles}")
        if isinstance(self.devices, int) and self.num_particles % (2 * self.devices) and self.devices > 1:
            raise KeyedError(
                ("devices",),
                f"num_particles ({self.num_particles}) must be a multiple of 2 x devices "
                f"({self.devices}) so particles and antithetic pairs split evenly"
            )
        if self.trunc_length > self.horizon:
            raise KeyedError(("trunc_length",), f"{self.trunc_length} must be <= horizon ({self.horizon})")
        if self.min_horizon is not None:
            if self.min_horizon > self.horizon:
                raise KeyedError(("min_horizon",), f"{self.min_horizon} must be <= horizon ({self.horizon})")
            if self.estimator == "full_es" and self.min_horizon < self.horizon:
                raise KeyedError(("min_horizon",), "full_es unrolls whole episodes of one length: allowed null or horizon")
            if self.trunc_length > self.min_horizon:
                raise KeyedError(
                    ("trunc_length",),
                    f"{self.trunc_length} must be <= min_horizon ({self.min_horizon}): a window fits the shortest episode",
                )
        if self.estimator == "full_es" and self.trunc_length != self.horizon:
            raise KeyedError(
                ("trunc_length",), f"full_es unrolls whole episodes: trunc_length must equal horizon ({self.horizon})"
            )
        if self.loss_diff_clip is not None and self.estimator == "tbptt":
            raise KeyedError(("loss_diff_clip",), "applies to the ES estimators, not 'tbptt'")
        if self.particle_chunk is not None:
            check_particle_chunk(self.particle_chunk, self.num_particles, self.estimator, self.devices)
        if self.noise_reuse_steps is not None:
            if self.estimator != "gpes":
                raise KeyedError(("noise_reuse_steps",), "applies to estimator 'gpes' only")
            if self.noise_reuse_steps % self.trunc_length:
                raise KeyedError(
                    ("noise_reuse_steps",),
                    f"{self.noise_reuse_steps} must be a multiple of trunc_length ({self.trunc_length})",
                )
        return self
