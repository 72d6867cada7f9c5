"""Learned optimizers (the zoo) and hand-designed optax baselines."""

from lopt.optimizers.adafac_mlp_lopt import AdafacMLPLOpt, AdafacMLPLOptState
from lopt.optimizers.base import LearnedOptimizer, model_card_markdown, update_rule
from lopt.optimizers.baselines import (
    BASELINE_UPDATE_RULES,
    BASELINES,
    lr_grid,
    make_baseline,
    select_optimizer,
)
from lopt.optimizers.mlp_lopt import MLP_FEATURES, MLPLOpt, MLPLOptState
from lopt.optimizers.nn_adam import NNAdam, NNAdamState
from lopt.optimizers.nominal import NOMINAL_OPTIMIZERS, NominalLOpt, NominalLOptState
from lopt.optimizers.pretrained import Pretrained, from_config, load_pretrained
from lopt.optimizers.registry import LOPT_KINDS, lopt_fields, make_lopt
from lopt.optimizers.rnn_mlp_lopt import RNNMLPLOpt, RNNMLPLOptState

__all__ = [
    "BASELINES",
    "BASELINE_UPDATE_RULES",
    "LOPT_KINDS",
    "MLP_FEATURES",
    "NOMINAL_OPTIMIZERS",
    "AdafacMLPLOpt",
    "AdafacMLPLOptState",
    "LearnedOptimizer",
    "MLPLOpt",
    "MLPLOptState",
    "NNAdam",
    "NNAdamState",
    "NominalLOpt",
    "NominalLOptState",
    "Pretrained",
    "RNNMLPLOpt",
    "RNNMLPLOptState",
    "from_config",
    "load_pretrained",
    "lopt_fields",
    "lr_grid",
    "make_baseline",
    "make_lopt",
    "model_card_markdown",
    "select_optimizer",
    "update_rule",
]
