"""Typed configuration of an estimator *study*: one paper experiment as one YAML file.

A study (``configs/paper/*.yaml``, marked by ``kind: study``) meta-trains the same
meta-parameters of one unrolled system with several estimator *methods*, each over
several seeds, and records the unperturbed evaluation loss against outer iterations,
total unroll steps and wall-clock. Its analysis draws the paper's figures and checks
the paper's claims (``claims``) against the measured numbers.

Like :mod:`lopt.config`, this module imports no JAX; :func:`load_study` turns every
problem into a :class:`~lopt.config.ConfigError` naming the file, key path and allowed
values.

Conventions are those of the experiment configs: ``num_particles`` counts every
perturbed copy (pairs x 2), window losses are per-step means (multiply a PES-code
learning rate by ``K`` -- or ``T`` for a summed episode objective -- to convert).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from lopt.config import (
    PARTICLE_CHUNK_HELP,
    AnalysisConfig,
    Bool,
    ConfigError,
    DataConfig,
    DeviceConfig,
    Float,
    Int,
    LOptConfig,
    MLPLOptConfig,
    PosFloat,
    PosInt,
    ResourcesConfig,
    TaskConfig,
    TrackingConfig,
    check_particle_chunk,
    load_yaml,
    parse_yaml,
)
from lopt.config.base import KeyedError, _Strict
from lopt.config.errors import error_lines
from lopt.config.optimizers import check_nominal_for_mup
from lopt.config.tasks import is_mup

Name = Annotated[str, Field(min_length=2, pattern=r"^[A-Za-z0-9_\-]+$")]
EstimatorName = Literal["tbptt", "full_es", "tes", "pes", "gpes", "nres"]


# ------------------------------------------------------------------------- systems


class InfluenceBalancingConfig(_Strict):
    """PES section 5.1; the state never resets (a horizon beyond any run)."""

    kind: Literal["influence_balancing"] = "influence_balancing"
    horizon: PosInt = Field(10**9, description="T; the paper never resets the state.")
    dim: Annotated[Int, Field(ge=2)] = 23
    num_positive: PosInt = Field(10, description="Entries of b that are +1 (the rest are -1); at most dim.")
    eval_steps: PosInt = Field(500, description="Metric: the per-step loss after this many steps from s_0.")

    @model_validator(mode="after")
    def _check_num_positive(self) -> InfluenceBalancingConfig:
        if self.num_positive > self.dim:
            raise KeyedError(("num_positive",), f"{self.num_positive} must be <= dim ({self.dim})")
        return self


class ToyScheduleConfig(_Strict):
    """PES section 5.2: a 2-D learning-rate schedule; metric = mean loss over T."""

    kind: Literal["toy_schedule"] = "toy_schedule"
    horizon: PosInt = 100


class LorenzConfig(_Strict):
    """NRES section 6: Lorenz-63 parameters; metric = mean test loss over T."""

    kind: Literal["lorenz"] = "lorenz"
    horizon: PosInt = 2000
    dt: PosFloat = 0.005
    start_noise: Annotated[Float, Field(ge=0)] = Field(0.0, description="Train start noise (paper: 0).")
    test_start_noise: Annotated[Float, Field(ge=0)] = Field(1.0, description="Test start noise (paper: 1).")
    state_bound: PosFloat = 1e3


class LOptTrainingConfig(_Strict):
    """Inner training of an image MLP by the learned optimizer (NRES section 6)."""

    kind: Literal["lopt_training"] = "lopt_training"
    task: TaskConfig
    lopt: LOptConfig = Field(default_factory=MLPLOptConfig)
    horizon: PosInt = 1000
    meta_loss_split: Literal["train", "outer_valid"] = Field(
        "outer_valid",
        description="Per-step meta-loss: the training-batch loss before the step's update, "
        "or an outer_valid batch's loss after it (learned_optimization's meta_loss_split).",
    )

    @model_validator(mode="after")
    def _mup_rule(self) -> LOptTrainingConfig:
        if is_mup(self.task):
            check_nominal_for_mup(self.lopt)
        return self


#: Dimension of theta per system kind; a learned optimizer's theta is not tracked per coordinate.
THETA_DIM = {"influence_balancing": 1, "toy_schedule": 2, "lorenz": 2}


SystemConfig = Annotated[
    InfluenceBalancingConfig | ToyScheduleConfig | LorenzConfig | LOptTrainingConfig,
    Field(discriminator="kind"),
]
SYSTEM_KINDS = ("influence_balancing", "toy_schedule", "lorenz", "lopt_training")


# ------------------------------------------------------------------------- methods


class OuterOptimizerConfig(_Strict):
    """The optax outer optimizer of one method, with an optional step-decay schedule."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: PosFloat = 1e-3
    b1: Annotated[Float, Field(ge=0, lt=1)] = Field(0.9, description="Adam beta1 (PES toy: 0.99).")
    b2: Annotated[Float, Field(ge=0, lt=1)] = 0.999
    lr_decay: dict[PosInt, PosFloat] = Field(
        default_factory=dict,
        description="Piecewise-constant schedule {outer step: multiplier}, e.g. {1000: 0.1}.",
    )


