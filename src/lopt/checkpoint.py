"""Checkpoints: the only module that imports orbax.

A checkpoint directory holds numbered steps written by an orbax
``CheckpointManager`` (atomic: a save killed midway leaves a ``*.orbax-checkpoint-tmp``
folder that is never restored). Each step stores one pytree (a dict of arrays and
NamedTuples); restore needs a *template* with the same structure, shapes and dtypes,
which the caller rebuilds deterministically from the config.

Next to the orbax steps, :func:`save_meta_params` writes a small standalone file
(``meta_params.npz`` + its sha256) for evaluation and sharing, so a consumer needs
only numpy to read a trained optimizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np

__all__ = ["Checkpointer", "load_meta_params", "save_meta_params", "sha256_file"]


class Checkpointer:
    """Save/restore numbered pytree checkpoints in ``directory`` (orbax underneath)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, tree: Any) -> None:
        """Save ``tree`` as ``step`` and block until it is durable on disk."""
        self._manager.save(step, args=self._ocp.args.StandardSave(tree))
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> Any:
        """Restore ``step`` into the structure of ``template`` (arrays or ShapeDtypeStructs)."""
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, template)
        return self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def save_meta_params(path: str | Path, meta_params: Any, metadata: dict[str, Any]) -> str:
    """Write ``meta_params`` to ``path`` (.npz) atomically plus ``path.json`` metadata.

    Returns the sha256 of the npz, also recorded in the JSON.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **_flatten(meta_params))
    os.replace(tmp, path)
    digest = sha256_file(path)
    meta = dict(metadata, sha256=digest, file=path.name)
    tmp_json = path.with_name(path.name + ".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_json, path.with_name(path.name + ".json"))
    return digest


def load_meta_params(path: str | Path, template: Any, verify: bool = True) -> Any:
    """Read meta-parameters written by :func:`save_meta_params` into ``template``'s structure."""
    path = Path(path)
    if verify:
        meta_path = path.with_name(path.name + ".json")
        if meta_path.exists():
            expected = json.loads(meta_path.read_text()).get("sha256")
            if expected and expected != sha256_file(path):
                raise ValueError(f"{path}: sha256 does not match {meta_path}; the file is corrupt")
    with np.load(path) as npz:
        stored = dict(npz)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, leaf in flat:
        name = jax.tree_util.keystr(key_path)
        if name not in stored:
            raise ValueError(f"{path}: missing meta-parameter {name}; the optimizer config differs")
        if stored[name].shape != np.shape(leaf):
            raise ValueError(
                f"{path}: {name} has shape {stored[name].shape}, the config expects {np.shape(leaf)}"
            )
        leaves.append(jax.numpy.asarray(stored[name]))
    return jax.tree_util.tree_unflatten(treedef, leaves)
