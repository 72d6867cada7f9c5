"""Hand-designed baselines: optax optimizers indexed by name, with a learning rate.

Each entry maps a (possibly traced) learning rate to an optax optimizer, so a whole
learning-rate sweep is one ``vmap`` over the rate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optax

BASELINES: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
}


def make_baseline(name: str, learning_rate) -> optax.GradientTransformation:
    """The optax optimizer ``name`` with ``learning_rate``; errors list allowed names."""
    try:
        return BASELINES[name](learning_rate)
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}") from None


def lr_grid(low: float, high: float, num: int) -> np.ndarray:
    """``num`` log-spaced learning rates from ``low`` to ``high`` inclusive."""
    return np.geomspace(low, high, num).astype(np.float32)