class StudyComputeConfig(DeviceConfig):
    """Where a study's runs compute. Each (method, seed) run is one process (no multi-host:
    a study's parallelism is its many runs, which Snakemake schedules)."""

    devices: Annotated[Int, Field(ge=1)] | Literal["all"] = Field(
        1,
        description="Local devices each run shards its particles over ('all': every one). A "
        "method whose num_particles does not split into whole antithetic pairs per device "
        "(TBPTT: whole particles) runs on one device.",
    )


# MethodConfig options added after studies had run, with their no-op defaults.
_LATER_METHOD_OPTIONS: dict[str, Any] = {"eval_every": None, "window_loss": "mean"}
# MethodConfig options that change how, not what, a run computes (or only how it is shown,
# the legend label: the analysis reruns for it): never in its spec.
_NOT_IN_SPEC = {"particle_chunk", "label"}


class MethodConfig(_Strict):
    """One estimator with its hyperparameters (a curve in the study's figures)."""

    name: Name = Field(description="Identifier used in paths and tables.")
    label: str | None = Field(None, description="Legend label (defaults to name).")
    estimator: EstimatorName
    num_particles: Annotated[Int, Field(ge=1)] = Field(
        description="All perturbed copies (pairs x 2; even) or TBPTT's independent particles."
    )
    trunc_length: PosInt | None = Field(None, description="K; None means the horizon (FullES).")
    sigma: PosFloat = 0.01
    noise_reuse_steps: PosInt | None = Field(None, description="GPES only: K'.")
    step_unlock: Bool = True
    loss_diff_clip: PosFloat | None = None
    window_loss: Literal["mean", "end"] = Field(
        "mean",
        description="TBPTT only: differentiate the mean loss over the window's K steps (lopt's "
        "convention) or the window's last step only (the PES code's influence-balancing TBPTT).",
    )
    particle_chunk: PosInt | None = Field(None, description=PARTICLE_CHUNK_HELP)
    grad_clip: PosFloat | None = Field(None, description="Global-norm clip (the papers use none).")
    outer: OuterOptimizerConfig = Field(default_factory=OuterOptimizerConfig)
    outer_steps: PosInt | None = Field(None, description="Overrides the study's budget for this method.")
    eval_every: PosInt | None = Field(
        None,
        description="Overrides evaluation.every for this method (outer steps), e.g. to evaluate "
        "K = 1 and K = 10 at the same unroll steps under one budget.",
    )

    @property
    def display(self) -> str:
        return self.label or self.name

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        if self.estimator != "tbptt" and self.num_particles % 2:
            raise KeyedError(("num_particles",), f"must be even for ES estimators (antithetic pairs), got {self.num_particles}")
        if self.noise_reuse_steps is not None and self.estimator != "gpes":
            raise KeyedError(("noise_reuse_steps",), "applies to estimator 'gpes' only")
        if self.loss_diff_clip is not None and self.estimator == "tbptt":
            raise KeyedError(("loss_diff_clip",), "applies to the ES estimators, not 'tbptt'")
        if self.particle_chunk is not None:
            check_particle_chunk(self.particle_chunk, self.num_particles, self.estimator, 1)
        if self.window_loss != "mean" and self.estimator != "tbptt":
            raise KeyedError(
                ("window_loss",),
                f"{self.window_loss!r} applies to estimator 'tbptt' only; the ES "
                "estimators use the mean over the window ('mean')"
            )
        return self


