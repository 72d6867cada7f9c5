"""Config of the data and of the inner tasks (``data:``, ``meta_train.task``, task families)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_serializer, model_validator

from lopt.config.base import Float, Int, KeyedError, PosFloat, PosInt, _Strict

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
    parametrization: Literal["standard", "mup"] = Field(
        "standard",
        description="standard (SP) or mup: the Maximal Update Parametrization (zero readout init, readout "
        "input x base/width, per-tensor learning-rate multipliers on every optimizer; lopt.tasks.mup). Needs a hidden layer.",
    )
    mup_base_width: PosInt = Field(
        1,
        description="muP's base width b: 1 gives muLO's absolute multipliers (hidden-layer steps / fan-in); a width "
        "gives mup's relative ones, which equal the standard parametrization's steps at that width. Every muP task of "
        "an experiment must share it.",
    )

    @model_validator(mode="after")
    def _mup_settings(self) -> ImageMLPTaskConfig:
        if self.parametrization == "mup" and not self.hidden_sizes:
            raise KeyedError(
                ("parametrization",), "mup needs at least one hidden layer (hidden_sizes is empty); allowed here: standard"
            )
        if self.parametrization == "standard" and self.mup_base_width != 1:
            raise KeyedError(("mup_base_width",), "applies to parametrization: mup only (this task is standard)")
        return self

    @model_serializer(mode="wrap")
    def _omit_standard(self, handler: Any) -> dict[str, Any]:
        # added after results were published: absent while they ask for the behaviour from
        # before them, so fingerprints, rerun triggers and recorded configs stay valid
        data = handler(self)
        if data.get("parametrization") == "standard":
            del data["parametrization"]
        if data.get("mup_base_width") == 1:
            del data["mup_base_width"]
        return data


def is_mup(task: Any) -> bool:
    """Whether a task config is muP-parametrized."""
    return getattr(task, "parametrization", "standard") == "mup"


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
