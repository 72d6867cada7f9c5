"""The Task protocol: what every inner problem provides.

A task is a pair of pure functions, ``init(key) -> params`` and
``loss(params, batch) -> scalar``, plus a batch stream ``batch(data, key, split)``
that draws a batch *inside* jit from device-resident arrays (``data``), so an unroll
never leaves the device. ``data`` is a pytree passed as an argument (never closed
over), which keeps large datasets out of the compiled program's constants.

Splits follow the data stage: ``train``, ``inner_valid``, ``outer_valid``, ``test``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

Params = Any
Batch = Any
TaskData = Any  # pytree of arrays, e.g. {"train": (x, y), ...}; None for data-free tasks
SPLITS = ("train", "inner_valid", "outer_valid", "test")


@runtime_checkable
class Task(Protocol):
    """An inner problem. Implementations are frozen dataclasses (hashable, static)."""

    name: str

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters for one inner run."""
        ...

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Scalar loss of ``params`` on ``batch``."""
        ...

    def batch(self, data: TaskData, key: jax.Array, split: str) -> Batch:
        """A random minibatch of ``split`` (train batch size), drawn inside jit."""
        ...

    def evaluate(self, params: Params, data: TaskData, key: jax.Array, split: str) -> dict[str, jax.Array]:
        """Loss (and accuracy where defined) on ``split``: the whole split for data-set tasks
        (exact; ``key`` unused), the noise-free loss for data-free tasks."""
        ...
