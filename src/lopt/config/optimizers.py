"""Config of the learned optimizers (the ``lopt:`` section): one model per architecture."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from lopt.config.base import Bool, Float, KeyedError, NoRepeats, PosFloat, PosInt, _kind, _Strict

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
    features: Annotated[list[Literal[MLP_FEATURES]], NoRepeats] = Field(  # type: ignore[valid-type]
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


def check_nominal_for_mup(lopt: Any) -> None:
    """Refuse a nominal term without muP multipliers shared with the learned one (an SGD
    term: lopt.optimizers.NominalLOpt.update_rule) when the learned optimizer trains muP
    tasks; the error sits at ``lopt.nominal.optimizer`` below the model that calls this."""
    nominal = lopt.nominal
    if nominal is not None and nominal.optimizer != "adam":
        raise KeyedError(
            ("lopt", "nominal", "optimizer"),
            f"{nominal.optimizer!r} has no muP learning-rate multipliers shared with the learned term; "
            "with parametrization: mup tasks the allowed nominal optimizer is adam",
        )
