"""Learned optimizers and hand-designed optax baselines."""

from lopt.optimizers.base import LearnedOptimizer
from lopt.optimizers.baselines import BASELINES, lr_grid, make_baseline
from lopt.optimizers.mlp_lopt import MLPLOpt, MLPLOptState

__all__ = ["BASELINES", "LearnedOptimizer", "MLPLOpt", "MLPLOptState", "lr_grid", "make_baseline"]
