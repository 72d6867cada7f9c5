"""Typed experiment configuration: the only module that reads experiment YAML.

An experiment is one YAML file (``configs/*.yaml``). :func:`load_config` parses and
validates it against the pydantic models below *before* any JAX work starts, and
turns every problem into a :class:`ConfigError` that names the file, the key path
(``meta_train.num_particles``) and the allowed values. ``lopt schema`` prints the
JSON schema derived from these models (``configs/schema.json`` is that output).

Conventions fixed here (and stated again in the README):

- ``num_particles`` counts *all* perturbed copies (the PES / evosax convention); they
  form ``num_particles // 2`` antithetic pairs, so it must be even.
- The meta-loss of a window is the *mean* per-step loss over the window (the NRES
  code's convention), so learning rates do not scale with ``trunc_length``.
- Every key has at least two characters (Snakemake's ``--config`` cannot carry
  one-letter keys).
- Files are read as YAML with YAML 1.2 scalars (:class:`_ConfigLoader`): only
  ``true``/``false`` are booleans (``on``, ``off``, ``yes``, ``no`` are strings), ``1e-3``
  is a float, and a key given twice is an error. Numbers and booleans are strict: no
  ``true`` for an integer, no ``"no"`` for a boolean, no ``.inf``/``.nan``.

This module imports neither JAX nor anything heavy, so a bad config fails in
well under a second.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    model_validator,
)

__all__ = [
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "LOptConfig",
    "MetaTrainConfig",
    "TaskConfig",
    "TaskFamilyConfig",
    "load_config",
    "load_yaml",
    "parse_yaml",
    "validate_config",
]

DATASET_NAMES = (
    "digits",
    "mnist1d",
    "mnist_8x8",
    "mnist_16x16",
    "fashion_mnist_8x8",
    "fashion_mnist_16x16",
    "cifar10_8x8",
    "cifar10_16x16",
)
DatasetName = Literal[
    "digits",
    "mnist1d",
    "mnist_8x8",
    "mnist_16x16",
    "fashion_mnist_8x8",
    "fashion_mnist_16x16",
    "cifar10_8x8",
    "cifar10_16x16",
]
# Strict scalars: YAML `true` is not the integer 1, the string "no" is not False, a
# quoted "0.1" is not a number, and .inf / .nan are not finite floats (ints still pass
# as floats: `lr: 1`).
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PosInt = Annotated[Int, Field(ge=1)]
PosFloat = Annotated[Float, Field(gt=0)]


class ConfigError(ValueError):
    """A config file failed validation; the message names file, key path and allowed values."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Strict):
    """Where prepared datasets live and how they are split."""

    root: str = Field("data", description="Directory holding data/<name>/ (DVC-tracked).")
    valid_fraction: Annotated[Float, Field(gt=0, lt=0.5)] = Field(
        0.1, description="Fraction of the train split carved into each of inner-/outer-valid."
    )
    seed: Annotated[Int, Field(ge=0)] = Field(0, description="Seed of the split permutation.")


class ImageMLPTaskConfig(_Strict):
    """An MLP classifier on a prepared image dataset (inputs flattened)."""

    kind: Literal["image_mlp"] = "image_mlp"
    dataset: DatasetName = "digits"
    hidden_sizes: list[PosInt] = Field(default_factory=lambda: [32])
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"
    batch_size: PosInt = 64
    init_scale: PosFloat = Field(1.0, description="Multiplier on the LeCun-normal init.")


class QuadraticTaskConfig(_Strict):
    """Noisy quadratic: 0.5 * sum h_i (x_i - c_i)^2 with Gaussian gradient noise."""

    kind: Literal["quadratic"] = "quadratic"
    dim: PosInt = 10
    condition_number: Annotated[Float, Field(ge=1)] = 10.0
    noise_std: Annotated[Float, Field(ge=0)] = 0.1


