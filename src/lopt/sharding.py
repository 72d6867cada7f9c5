"""Particles sharded across the local devices of one host (JAX GSPMD).

The estimators are written for one device: every per-particle array has a leading
particle axis ``P`` (or pair axis ``P/2``), and the meta-gradient is a sum over it. To
use every local accelerator, :func:`shard_state` places each such leaf with its leading
axis split over a one-dimensional ``particles`` mesh (leaves whose leading size does
not divide evenly, and everything else -- theta, the outer optimizer state, scalars --
are replicated), and :func:`jit_sharded` compiles the meta-step with those layouts as
its input and output shardings. XLA's SPMD partitioner then runs each device's slice of
the vmapped unroll locally and turns the sums over particles into all-reduces, so no
estimator changes. Perturbations are drawn from the same keys as on one device, so the
result equals the single-device one up to the order of floating-point sums.

Multi-device CPU testing: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "particles"


def particle_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``particles`` over the first ``num_devices`` local devices (all)."""
    devices = jax.local_devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={num_devices}: this host has {len(devices)} local devices")
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def _leaf_sharding(mesh: Mesh, leaf: Any, split: bool) -> NamedSharding:
    n = mesh.devices.size
    shape = np.shape(leaf)
    if split and len(shape) >= 1 and shape[0] % n == 0 and shape[0] >= n:
        return NamedSharding(mesh, PartitionSpec(AXIS))
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(state: Any, mesh: Mesh, split: Callable[[Any], Any]) -> Any:
    """Shardings for ``state``: leaves of the subtrees ``split(state)`` marks are split.

    ``split(state)`` returns a pytree of bools with ``state``'s structure (a prefix is
    enough): True where the leading axis is a particle / pair axis.
    """
    marks = split(state)
    return jax.tree_util.tree_map(
        lambda mark, sub: jax.tree_util.tree_map(lambda leaf: _leaf_sharding(mesh, leaf, mark), sub),
        marks,
        state,
        is_leaf=lambda x: isinstance(x, bool),
    )


def jit_sharded(fn: Callable, state_sharding: Any, mesh: Mesh) -> Callable:
    """``jax.jit(fn)`` for ``fn(state, data) -> (state, metrics)`` keeping ``state`` sharded.

    ``data`` and the metrics are replicated on every device of ``mesh``.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=(state_sharding, replicated), out_shardings=(state_sharding, replicated))


def place(tree: Any, shardings: Any) -> Any:
    """``jax.device_put`` every leaf of ``tree`` onto its sharding (once, before the loop)."""
    return jax.tree_util.tree_map(jax.device_put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` copied onto every device of ``mesh`` (e.g. the task data)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
