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
import logging
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np

from lopt.atomic import replace_with, write_text

__all__ = ["CheckpointError", "Checkpointer", "load_meta_params", "save_meta_params", "sha256_file"]


class CheckpointError(ValueError):
    """A checkpoint or ``meta_params.npz`` that exists but cannot be read; the message names
    the file and what is wrong with it (the CLI prints it as a one-line error)."""


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

    def restore_newest_readable(self, template: Any, aside: str | Path) -> tuple[int | None, Any]:
        """Restore the newest step that reads back; ``(None, template)`` when there is none.

        A newer step that fails to read (damaged on disk: orbax's saves are atomic, so a kill
        cannot cause this) is moved to ``aside/<step>`` with a warning, but only once an
        older step has restored: that proves the fault is the step's, not the template's or
        the code's, so a bug never moves every checkpoint aside. When no step reads, nothing
        moves and :class:`CheckpointError` names each step's error.
        """
        failed: list[tuple[int, Exception]] = []
        # before the first try: a failed read's stray callbacks can land before it returns
        _STRAY_READS.watch(self.directory)
        for step in sorted(self.all_steps(), reverse=True):
            try:
                restored = self.restore(step, template)
            except Exception as exc:  # noqa: BLE001 -- orbax/tensorstore raise ValueError, OSError, ...; safe because only an older step that reads proves a step bad
                failed.append((step, exc))
                _STRAY_READS.read_failed()
                continue
            if failed and jax.process_count() > 1:
                raise CheckpointError(self._unreadable(failed) + f"; step {step} reads: move the "
                                      "newer steps aside (by hand, on a multi-host run) to resume from it")
            for bad, exc in failed:
                dest, n = Path(aside) / str(bad), 1
                while dest.exists():  # the same step damaged again after a re-save
                    dest, n = Path(aside) / f"{bad}.{n}", n + 1
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(self.directory / str(bad), dest)
                warnings.warn(f"{self.directory / str(bad)}: unreadable checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)}); moved to {dest}, "
                              f"resuming from step {step}", stacklevel=2)
            if failed:
                self._manager.reload()
            return step, restored
        if failed:
            raise CheckpointError(self._unreadable(failed) + "; no step reads back: move "
                                  f"{self.directory} aside to meta-train afresh")
        return None, template

    def _unreadable(self, failed: list[tuple[int, Exception]]) -> str:
        return f"{self.directory}: unreadable checkpoint step(s) " + "; ".join(
            f"{step} ({type(exc).__name__}: {_first_line(exc)})" for step, exc in failed)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _StrayReads(logging.Filter):
    """Drops the noise of a failed orbax restore's reads that were still in flight.

    orbax reads a step's arrays concurrently on an event loop that it closes as soon as one
    read fails. The reads still in flight finish later on tensorstore's threads: each tries
    to post its result to that closed loop (an unraisable ``RuntimeError: Event loop is
    closed``), and each failed read's future, never awaited, is logged by asyncio as
    "exception was never retrieved" with the whole tensorstore spec when it is collected.
    A read that had not started when the loop closed leaves a coroutine never awaited
    (``RuntimeWarning: coroutine 'Store._get_array_metadatas' was never awaited``, printed
    at exit when the collector finds it). All reach stderr after the CLI's one-line error
    (about 130 lines for three damaged steps) and repeat what that line says. The reads
    are harmless: their results are discarded. So a process that restores with :meth:`Checkpointer.restore_newest_readable`
    drops exactly those reports (asyncio's only for errors that name one of its checkpoint
    directories; never-awaited coroutines only once one of its restores has failed) and
    passes everything else on.
    """

    _MESSAGES = ("Future exception was never retrieved", "Task exception was never retrieved")

    def __init__(self) -> None:
        super().__init__()
        self.directories: set[str] = set()
        self._previous_hook: Any = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        stray = (
            exc is not None
            and record.getMessage().startswith(self._MESSAGES)
            and any(d in str(exc) for d in self.directories)
        )
        return not stray

    def unraisable_hook(self, unraisable: Any) -> None:
        if not _posted_to_closed_loop(unraisable.exc_value, unraisable.exc_traceback):
            self._previous_hook(unraisable)

    def read_failed(self) -> None:
        """A restore failed: from now on, coroutines it left never awaited are not reported.

        The warning names only the coroutine (no module, no checkpoint), so after a failed
        restore this process ignores every "never awaited" warning; before one, none is
        hidden.
        """
        warnings.filterwarnings("ignore", message=r"coroutine '\S+' was never awaited", category=RuntimeWarning)

    def watch(self, directory: Path) -> None:
        self.directories |= {str(directory), str(directory.resolve())}  # as given, and as opened
        if self._previous_hook is None:  # once per process
            logging.getLogger("asyncio").addFilter(self)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable_hook


def _posted_to_closed_loop(exc: BaseException | None, tb: Any) -> bool:
    """Whether ``exc`` is asyncio refusing a callback posted from another thread to a closed loop."""
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


_STRAY_READS = _StrayReads()


def _first_line(exc: Exception, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


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
    flat = _flatten(meta_params)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, np.savez would append ".npz"
            np.savez(f, **flat)

    replace_with(path, write)
    digest = sha256_file(path)
    meta = dict(metadata, sha256=digest, file=path.name)
    write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=2, sort_keys=True))
    return digest


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON sidecar as a dict; :class:`CheckpointError` naming it if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_meta_params(path: str | Path, template: Any, verify: bool = True) -> Any:
    """Read meta-parameters written by :func:`save_meta_params` into ``template``'s structure."""
    path = Path(path)
    if verify:
        meta_path = path.with_name(path.name + ".json")
        if meta_path.exists():
            expected = read_json(meta_path).get("sha256")
            if expected and expected != sha256_file(path):
                raise CheckpointError(f"{path}: corrupt (its sha256 differs from the one in {meta_path}); "
                                      "fetch it again (lopt pull) or re-run meta-training")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = dict(npz)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a meta-parameter .npz ({type(exc).__name__}: {_first_line(exc)})") from None
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, leaf in flat:
        name = jax.tree_util.keystr(key_path)
        if name not in stored:
            raise CheckpointError(f"{path}: missing meta-parameter {name}; the optimizer config differs")
        if stored[name].shape != np.shape(leaf):
            raise CheckpointError(
                f"{path}: {name} has shape {stored[name].shape}, the config expects {np.shape(leaf)}"
            )
        leaves.append(jax.numpy.asarray(stored[name]))
    return jax.tree_util.tree_unflatten(treedef, leaves)
