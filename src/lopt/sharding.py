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

The same code spans several hosts: after :func:`lopt.runtime.setup` joined them, the mesh
holds every process's devices, each process places the slices its devices own, and the
jitted step is one SPMD program across hosts.

Multi-device CPU testing: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``; several
processes on one machine with gloo collectives (tests/test_multihost.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "particles"


def particle_mesh(num_devices: int | None = None, key: str = "meta_train.devices") -> Mesh:
    """A 1-D mesh named ``particles`` over ``num_devices`` local devices of every process.

    ``num_devices`` counts devices *per process* (None: all of them), so one config runs
    unchanged on one host or many: in a multi-host job (:mod:`lopt.runtime`) the mesh
    spans the first ``num_devices`` local devices of each process. ``key`` names the
    config setting in the error raised when there are fewer local devices.
    """
    local = jax.local_device_count()
    n = local if num_devices is None else num_devices
    if not 1 <= n <= local:
        from lopt.runtime import SetupError

        raise SetupError(
            f"{key}={num_devices}: this process has {local} local devices "
            f"(allowed: 1 ... {local}, or 'all')"
        )
    devices = [
        d
        for p in range(jax.process_count())
        for d in [d for d in jax.devices() if d.process_index == p][:n]
    ]
    return Mesh(np.asarray(devices), (AXIS,))


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


def _put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    # Multi-host: every process holds the same value (same seed, same data) and
    # contributes the slices its own devices own.
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place(tree: Any, shardings: Any) -> Any:
    """Every leaf of ``tree`` onto its sharding (once, before the loop)."""
    return jax.tree_util.tree_map(_put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` copied onto every device of ``mesh`` (e.g. the task data)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda leaf: _put(leaf, replicated), tree)