class ImageConvTaskConfig(_Strict):
    """A small conv net on a prepared dataset: 2-D convs on images, 1-D on MNIST-1D."""

    kind: Literal["image_conv"] = "image_conv"
    dataset: DatasetName = "digits"
    channels: list[PosInt] = Field(
        default_factory=lambda: [8, 16],
        min_length=1,
        description="Output channels of each conv layer (stride 2, 'SAME' padding), then global average pooling and a linear head.",
    )
    kernel_size: PosInt = 3
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"
    batch_size: PosInt = 64
    init_scale: PosFloat = Field(1.0, description="Multiplier on the LeCun-normal init.")


class CharLMTaskConfig(_Strict):
    """Next-character prediction on a generated corpus (seeded grammar; no download)."""

    kind: Literal["char_lm"] = "char_lm"
    model: Literal["rnn", "transformer"] = "transformer"
    cell: Literal["gru", "tanh"] = Field("gru", description="RNN only: the recurrent cell.")
    corpus_seed: Annotated[Int, Field(ge=0)] = Field(0, description="Seed of the generated corpus.")
    corpus_chars: Annotated[Int, Field(ge=1000)] = Field(
        20000, description="Characters generated (split 80/5/5/10 into train/inner-/outer-valid/test)."
    )
    seq_len: Annotated[Int, Field(ge=2)] = 32
    hidden_size: PosInt = 32
    num_layers: PosInt = 1
    num_heads: PosInt = Field(2, description="Transformer only; must divide hidden_size.")
    batch_size: PosInt = 16
    init_scale: PosFloat = 1.0

    @model_validator(mode="after")
    def _heads(self) -> CharLMTaskConfig:
        if self.model == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )
        # the smallest split (5 %) must hold at least one window of seq_len + 1 tokens
        if self.corpus_chars // 20 <= self.seq_len:
            raise ValueError(
                f"corpus_chars ({self.corpus_chars}) is too short for seq_len ({self.seq_len}): "
                f"the 5 % validation splits need more than seq_len characters"
            )
        return self


TASK_KINDS = ("image_mlp", "image_conv", "quadratic", "char_lm")
TaskConfig = Annotated[
    ImageMLPTaskConfig | ImageConvTaskConfig | QuadraticTaskConfig | CharLMTaskConfig,
    Field(discriminator="kind"),
]


