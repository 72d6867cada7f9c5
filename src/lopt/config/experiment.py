"""The experiment config (one ``configs/*.yaml``): its top-level model, validation and loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from lopt.config.base import Bool, ConfigError, Int, KeyedError, PosInt, _Strict
from lopt.config.compute import ComputeConfig, ResourcesConfig
from lopt.config.errors import error_lines
from lopt.config.evaluation import BASELINE_UPDATE_RULES, AnalysisConfig, EvaluationConfig
from lopt.config.loader import load_yaml
from lopt.config.meta_train import MetaTrainConfig
from lopt.config.optimizers import LOptConfig, MLPLOptConfig, check_nominal_for_mup
from lopt.config.tasks import DataConfig, is_mup


class TrackingConfig(_Strict):
    """Weights & Biases tracking (offline unless asked for online; `wandb sync` uploads later)."""

    project: Annotated[str, Field(min_length=2)] = "lopt"
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Overrides WANDB_MODE; unset and without WANDB_MODE, runs are offline."
    )
    log_artifacts: Bool = True


# Options added after results were published, absent from to_dict() while they ask for the
# behaviour from before them, as if they did not exist: (section, key, "is it that behaviour?").
# min_horizon: null, or = horizon (every episode lasts horizon steps either way).
_ABSENT_WHEN_UNSET = (
    ("meta_train", "min_horizon", lambda value, section: value is None or value >= section["horizon"]),
)


class ExperimentConfig(_Strict):
    """One experiment: everything a pipeline run needs."""

    name: Annotated[str, Field(min_length=2, pattern=r"^[A-Za-z0-9_\-]+$")]
    seed: Annotated[Int, Field(ge=0)] = Field(
        0, description="Meta-training seed: meta-parameter init, perturbations, inner seeds and batches."
    )
    num_meta_seeds: PosInt = Field(
        1,
        description="Meta-train this many optimizers, from seeds seed, seed + 1, ...; each is evaluated "
        "against the same tuned baselines and the analysis reports the spread across them "
        "(tables/meta_seeds.md). The first is the experiment's optimizer (results/<name>/meta); "
        "the others go to results/<name>/meta_seeds/seed<S>/.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    lopt: LOptConfig = Field(default_factory=MLPLOptConfig)
    meta_train: MetaTrainConfig = Field(default_factory=MetaTrainConfig)
    evaluation: EvaluationConfig
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _mup_rules(self) -> ExperimentConfig:
        # a muP task scales each optimizer's updates by that optimizer's muP multipliers
        # (lopt.tasks.mup); refuse optimizers that have none before any job runs
        mup = [t for t in self.meta_train.tasks() if is_mup(t)]
        mup_eval = [t.name for t in self.evaluation.tasks if is_mup(t.task)]
        # one base width for every muP task: an optimizer meta-trained under one takes steps
        # off by their ratio under another
        meta_loc = ("meta_train", "task_family", "choices") if self.meta_train.task_family else ("meta_train", "task")
        sites = [((*meta_loc, "mup_base_width"), t.mup_base_width) for t in mup] + [
            (("evaluation", "tasks", i, "task", "mup_base_width"), t.task.mup_base_width)
            for i, t in enumerate(self.evaluation.tasks) if is_mup(t.task)
        ]
        for loc, base in sites[1:]:
            if base != sites[0][1]:
                raise KeyedError(loc, f"{base}, but the experiment's first muP task has {sites[0][1]}; allowed: "
                                      f"{sites[0][1]} (one base width for every muP task of the experiment)")
        if mup or mup_eval:
            check_nominal_for_mup(self.lopt)
        refused = [b for b in self.evaluation.baselines if BASELINE_UPDATE_RULES[b] is None]
        if mup_eval and refused:
            raise KeyedError(
                ("evaluation", "baselines"),
                f"{', '.join(refused)} has no muP learning-rate multipliers, and evaluation task(s) "
                f"{', '.join(mup_eval)} use parametrization: mup; allowed baselines there: "
                + ", ".join(b for b, r in BASELINE_UPDATE_RULES.items() if r is not None),
            )
        return self

    def datasets(self) -> list[str]:
        """Every dataset the experiment touches, in first-use order."""
        names = self.meta_train.tasks() + [t.task for t in self.evaluation.tasks]
        out: list[str] = []
        for task in names:
            ds = getattr(task, "dataset", None)
            if ds is not None and ds not in out:
                out.append(ds)
        return out

    def meta_seeds(self) -> list[int]:
        """The meta-training seeds: ``[seed, seed + 1, ..., seed + num_meta_seeds - 1]``."""
        return list(range(self.seed, self.seed + self.num_meta_seeds))

    def with_meta_seed(self, meta_seed: int) -> ExperimentConfig:
        """This experiment meta-trained from ``meta_seed`` (one of :meth:`meta_seeds`) instead of ``seed``.

        Only meta-training reads ``seed`` (evaluation seeds start at ``evaluation.seed_offset``),
        so every meta-seed's optimizer is evaluated on the same runs as the experiment's own.
        """
        if meta_seed not in self.meta_seeds():
            raise ConfigError(
                f"meta-seed {meta_seed} is not one of the experiment's meta-training seeds {self.meta_seeds()} "
                "(seed .. seed + num_meta_seeds - 1)"
            )
        return self.model_copy(update={"seed": meta_seed})

    def meta_seed_dir(self, meta_seed: int) -> str:
        """Where ``meta_seed``'s optimizer (``meta/``) and its evaluations (``eval/<task>/``) go,
        relative to ``results/<name>``: ``"."`` for ``seed``, else ``"meta_seeds/seed<S>"``."""
        self.with_meta_seed(meta_seed)  # checks it
        return "." if meta_seed == self.seed else f"meta_seeds/seed{meta_seed}"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (all defaults filled in) as plain JSON-able data.

        Keys added after results were published are left out while they ask for the
        behaviour from before them (see ``_ABSENT_WHEN_UNSET``), so fingerprints, rerun
        triggers and recorded configs of existing runs stay valid.
        """
        resolved = json.loads(self.model_dump_json())
        for section, key, unset in _ABSENT_WHEN_UNSET:
            if key in resolved[section] and unset(resolved[section][key], resolved[section]):
                del resolved[section][key]
        return resolved




def validate_config(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate an already-parsed mapping; ``source`` names it in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = error_lines(exc, ExperimentConfig)
        if "kind" not in raw and {"methods", "system"} & raw.keys():  # a study's keys
            lines.append("  (this looks like a paper study, configs/paper/*.yaml: add `kind: study` at the top)")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    Raises:
        ConfigError: the file is missing, is not YAML, repeats a key, or violates the schema. The
            message names the file, each offending key path and the allowed values.
    """
    return validate_config(load_yaml(path), source=str(path))




def json_schema() -> dict[str, Any]:
    """The JSON schema of an experiment config (``configs/schema.json``)."""
    return ExperimentConfig.model_json_schema()