# ------------------------------------------------------------------------- claims


class ClaimConfig(_Strict):
    """A paper claim and the check that decides whether this run reproduced it.

    Checks compare seed-means of each method's final evaluation loss / final theta with a
    margin of 2 combined standard errors of those means (verdict ``yes`` beyond it in the
    claimed direction, ``no`` beyond it the other way, ``inconclusive`` in between; one
    seed: the means decide; :mod:`lopt.studies.analysis`):

    - ``lower_final``: ``better`` ends below every method in ``worse``.
    - ``reaches_first``: ``better``'s seed-mean curve reaches ``threshold`` at a smaller
      ``axis`` value (unroll steps, wall-clock or outer step) than each of ``worse``
      (never reaching counts as infinity).
    - ``reduces_loss``: every method in ``methods`` ends below ``factor`` x its start.
    - ``theta_near``: every method in ``methods`` ends within ``tol`` of ``target``.
    - ``theta_moves_away``: every method in ``methods`` moves theta away from
      ``target`` (the wrong direction: the signature of truncation bias).
    """

    text: str = Field(description="The claim, as the paper states it.")
    source: str = Field("", description="Where the paper states it (section / figure).")
    check: Literal["lower_final", "reaches_first", "reduces_loss", "theta_near", "theta_moves_away"]
    better: str | None = None
    worse: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    factor: Annotated[Float, Field(gt=0, le=1)] = 1.0
    target: list[Float] | None = None
    tol: PosFloat = 0.05
    threshold: PosFloat | None = None
    axis: Literal["unroll_steps", "wall_time", "outer_step"] = "unroll_steps"

    @model_validator(mode="after")
    def _check(self) -> ClaimConfig:
        pairwise = self.check in ("lower_final", "reaches_first")
        if pairwise and (self.better is None or not self.worse):
            raise ValueError(f"check {self.check!r} needs 'better' and a non-empty 'worse'")
        if self.check == "reaches_first" and self.threshold is None:
            raise ValueError("check 'reaches_first' needs 'threshold'")
        if not pairwise and not self.methods:
            raise ValueError(f"check {self.check!r} needs a non-empty 'methods'")
        if self.check in ("theta_near", "theta_moves_away") and self.target is None:
            raise ValueError(f"check {self.check!r} needs 'target'")
        return self

    def method_names(self) -> list[str]:
        return ([self.better] if self.better else []) + self.worse + self.methods


# ------------------------------------------------------------------------- study


class StudyEvalConfig(_Strict):
    """How the unperturbed meta-parameters are evaluated during training."""

    every: PosInt = Field(10, description="Outer steps between evaluations (also at 0 and the end).")
    num_episodes: PosInt = Field(1, description="Episodes averaged (fixed keys, shared by all methods).")
    seed: Annotated[Int, Field(ge=0)] = Field(12345, description="Seed of the evaluation episodes.")


class SurfaceConfig(_Strict):
    """A meta-loss surface over a 2-D theta grid, with the methods' trajectories on it."""

    theta0: tuple[Float, Float]
    theta1: tuple[Float, Float]
    num: Annotated[Int, Field(ge=5, le=400)] = 60

    @model_validator(mode="after")
    def _ranges(self) -> SurfaceConfig:
        for key in ("theta0", "theta1"):
            low, high = getattr(self, key)
            if not low < high:
                raise KeyedError((key,), f"[{low:g}, {high:g}] must be [low, high] with low < high")
        return self


class VarianceConfig(_Strict):
    """``lopt variance`` on the study's system at theta_0 (figures/variance.png)."""

    estimators: list[EstimatorName] = Field(default_factory=lambda: ["pes", "nres"])
    trunc_lengths: list[PosInt] = Field(min_length=2, description="Each must divide system.horizon.")
    sigma: PosFloat = 0.01
    replicas: Annotated[Int, Field(ge=10)] = 1000
    protocols: list[Literal["episode", "window"]] = Field(default_factory=lambda: ["window", "episode"])


class StudyAnalysisConfig(AnalysisConfig):
    """Figures of a study (adds theta traces and the optional loss surface)."""

    log_loss: Bool = Field(True, description="Log-scale loss axes.")
    plot_theta: Bool = Field(False, description="Plot each theta coordinate vs outer step.")
    surface: SurfaceConfig | None = None
    variance: VarianceConfig | None = None