class TaskFamilyConfig(_Strict):
    """A distribution over tasks: a base task plus, per field, the values to draw from.

    ``num_tasks`` tasks are drawn once per run with ``numpy.random.default_rng(seed)``,
    each field of ``choices`` uniformly from its list (e.g. ``hidden_sizes``,
    ``activation``, ``batch_size``, ``init_scale``, ``dataset``). Structural choices
    change the compiled program, so they are fixed per drawn task; every drawn task
    gets its own ``num_particles`` particles, and each particle starts every episode
    from fresh task parameters (a new initialisation seed and batch order). The
    meta-gradient is the mean of the per-task estimates.
    """

    base: TaskConfig
    choices: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    num_tasks: PosInt = 4
    seed: Annotated[Int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check_choices(self) -> TaskFamilyConfig:
        fields = sorted(f for f in type(self.base).model_fields if f != "kind")
        for key, values in self.choices.items():
            if key not in fields:
                raise ValueError(
                    f"choices.{key}: not a field of task kind '{self.base.kind}' "
                    f"(allowed keys: {', '.join(fields)})"
                )
            for i, value in enumerate(values):
                try:
                    self._with(key, value)
                except ValidationError as exc:
                    msg = "; ".join(e["msg"] for e in exc.errors())
                    raise ValueError(f"choices.{key}[{i}] = {value!r}: {msg}") from None
        if self.num_tasks > self.num_distinct():
            raise ValueError(
                f"num_tasks ({self.num_tasks}) exceeds the {self.num_distinct()} distinct tasks "
                "the choices allow"
            )
        return self

    def _with(self, key: str, value: Any) -> Any:
        return type(self.base).model_validate({**self.base.model_dump(), key: value})

    def num_distinct(self) -> int:
        """How many distinct tasks the choices allow."""
        return math.prod(len(v) for v in self.choices.values())

    def sample(self) -> list[Any]:
        """The ``num_tasks`` drawn task configs: distinct, deterministic in ``seed``."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        keys = sorted(self.choices)
        drawn: list[tuple[int, ...]] = []
        while len(drawn) < self.num_tasks:  # terminates: num_tasks <= num_distinct()
            index = tuple(int(rng.integers(len(self.choices[k]))) for k in keys)
            if index not in drawn:
                drawn.append(index)
        update = [{k: self.choices[k][i] for k, i in zip(keys, index)} for index in drawn]
        return [type(self.base).model_validate({**self.base.model_dump(), **u}) for u in update]


Decay = Annotated[Float, Field(ge=0, lt=1)]
MLP_FEATURES = ("param", "grad", "momentum", "rms", "momentum_rsqrt", "grad_rsqrt", "time")


class NominalConfig(_Strict):
    """A hand-designed descent term added to the learned update (Harrison et al. 2022)."""

    optimizer: Literal["adam", "sgd", "momentum"] = "adam"
    learning_rate: PosFloat = 1e-3


class _LOptCommon(_Strict):
    nominal: NominalConfig | None = Field(
        None, description="Add this optax optimizer's update to the learned one (untrained = it)."
    )


class MLPLOptConfig(_LOptCommon):
    """Per-parameter MLP ("small_fc" / MLPLOpt, LOLv2)."""

    kind: Literal["mlp_lopt"] = "mlp_lopt"
    hidden_size: PosInt = 32
    num_layers: PosInt = Field(2, description="Number of hidden layers.")
    momentum_decays: list[Decay] = Field(default_factory=lambda: [0.5, 0.9, 0.99, 0.999])
    rms_decay: Decay = 0.999
    num_time_features: PosInt = Field(11, description="tanh embeddings of the training fraction.")
    step_mult: PosFloat = Field(1e-3, description="beta in d * exp(alpha * m) * beta.")
    exp_mult: PosFloat = Field(1e-3, description="alpha in d * exp(alpha * m) * beta.")
    zero_init_output: Bool = Field(
        True, description="Zero the output layer so the untrained optimizer is a no-op."
    )
    features: list[Literal[MLP_FEATURES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(MLP_FEATURES),
        min_length=1,
        description="Per-parameter input features (a subset; concatenated in canonical order).",
    )


class AdafacMLPLOptConfig(_LOptCommon):
    """AdafacMLPLOpt: factored second moments, tiny MLP (Metz et al. 2022, practical trade-offs)."""

    kind: Literal["adafac_mlp_lopt"] = "adafac_mlp_lopt"
    hidden_size: PosInt = 4
    num_layers: PosInt = 2
    momentum_decays: list[Decay] = Field(default_factory=lambda: [0.1, 0.5, 0.9, 0.99, 0.999])
    rms_decays: list[Decay] = Field(default_factory=lambda: [0.999])
    adafactor_decays: list[Decay] = Field(default_factory=lambda: [0.9, 0.99, 0.999])
    num_time_features: PosInt = 11
    step_mult: PosFloat = 1e-3
    exp_mult: PosFloat = 1e-3
    zero_init_output: Bool = True


class NNAdamConfig(_LOptCommon):
    """NNAdam: a per-tensor LSTM that outputs Adam's hyperparameters per tensor."""

    kind: Literal["nn_adam"] = "nn_adam"
    lstm_hidden_size: PosInt = 32
    initial_learning_rate: PosFloat = 1e-3
    initial_beta1: Annotated[Float, Field(gt=0, lt=1)] = 0.9
    initial_beta2: Annotated[Float, Field(gt=0, lt=1)] = 0.999
    initial_epsilon: PosFloat = 1e-8
    num_time_features: PosInt = 11
    zero_init_output: Bool = Field(True, description="Untrained = Adam(initial_*).")


class RNNMLPLOptConfig(_LOptCommon):
    """RNN-MLP: per-tensor LSTM feeding a per-parameter MLP (Metz et al. 2020)."""

    kind: Literal["rnn_mlp_lopt"] = "rnn_mlp_lopt"
    lstm_hidden_size: PosInt = 64
    tensor_embed_size: PosInt = 8
    hidden_size: PosInt = 32
    num_layers: PosInt = 2
    momentum_decays: list[Decay] = Field(default_factory=lambda: [0.5, 0.9, 0.99, 0.999])
    rms_decay: Decay = 0.999
    loss_decay: Decay = Field(0.9, description="EMA decay of the loss normaliser.")
    num_time_features: PosInt = 11
    step_mult: PosFloat = 1e-3
    exp_mult: PosFloat = 1e-3
    clip_mult: PosFloat = Field(10.0, description="Dynamic clip: |g| <= clip_mult * sqrt(v).")
    zero_init_output: Bool = True


LOPT_KINDS = ("mlp_lopt", "adafac_mlp_lopt", "nn_adam", "rnn_mlp_lopt")


def _kind(default: str):
    """Discriminator that reads ``kind`` and falls back to ``default`` when it is omitted."""

    def get(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("kind", default)
        return getattr(value, "kind", default)

    return get


# ``kind`` may be omitted (older configs): it then means the per-parameter MLP.
LOptConfig = Annotated[
    Annotated[MLPLOptConfig, Tag("mlp_lopt")]
    | Annotated[AdafacMLPLOptConfig, Tag("adafac_mlp_lopt")]
    | Annotated[NNAdamConfig, Tag("nn_adam")]
    | Annotated[RNNMLPLOptConfig, Tag("rnn_mlp_lopt")],
    Discriminator(
        _kind("mlp_lopt"),
        custom_error_type="invalid_kind",
        custom_error_message="unknown learned-optimizer kind",
        custom_error_context={"expected": ", ".join(LOPT_KINDS)},
    ),
]


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
    """Raise ValueError unless ``chunk`` splits the particles of one device evenly.

    ES estimators unroll ``P`` copies and TES also its ``P / 2`` unperturbed pairs, so the
    chunk must divide the number of pairs; TBPTT's particles are single.
    """
    unit = particle_chunk_unit(num_particles, estimator)
    what = "num_particles" if estimator == "tbptt" else "the antithetic pairs (num_particles / 2)"
    if unit % chunk:
        raise ValueError(f"particle_chunk ({chunk}) must divide {what} = {unit}")
    if devices != 1:
        raise ValueError(
            f"particle_chunk applies to one device (a CPU cache setting); with devices {devices!r} "
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
    horizon: PosInt = Field(100, description="T: inner steps per episode.")
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
    grad_clip: PosFloat = Field(1.0, description="Global-norm clip on the meta-gradient.")
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
            raise ValueError(
                f"num_particles must be even (antithetic pairs), got {self.num_particles}"
            )
        if isinstance(self.devices, int) and self.num_particles % (2 * self.devices) and self.devices > 1:
            raise ValueError(
                f"num_particles ({self.num_particles}) must be a multiple of 2 x devices "
                f"({self.devices}) so particles and antithetic pairs split evenly"
            )
        if self.trunc_length > self.horizon:
            raise ValueError(
                f"trunc_length ({self.trunc_length}) must be <= horizon ({self.horizon})"
            )
        if self.estimator == "full_es" and self.trunc_length != self.horizon:
            raise ValueError(f"full_es unrolls whole episodes: trunc_length must equal horizon ({self.horizon})")
        if self.loss_diff_clip is not None and self.estimator == "tbptt":
            raise ValueError("loss_diff_clip applies to the ES estimators, not 'tbptt'")
        if self.particle_chunk is not None:
            check_particle_chunk(self.particle_chunk, self.num_particles, self.estimator, self.devices)
        if self.noise_reuse_steps is not None:
            if self.estimator != "gpes":
                raise ValueError("noise_reuse_steps applies to estimator 'gpes' only")
            if self.noise_reuse_steps % self.trunc_length:
                raise ValueError(
                    f"noise_reuse_steps ({self.noise_reuse_steps}) must be a multiple of trunc_length ({self.trunc_length})"
                )
        return self


class LRGridConfig(_Strict):
    """Log-spaced learning-rate grid for tuning baselines."""

    low: PosFloat = 1e-4
    high: PosFloat = 1.0
    num: Annotated[Int, Field(ge=2)] = 9

    @model_validator(mode="after")
    def _ordered(self) -> LRGridConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class EvalTaskConfig(_Strict):
    """A held-out evaluation task: a task plus a name used in tables and figures."""

    name: Annotated[str, Field(min_length=2, pattern=r"^[A-Za-z0-9_\-]+$")]
    task: TaskConfig
    distribution: Literal["in", "out"] = Field(
        "out",
        description="'in': drawn like the meta-training tasks (held-out seeds); 'out': "
        "outside them (wider, deeper, longer horizon, other dataset). Reported side by side.",
    )
    num_steps: PosInt | None = Field(
        None, description="Inner steps for this task (default: evaluation.num_steps)."
    )


class EvaluationConfig(_Strict):
    """Held-out evaluation against learning-rate-tuned optax baselines."""

    tasks: list[EvalTaskConfig] = Field(default_factory=list, min_length=1)
    num_steps: PosInt = 100
    num_seeds: PosInt = 5
    seed_offset: Annotated[Int, Field(ge=0)] = Field(
        1000, description="Evaluation seeds start here, disjoint from meta-training seeds."
    )
    baselines: list[
        Literal["sgd", "momentum", "adam", "adamw", "nadamw", "rmsprop", "lion", "adafactor"]
    ] = Field(default_factory=lambda: ["sgd", "adam"], min_length=1)
    schedules: list[Literal["constant", "cosine", "linear", "warmup_cosine"]] = Field(
        default_factory=lambda: ["constant"],
        min_length=1,
        description="Learning-rate schedules tuned jointly with the rate (best on inner-valid).",
    )
    lr_grid: LRGridConfig = Field(default_factory=LRGridConfig)
    eval_every: PosInt = Field(10, description="Steps between valid/test evaluations.")
    eval_batch_size: PosInt = Field(
        512, description="Examples per chunk of an evaluation; every split is evaluated whole (this bounds memory)."
    )

    @model_validator(mode="after")
    def _check_steps(self) -> EvaluationConfig:
        if self.num_steps % self.eval_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) must be a multiple of eval_every ({self.eval_every})"
            )
        for t in self.tasks:
            if t.num_steps is not None and t.num_steps % self.eval_every:
                raise ValueError(
                    f"task {t.name}: num_steps ({t.num_steps}) must be a multiple of eval_every ({self.eval_every})"
                )
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation task names must be unique, got {names}")
        return self


class AnalysisConfig(_Strict):
    """Figures and tables."""

    dpi: Annotated[Int, Field(ge=50, le=600)] = 120
    band: Literal["std", "sem", "minmax"] = "sem"


class TrackingConfig(_Strict):
    """Weights & Biases tracking (offline unless asked for online; `wandb sync` uploads later)."""

    project: Annotated[str, Field(min_length=2)] = "lopt"
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Overrides WANDB_MODE; unset and without WANDB_MODE, runs are offline."
    )
    log_artifacts: Bool = True


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


