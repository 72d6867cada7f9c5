"""Config of held-out evaluation against tuned baselines (``evaluation:``) and of the figures (``analysis:``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lopt.config.base import Int, NoRepeats, PosFloat, PosInt, _Strict
from lopt.config.tasks import TaskConfig

# Each baseline's muP update rule (lopt.tasks.mup): which per-tensor learning-rate
# multipliers a muP task applies to it. Adam's relatives and sign methods make O(1)
# steps per coordinate ("adam"); SGD's steps scale with the gradient ("sgd"). Adafactor
# multiplies its step by the parameter's RMS and has no muP rule here: refused on muP tasks.
BASELINE_UPDATE_RULES: dict[str, str | None] = {
    "sgd": "sgd", "momentum": "sgd", "adam": "adam", "rmsprop": "adam", "adamw": "adam", "nadamw": "adam",
    "lion": "adam", "adafactor": None,
}


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
    # a repeat would tune, plot and report the same optimizer twice
    baselines: Annotated[
        list[Literal["sgd", "momentum", "adam", "adamw", "nadamw", "rmsprop", "lion", "adafactor"]], NoRepeats
    ] = Field(default_factory=lambda: ["sgd", "adam"], min_length=1)
    schedules: Annotated[list[Literal["constant", "cosine", "linear", "warmup_cosine"]], NoRepeats] = Field(
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