class QuickConfig(_Strict):
    """Overrides of the ``--quick`` variant (CI-sized; results in results/<name>_quick)."""

    seeds: PosInt = 1
    methods: list[str] | None = Field(None, min_length=1, description="Subset of method names (default: all).")
    outer_steps: PosInt | None = None
    unroll_budget: PosInt | None = None
    eval_every: PosInt | None = None
    variance: VarianceConfig | None = Field(
        None, description="Replaces analysis.variance (e.g. fewer truncation lengths and replicas)."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> QuickConfig:
        if self.outer_steps is not None and self.unroll_budget is not None:
            raise KeyedError(("unroll_budget",), "set at most one of quick.outer_steps and quick.unroll_budget "
                             "(the quick variant's budget replaces the study's)")
        return self


class StudyConfig(_Strict):
    """A paper experiment: one system, several estimator methods, several seeds."""

    kind: Literal["study"]
    name: Name
    description: str = ""
    reference: str = Field("", description="The paper (and section) this study reproduces.")
    seeds: PosInt = Field(5, description="Seeds per method: 0 .. seeds-1 (+ seed_offset).")
    seed_offset: Annotated[Int, Field(ge=0)] = 0
    outer_steps: PosInt | None = Field(None, description="Outer steps per method.")
    unroll_budget: PosInt | None = Field(
        None, description="Total inner steps per method; outer steps = ceil(budget / steps per estimate)."
    )
    system: SystemConfig
    data: DataConfig = Field(default_factory=DataConfig)
    evaluation: StudyEvalConfig = Field(default_factory=StudyEvalConfig)
    methods: list[MethodConfig] = Field(min_length=1)
    claims: list[ClaimConfig] = Field(default_factory=list)
    analysis: StudyAnalysisConfig = Field(default_factory=StudyAnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    compute: StudyComputeConfig = Field(default_factory=StudyComputeConfig)
    quick: QuickConfig = Field(default_factory=QuickConfig)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if (self.outer_steps is None) == (self.unroll_budget is None) and any(
            m.outer_steps is None for m in self.methods
        ):
            raise KeyedError(
                ("unroll_budget",) if self.unroll_budget is not None else ("outer_steps",),
                "set exactly one of 'outer_steps' and 'unroll_budget' (or outer_steps on every method)",
            )
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise KeyedError(("methods",), f"method names must be unique, got {names}")
        for i, claim in enumerate(self.claims):
            unknown = [n for n in claim.method_names() if n not in names]
            if unknown:
                raise KeyedError(("claims", i), f"names unknown methods {unknown}; allowed: {names}")
        if self.quick.methods is not None:
            unknown = [n for n in self.quick.methods if n not in names]
            if unknown:
                raise KeyedError(("quick", "methods"), f"names unknown methods {unknown}; allowed: {names}")
        horizon = self.system.horizon
        for i, m in enumerate(self.methods):
            k = m.trunc_length or horizon
            if k > horizon:
                raise KeyedError(("methods", i, "trunc_length"),
                                 f"{k} must be <= system.horizon ({horizon}) (method {m.name})")
            if m.estimator == "full_es" and k != horizon:
                raise KeyedError(("methods", i, "trunc_length"),
                                 f"full_es needs trunc_length = system.horizon ({horizon}) or null (method {m.name})")
            if m.noise_reuse_steps is not None and m.noise_reuse_steps % k:
                raise KeyedError(("methods", i, "noise_reuse_steps"),
                                 f"must be a multiple of trunc_length ({k}) (method {m.name})")
        chunked = [i for i, m in enumerate(self.methods) if m.particle_chunk is not None]
        if chunked and self.compute.devices != 1:
            raise KeyedError(
                ("methods", chunked[0], "particle_chunk"),
                f"a one-device (CPU cache) setting; with compute.devices {self.compute.devices!r} "
                f"leave it unset (set on methods {[self.methods[i].name for i in chunked]})",
            )
        if self.compute.precision != "float32" and self.system.kind != "lopt_training":
            raise KeyedError(
                ("compute", "precision"),
                f"{self.compute.precision!r} applies to system kind 'lopt_training' only (its inner "
                f"task); system.kind is {self.system.kind!r}: use 'float32'",
            )
        for where, variance in ((("analysis", "variance"), self.analysis.variance), (("quick", "variance"), self.quick.variance)):
            bad = [k for k in variance.trunc_lengths if horizon % k] if variance is not None else []
            if bad:
                raise KeyedError((*where, "trunc_lengths"), f"{bad} must divide system.horizon ({horizon})")
        if self.quick.variance is not None and self.analysis.variance is None:
            raise KeyedError(("quick", "variance"), "replaces analysis.variance in the quick variant; "
                             "set analysis.variance too (the full study runs it), or remove quick.variance")
        dim = THETA_DIM.get(self.system.kind)
        for i, claim in enumerate(self.claims):
            if claim.target is None:
                continue
            if dim is None:
                raise KeyedError(
                    ("claims", i, "check"),
                    f"{claim.check!r} needs a low-dimensional theta; system kind "
                    f"{self.system.kind!r} has none (allowed kinds: {', '.join(THETA_DIM)})",
                )
            if len(claim.target) != dim:
                raise KeyedError(
                    ("claims", i, "target"),
                    f"has {len(claim.target)} values; theta of system kind {self.system.kind!r} has {dim}",
                )
        if self.analysis.plot_theta and dim is None:
            raise KeyedError(
                ("analysis", "plot_theta"),
                f"needs a low-dimensional theta; system kind {self.system.kind!r} "
                f"has none (allowed kinds: {', '.join(THETA_DIM)})",
            )
        if self.analysis.surface is not None and self.system.kind not in ("toy_schedule", "lorenz"):
            raise KeyedError(
                ("analysis", "surface"),
                f"needs a 2-D theta (allowed system kinds: toy_schedule, lorenz; got {self.system.kind!r})",
            )
        return self

    # -- derived ----------------------------------------------------------------

    def method(self, name: str) -> MethodConfig:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"study {self.name}: unknown method {name!r}; allowed: {', '.join(m.name for m in self.methods)}")

    def trunc_length(self, method: MethodConfig) -> int:
        return method.trunc_length or self.system.horizon

    def steps_per_estimate(self, method: MethodConfig) -> int:
        """Inner steps one outer iteration simulates (matches ``Estimator.unroll_steps``)."""
        k = self.trunc_length(method)
        if method.estimator == "tes":
            return (method.num_particles + method.num_particles // 2) * k
        return method.num_particles * k

    def outer_steps_for(self, method: MethodConfig) -> int:
        if method.outer_steps is not None:
            return method.outer_steps
        if self.unroll_budget is not None:
            return max(1, math.ceil(self.unroll_budget / self.steps_per_estimate(method)))
        assert self.outer_steps is not None
        return self.outer_steps

    def eval_every_for(self, method: MethodConfig) -> int:
        """Outer steps between this method's evaluations."""
        return method.eval_every if method.eval_every is not None else self.evaluation.every

    def seed_list(self) -> list[int]:
        return [self.seed_offset + i for i in range(self.seeds)]

    def datasets(self) -> list[str]:
        ds = getattr(getattr(self.system, "task", None), "dataset", None)
        return [ds] if ds else []

    def output_files(self) -> list[str]:
        """Paths (relative to ``results/<name>``) the analysis writes."""
        files = ["figures/loss.png", "tables/summary.csv", "tables/summary.md", "claims.md"]
        if self.analysis.plot_theta:
            files.append("figures/theta.png")
        if self.analysis.surface is not None:
            files.append("figures/surface.png")
        if self.lr_sweep_groups():
            files += ["figures/lr_sweep.png", "tables/lr_sweep.csv", "tables/lr_sweep.md"]
        return files

    def lr_sweep_groups(self) -> dict[str, list[MethodConfig]]:
        """Methods that differ only in ``outer.lr`` (and name, label): a learning-rate sweep.

        Groups with two or more rates, keyed by a label naming the estimator, K, N and
        sigma, members sorted by rate (:mod:`lopt.studies.sweep` plots and tabulates them).
        """
        groups: dict[str, list[MethodConfig]] = {}
        for m in self.methods:
            raw = m.model_dump(mode="json", exclude={"name", "label"})
            raw["outer"].pop("lr")
            groups.setdefault(json.dumps(raw, sort_keys=True), []).append(m)
        out = {}
        for members in groups.values():
            if len({m.outer.lr for m in members}) > 1:
                m = members[0]
                label = f"{m.estimator} K={self.trunc_length(m)} N={m.num_particles} sigma={m.sigma:g}"
                if label in out:  # groups that differ in another setting: name their first member
                    label += f" ({m.name})"
                out[label] = sorted(members, key=lambda x: x.outer.lr)
        return out

    def variance_files(self) -> list[str]:
        """Outputs of the variance analysis (empty unless ``analysis.variance``)."""
        return ["figures/variance.png", "tables/variance.csv"] if self.analysis.variance else []

    def run_spec(self, method: MethodConfig) -> dict[str, Any]:
        """Everything one (method, seed) run's numbers depend on (a rerun trigger)."""
        raw = self.to_dict()
        # Options added later appear only when changed from their default, so runs from
        # before each option existed keep their spec and are not re-run.
        unset = {k for k, default in _LATER_METHOD_OPTIONS.items() if getattr(method, k) == default} | _NOT_IN_SPEC
        spec = {
            "system": raw["system"],
            "data": raw["data"],
            "evaluation": raw["evaluation"],
            "method": method.model_dump(mode="json", exclude=unset),
            "outer_steps": self.outer_steps_for(method),
        }
        # Devices and platform change only the order of float sums; precision changes the numbers.
        if self.compute.precision != "float32":
            spec["precision"] = self.compute.precision
        return spec

    def quick_variant(self) -> StudyConfig:
        """The CI-sized variant: fewer seeds/methods/steps, named ``<name>_quick``."""
        q = self.quick
        raw = self.model_dump()  # Python values: JSON would turn lr_decay's int keys into strings
        raw["name"] = f"{self.name}_quick"
        raw["seeds"] = q.seeds
        if q.methods is not None:
            raw["methods"] = [m for m in raw["methods"] if m["name"] in q.methods]
            raw["claims"] = [
                c for c in raw["claims"]
                if all(n in q.methods for n in ([c["better"]] if c["better"] else []) + c["worse"] + c["methods"])
            ]
        if q.outer_steps is not None or q.unroll_budget is not None:
            raw["outer_steps"], raw["unroll_budget"] = q.outer_steps, q.unroll_budget
            for m in raw["methods"]:
                m["outer_steps"] = None
        if q.eval_every is not None:
            raw["evaluation"]["every"] = q.eval_every
            for m in raw["methods"]:
                m["eval_every"] = None
        if q.variance is not None:
            raw["analysis"]["variance"] = raw["quick"]["variance"]
        return StudyConfig.model_validate(raw)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def is_study(path: str | Path) -> bool:
    """True when the YAML file at ``path`` declares ``kind: study``.

    An unreadable or non-YAML file is not a study (loading it reports why).

    Raises:
        ConfigError: the file repeats a key (which one it means is ambiguous), or has a
            top-level ``kind`` other than ``study`` (experiment configs have none).
    """
    try:
        raw = parse_yaml(Path(path).read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if isinstance(raw, dict) and "kind" in raw and raw["kind"] != "study":
        raise ConfigError(f"{path}: kind: {raw['kind']!r} is not allowed; the only value is 'study' "
                          "(a paper study; omit kind for an experiment config)")
    return isinstance(raw, dict) and raw.get("kind") == "study"


def load_study(path: str | Path, *, quick: bool = False) -> StudyConfig:
    """Read and validate a study YAML file (``quick`` returns :meth:`quick_variant`).

    Raises:
        ConfigError: naming the file, each offending key path and the allowed values.
    """
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        lines = error_lines(exc, StudyConfig)
        raise ConfigError(f"{path}: invalid study config\n" + "\n".join(lines)) from None
    try:  # checked either way: CI runs the quick variant of a study that validates in full
        variant = study.quick_variant()
    except ValidationError as exc:
        lines = error_lines(exc, StudyConfig)
        raise ConfigError(f"{path}: the quick variant (this study with its `quick:` overrides applied, "
                          "as --quick runs it) is invalid; fix `quick:`\n" + "\n".join(lines)) from None
    return variant if quick else study
