"""The learned-optimizer protocol.

A learned optimizer is a recipe for meta-parameters plus a map from meta-parameters
to an optax :class:`~optax.GradientTransformation`. Meta-training perturbs and
differentiates ``meta_params``; evaluation and users only ever see ``to_optax``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import optax

MetaParams = Any


@runtime_checkable
class LearnedOptimizer(Protocol):
    """``init(key) -> meta_params`` and ``to_optax(meta_params, num_steps)``."""

    name: str

    def init(self, key: jax.Array) -> MetaParams:
        """Initial meta-parameters (a pytree of float32 arrays)."""
        ...

    def to_optax(self, meta_params: MetaParams, num_steps: int) -> optax.GradientTransformation:
        """An optax optimizer for an inner run of ``num_steps`` steps.

        ``num_steps`` sets the training-fraction features; it may be a traced value.
        """
        ...