class ExperimentConfig(_Strict):
    """One experiment: everything a pipeline run needs."""

    name: Annotated[str, Field(min_length=2, pattern=r"^[A-Za-z0-9_\-]+$")]
    seed: Annotated[Int, Field(ge=0)] = 0
    data: DataConfig = Field(default_factory=DataConfig)
    lopt: LOptConfig = Field(default_factory=MLPLOptConfig)
    meta_train: MetaTrainConfig = Field(default_factory=MetaTrainConfig)
    evaluation: EvaluationConfig
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    def datasets(self) -> list[str]:
        """Every dataset the experiment touches, in first-use order."""
        names = self.meta_train.tasks() + [t.task for t in self.evaluation.tasks]
        out: list[str] = []
        for task in names:
            ds = getattr(task, "dataset", None)
            if ds is not None and ds not in out:
                out.append(ds)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (all defaults filled in) as plain JSON-able data."""
        return json.loads(self.model_dump_json())


# Tags pydantic inserts into error paths for tagged unions; the user never wrote them.
_UNION_TAGS = TASK_KINDS + LOPT_KINDS


def _error_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """The error's key path; an unknown union ``kind`` is reported at ``<section>.kind``."""
    loc = tuple(err["loc"])
    return loc + ("kind",) if err["type"] in ("invalid_kind", "union_tag_invalid") else loc


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]":
            parts.append(" (the key)")  # pydantic's marker: the mapping key itself is invalid
        elif item in _UNION_TAGS and parts:
            continue  # pydantic inserts the union tag; the user never wrote it
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _member_for_label(members: list[Any], label: Any) -> Any:
    """The union member pydantic names ``label`` in an error path (``list[constrained-int]``)."""
    if not isinstance(label, str):
        return None
    for prefix, origin in (("list[", list), ("tuple[", tuple), ("dict[", dict), ("literal[", Literal)):
        if label.startswith(prefix):
            return next((m for m in members if get_origin(m) is origin), None)
    plain = [m for m in members if get_origin(m) not in (list, tuple, dict, Literal)]
    return plain[0] if len(plain) == 1 else None


