"""Typed experiment configuration: the only package that reads experiment YAML.

An experiment is one YAML file (``configs/*.yaml``). :func:`load_config` parses and
validates it against the pydantic models of this package *before* any JAX work starts, and
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
- Files are read as YAML with YAML 1.2 scalars (:class:`~lopt.config.loader._ConfigLoader`): only
  ``true``/``false`` are booleans (``on``, ``off``, ``yes``, ``no`` are strings), ``1e-3``
  is a float, and a key given twice is an error. Numbers and booleans are strict: no
  ``true`` for an integer, no ``"no"`` for a boolean, no ``.inf``/``.nan``.

This package imports neither JAX nor anything heavy, so a bad config fails in
well under a second.

One module per config section, as in a paper's method section:

- :mod:`~lopt.config.base`: strict scalars, the strict base model, :class:`ConfigError`;
- :mod:`~lopt.config.tasks`: ``data:`` and the inner tasks (``meta_train.task``, families);
- :mod:`~lopt.config.optimizers`: the learned optimizers (``lopt:``);
- :mod:`~lopt.config.meta_train`: ``meta_train:`` (estimator, unroll geometry, outer optimizer);
- :mod:`~lopt.config.evaluation`: ``evaluation:`` and ``analysis:``;
- :mod:`~lopt.config.compute`: ``compute:`` and ``resources:``;
- :mod:`~lopt.config.experiment`: the whole experiment, :func:`validate_config`, :func:`load_config`;
- :mod:`~lopt.config.errors` / :mod:`~lopt.config.loader`: error messages and YAML reading.
"""

from __future__ import annotations

from lopt.config.base import Bool, ConfigError, Float, Int, PosFloat, PosInt, changed_keys
from lopt.config.compute import (
    ComputeConfig,
    DeviceConfig,
    DistributedConfig,
    ResourcesConfig,
    StageResources,
)
from lopt.config.evaluation import AnalysisConfig, EvalTaskConfig, EvaluationConfig, LRGridConfig
from lopt.config.experiment import (
    ExperimentConfig,
    TrackingConfig,
    json_schema,
    load_config,
    validate_config,
)
from lopt.config.loader import load_yaml, parse_yaml
from lopt.config.meta_train import (
    PARTICLE_CHUNK_HELP,
    MetaTrainConfig,
    check_particle_chunk,
    particle_chunk_unit,
)
from lopt.config.optimizers import (
    LOPT_KINDS,
    MLP_FEATURES,
    AdafacMLPLOptConfig,
    LOptConfig,
    MLPLOptConfig,
    NNAdamConfig,
    NominalConfig,
    RNNMLPLOptConfig,
)
from lopt.config.tasks import (
    DATASET_NAMES,
    TASK_KINDS,
    CharLMTaskConfig,
    DataConfig,
    DatasetName,
    ImageConvTaskConfig,
    ImageMLPTaskConfig,
    QuadraticTaskConfig,
    TaskConfig,
    TaskFamilyConfig,
)

__all__ = [
    "DATASET_NAMES",
    "LOPT_KINDS",
    "MLP_FEATURES",
    "PARTICLE_CHUNK_HELP",
    "TASK_KINDS",
    "AdafacMLPLOptConfig",
    "AnalysisConfig",
    "Bool",
    "CharLMTaskConfig",
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "DatasetName",
    "DeviceConfig",
    "DistributedConfig",
    "EvalTaskConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "Float",
    "ImageConvTaskConfig",
    "ImageMLPTaskConfig",
    "Int",
    "LOptConfig",
    "LRGridConfig",
    "MLPLOptConfig",
    "MetaTrainConfig",
    "NNAdamConfig",
    "NominalConfig",
    "PosFloat",
    "PosInt",
    "QuadraticTaskConfig",
    "RNNMLPLOptConfig",
    "ResourcesConfig",
    "StageResources",
    "TaskConfig",
    "TaskFamilyConfig",
    "TrackingConfig",
    "changed_keys",
    "check_particle_chunk",
    "json_schema",
    "load_config",
    "load_yaml",
    "parse_yaml",
    "particle_chunk_unit",
    "validate_config",
]