def _key_path(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """``loc`` as the user's key path, and whether a plain union's member label was dropped.

    pydantic puts the label of the union member that failed into the path
    (``meta_train.devices.constrained-int``, ``...local_device_ids.list[constrained-int].0``)
    and the ``kind`` tag of a tagged union (``meta_train.task.image_mlp.dataset``); the user
    wrote neither. The path is walked along the model's types and those items are dropped.
    """
    out: list[Any] = []
    tp: Any = model
    dropped = False
    i = 0
    while i < len(loc):
        item, tp = loc[i], _bare(tp)
        if get_origin(tp) in (Union, UnionType):
            members = [_bare(a) for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:  # X | None: no label in the path
                tp = members[0]
                continue
            if all(_is_model(m) and "kind" in m.model_fields for m in members):
                tagged = [m for m in members if m.model_fields["kind"].default == item]
                if not tagged:
                    break  # e.g. the 'kind' an unknown tag is reported at
                tp = tagged[0]
            else:
                tp = _member_for_label(members, item)
                dropped = True
            i += 1
            continue
        if _is_model(tp):
            field = tp.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                break
            out.append(item)
            tp = field.annotation
        elif get_origin(tp) in (list, tuple) and isinstance(item, int):
            out.append(item)
            args = [a for a in get_args(tp) if a is not Ellipsis]
            tp = args[min(item, len(args) - 1)] if args else None
        elif get_origin(tp) is dict:
            out.append(item)
            if i + 1 < len(loc) and loc[i + 1] == "[key]":
                i += 1
                break
            tp = get_args(tp)[1] if get_args(tp) else None
        else:
            break
        i += 1
    return tuple(out) + tuple(loc[i:]), dropped


def _error_lines(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One ``  key.path: message (allowed ...)`` line per offending key.

    The failures of every member of a plain union (``devices: 0`` is neither an int >= 1
    nor 'all') become one line listing each alternative.
    """
    merged: dict[str, tuple[list[str], list[str]]] = {}
    lines: list[str | tuple[str, ...]] = []
    for err in exc.errors():
        loc = _error_loc(err)
        path, dropped = _key_path(model, loc)
        key = _format_loc(path)
        allowed = _allowed(err, model, loc)
        if dropped and key in merged:
            msgs, hints = merged[key]
            msgs.append(err["msg"].removeprefix("Input should be ") if msgs[0].startswith("Input should be") else err["msg"])
            if allowed and allowed not in hints:
                hints.append(allowed)
            continue
        if dropped:
            merged[key] = ([err["msg"]], [allowed] if allowed else [])
            lines.append(("merged", key))
        else:
            lines.append(f"  {key}: {err['msg']}{allowed}")
    out = []
    for line in lines:
        if isinstance(line, tuple):
            msgs, hints = merged[line[1]]
            line = f"  {line[1]}: {' or '.join(msgs)}{''.join(hints)}"
        out.append(line)
    return out


def _allowed(err: dict[str, Any], model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        return f" (allowed keys: {', '.join(fields)})" if fields else ""
    if "expected" in ctx:
        return "" if str(ctx["expected"]) in err["msg"] else f" (allowed values: {ctx['expected']})"
    if "pattern" in ctx:
        return f" (allowed: strings matching {ctx['pattern']})"
    got = err.get("input")
    if err["type"] == "bool_type":
        return f" (got {got!r}; allowed values: true, false)"
    if err["type"] in ("int_type", "float_type", "finite_number") and isinstance(got, (bool, int, float, str)):
        return f" (got {got!r})"  # e.g. `true` where a number belongs, or .inf
    return ""


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model reached by ``loc`` (best effort, for messages)."""
    current: Any = model
    for item in loc:
        if isinstance(item, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            # a tagged union: pydantic puts the tag ('image_mlp') in the path
            tagged = [m for m in _union_members(current) if m.model_fields["kind"].default == item]
            current = tagged[0] if tagged else None
            continue
        if item not in current.model_fields:
            return []
        current = _unwrap(current.model_fields[item].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _union_members(tp: Any) -> list[type[BaseModel]]:
    args = getattr(tp, "__args__", ()) or ()
    out: list[type[BaseModel]] = []
    for a in args:
        out.extend(_union_members(a) if getattr(a, "__args__", None) else [a])
    return [a for a in out if isinstance(a, type) and issubclass(a, BaseModel)]


def _unwrap(ann: Any) -> Any:
    args = getattr(ann, "__args__", None)
    if args is None:
        return ann
    members = _union_members(ann)
    if len(members) == 1:
        return members[0]
    if members:
        return ann  # a tagged union: resolved by the next loc item
    return _unwrap(args[0])


def validate_config(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate an already-parsed mapping; ``source`` names it in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _error_lines(exc, ExperimentConfig)
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    Raises:
        ConfigError: the file is missing, is not YAML, repeats a key, or violates the schema. The
            message names the file, each offending key path and the allowed values.
    """
    return validate_config(load_yaml(path), source=str(path))


# ------------------------------------------------------------------ YAML loading

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, changed where YAML 1.1 defeats the config's validation.

    - Only ``true`` / ``false`` (``True``, ``TRUE``, ...) are booleans, as in YAML 1.2:
      YAML 1.1 also reads ``on``/``off``/``yes``/``no`` as booleans, so
      ``distributed: {mode: off}`` never reached the allowed value ``'off'``. These words
      are now strings (a bool field rejects them, naming the key).
    - ``1e-3`` (an exponent without a dot or sign) is a float, as in YAML 1.2, not a string.
    - A key given twice in one mapping is a :class:`ConfigError` naming the file, the key
      path and both lines (YAML 1.1 silently keeps the last one). Keys brought in by a
      ``<<`` merge may still be overridden, as YAML intends.
    """

    source = "<config>"

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_duplicates(node, (), set())
        return super().construct_document(node)

    def _check_duplicates(self, node: yaml.Node, path: tuple[Any, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias: checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, path + (i,), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                key = None
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = self.construct_object(key_node)
                    mark = key_node.start_mark
                    if key in first:
                        at, before = f"line {mark.line + 1}", f"line {first[key].line + 1}"
                        if mark.line == first[key].line:  # a flow mapping: {seed: 1, seed: 2}
                            at, before = f"{at}, column {mark.column + 1}", f"column {first[key].column + 1}"
                        raise ConfigError(
                            f"{self.source}: duplicate key '{_format_loc(path + (key,))}' at {at} "
                            f"(already given at {before}); each key may appear only once"
                        )
                    first[key] = mark
                self._check_duplicates(value_node, path + ((key,) if key is not None else ()), seen)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<config>") -> Any:
    """Parse config YAML text (see :class:`_ConfigLoader`); ``source`` names it in errors.

    Raises:
        ConfigError: a key is duplicated.
        yaml.YAMLError: the text is not YAML.
    """
    loader = _ConfigLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> Any:
    """Read a config file (experiment or study) into plain data, without validating it.

    Raises:
        ConfigError: the file is missing, is not YAML, or repeats a key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        return parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def json_schema() -> dict[str, Any]:
    """The JSON schema of an experiment config (``configs/schema.json``)."""
    return ExperimentConfig.model_json_schema()
