"""Experiment tracking with Weights & Biases, and a reader for what it wrote.

This is the only module of :mod:`lopt` that imports :mod:`wandb`, and it does
so lazily, inside functions, so ``import lopt.tracking`` stays cheap.

Two halves:

- :class:`Tracker` wraps one W&B run. Tracking is a side channel and must never
  fail or stall a job: if ``wandb.init`` raises or times out (for instance
  online mode without a network), the tracker warns once and falls back to
  offline mode, and if that fails too, to a no-op tracker. Every method
  swallows W&B errors with a warning.
- :func:`read_offline_run` parses the run's local transaction log
  (``run-<id>.wandb``, written in offline *and* online mode) back into plain
  Python values, so tests of the pipeline can check exactly what a run logged.
  wandb itself ships no reader for it.

The mode is a config's ``tracking.mode`` if set, else :func:`resolve_mode`:
``WANDB_MODE`` if set, otherwise ``offline`` (whether or not an API key is
configured). Runs go online only when asked to; offline runs are uploaded
later with ``wandb sync``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "MODES",
    "OfflineRun",
    "Tracker",
    "find_offline_runs",
    "load_offline_table",
    "read_offline_run",
    "resolve_mode",
    "sanitize_artifact_name",
]

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("online", "offline", "disabled")

#: Seconds ``wandb.init`` may take before the tracker falls back (online).
DEFAULT_INIT_TIMEOUT = 30.0
#: Seconds ``run.finish`` may spend uploading in online mode before giving up;
#: whatever was not uploaded stays on disk and can be sent with ``wandb sync``.
DEFAULT_FINISH_TIMEOUT = 120.0
#: Environment overrides of the two defaults above.
INIT_TIMEOUT_ENV = "LOPT_WANDB_INIT_TIMEOUT"
FINISH_TIMEOUT_ENV = "LOPT_WANDB_FINISH_TIMEOUT"

# Set once an online ``wandb.init`` failed in this process, so later trackers
# go straight to offline instead of stalling for the init timeout again.
_online_unreachable = False


# --------------------------------------------------------------------------- #
# Mode resolution
# --------------------------------------------------------------------------- #


def resolve_mode(env: Mapping[str, str] = os.environ) -> str:
    """Return the W&B mode a run should use: ``online``, ``offline`` or ``disabled``.

    ``WANDB_MODE`` when set: one of :data:`MODES`, or wandb's aliases ``dryrun``
    (offline), ``run`` (online) and ``shared`` (online: every lopt process
    writes its own run, so there is nothing to share); any other value warns
    and falls back to ``offline`` (tracking never fails a run). Unset: ``offline``, always. A configured API key
    (``WANDB_API_KEY``, ``wandb login``) never turns a run online by itself:
    online needs ``WANDB_MODE=online`` or a config's ``tracking.mode: online``.
    Offline runs are uploaded later with ``wandb sync``.
    """
    raw = env.get("WANDB_MODE")
    if raw is not None and raw.strip():
        mode = raw.strip().lower()
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in MODES:
            warnings.warn(
                f"WANDB_MODE={raw!r} is not a W&B mode (allowed: {', '.join(MODES)}, or the "
                f"aliases {', '.join(_MODE_ALIASES)}); tracking offline",
                RuntimeWarning,
                stacklevel=2,
            )
            return "offline"
        return mode
    return "offline"


# wandb's own spellings of the same modes (wandb.sdk accepts both)
_MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}


@contextlib.contextmanager
def _env_override(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` to ``value`` inside the block, then restore it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _check_mode(mode: str) -> str:
    m = mode.strip().lower()
    if m not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed values: {', '.join(MODES)}")
    return m


def _timeout_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        warnings.warn(f"ignoring {name}={raw!r}: not a number", RuntimeWarning, stacklevel=3)
        return default
    return value if value > 0 else default


# --------------------------------------------------------------------------- #
# Value conversion
# --------------------------------------------------------------------------- #

_ARTIFACT_NAME_MAXLEN = 128
_ARTIFACT_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")
_PROJECT_BAD_CHARS = re.compile(r"[/\\#?%:\s]+")


def sanitize_artifact_name(name: str) -> str:
    """Map ``name`` onto W&B's artifact-name alphabet (``[A-Za-z0-9_.-]``, <= 128 chars).

    Runs of other characters (``/``, ``:``, spaces, ...) become one ``-``.
    """
    out = _ARTIFACT_BAD_CHARS.sub("-", str(name)).strip("-")
    out = out[:_ARTIFACT_NAME_MAXLEN].rstrip("-")
    return out or "artifact"


def _plain(value: Any) -> Any:
    """Turn config/summary/metadata values into JSON-friendly Python values.

    Handles pydantic models, dataclasses, paths, tuples/sets and numpy/JAX
    scalars or small arrays; wandb media objects and unknown types pass through.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_plain(v) for v in sorted(value, key=repr)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "model_dump"):  # pydantic v2
        try:
            return _plain(value.model_dump(mode="json"))
        except Exception:  # noqa: BLE001 - fall through to the other conversions
            log.debug("model_dump failed for %s", type(value).__name__)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "tolist"):  # numpy / JAX arrays & scalars
        size = math.prod(shape) if shape else 1
        if size <= 1024:
            return value.tolist() if shape else value.item()
    elif hasattr(value, "item") and callable(value.item):  # e.g. numpy scalar types
        try:
            return value.item()
        except Exception:  # noqa: BLE001
            log.debug(".item() failed for %s", type(value).__name__)
    return value


# --------------------------------------------------------------------------- #
# Tracker
# --------------------------------------------------------------------------- #


class Tracker:
    """One W&B run that can never fail or stall the job it tracks.

    Use it as a context manager::

        with Tracker(project="lopt", name="meta-train-seed0", group=experiment,
                     job_type="meta_train", config=cfg, dir=out_dir) as tr:
            tr.log({"meta/loss": 0.3}, step=10)
            tr.summary({"final/loss": 0.1})
            tr.log_artifact(out_dir / "ckpt", name="ckpt-seed0", type="checkpoint")

    Args:
        project: W&B project.
        name: run display name.
        group: run group; the experiment name, so a sweep's runs group together.
        job_type: pipeline stage (``meta_train``, ``evaluate``, ...).
        config: the resolved config (a mapping; pydantic models and dataclasses
            are converted too). Keys starting with ``_`` are reserved by wandb.
        dir: directory under which wandb writes ``wandb/<run>/`` (created).
        mode: ``online``, ``offline`` or ``disabled``; ``None`` asks
            :func:`resolve_mode`. Disabled mode never touches wandb.
        tags: run tags.
        init_timeout: seconds ``wandb.init`` may take before falling back
            (default ``$LOPT_WANDB_INIT_TIMEOUT`` or 30).
        finish_timeout: seconds ``finish`` may upload in online mode (default
            ``$LOPT_WANDB_FINISH_TIMEOUT`` or 120); the rest stays on disk.
        settings: extra ``wandb.Settings`` fields, overriding the defaults.

    Attributes:
        mode: the mode actually in use after any fallback (``disabled`` for
            the no-op tracker).
        requested_mode: the mode asked for.
    """

    def __init__(
        self,
        project: str,
        name: str,
        group: str,
        job_type: str,
        config: Mapping[str, Any] | Any,
        dir: Path | str,  # mirrors wandb.init(dir=...)
        mode: str | None = None,
        tags: Sequence[str] = (),
        *,
        init_timeout: float | None = None,
        finish_timeout: float | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.project = _PROJECT_BAD_CHARS.sub("-", project).strip("-") or "lopt"
        self.name = name
        self.group = group
        self.job_type = job_type
        self.config = _plain(config) if config is not None else {}
        self.dir = Path(dir)
        self.tags = tuple(str(t) for t in tags)
        self.requested_mode = resolve_mode() if mode is None else _check_mode(mode)
        self.init_timeout = (
            float(init_timeout)
            if init_timeout is not None
            else _timeout_from_env(INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT)
        )
        self.finish_timeout = (
            float(finish_timeout)
            if finish_timeout is not None
            else _timeout_from_env(FINISH_TIMEOUT_ENV, DEFAULT_FINISH_TIMEOUT)
        )
        self._extra_settings = dict(settings or {})
        self._run: Any = None
        self._warned: set[str] = set()
        self._finished = False
        self._last_step: int | None = None
        # Summary values set after the last log() of the same key: wandb
        # overwrites them when it flushes the pending history row at finish,
        # so finish() re-applies them.
        self._late_summary: dict[str, Any] = {}
        self.mode = "disabled"
        self._start()

    # -- start-up ---------------------------------------------------------- #

    def _start(self) -> None:
        global _online_unreachable

        if self.requested_mode == "disabled":
            return
        attempts = [self.requested_mode]
        if self.requested_mode == "online":
            if _online_unreachable:
                log.info("W&B was unreachable earlier in this process; using offline mode")
                attempts = ["offline"]
            else:
                attempts.append("offline")
        errors = []
        for mode in attempts:
            t0 = time.monotonic()
            try:
                self._run = self._init(mode)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail a job
                errors.append(f"{mode}: {type(exc).__name__}: {exc}")
                if mode == "online":
                    _online_unreachable = True
                log.debug("wandb.init(mode=%s) failed after %.1fs", mode, time.monotonic() - t0)
                continue
            self.mode = mode
            break
        if errors:
            fallback = self.mode if self._run is not None else "no-op tracking (disabled)"
            self._warn_once(
                "init",
                f"W&B run {self.name!r} could not start in {self.requested_mode} mode; "
                f"falling back to {fallback}. Errors: " + " | ".join(errors),
                stacklevel=4,  # _warn_once < _start < __init__ < caller
            )

    def _init(self, mode: str) -> Any:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        fields: dict[str, Any] = {
            "init_timeout": self.init_timeout,
            "reinit": "create_new",  # runs never touch each other or wandb.run
            "console": "off",  # leave stdout/stderr alone (Snakemake, pytest)
            "quiet": True,
        }
        if mode == "online" and self.finish_timeout > 0:
            fields["finish_timeout"] = self.finish_timeout
        fields.update(self._extra_settings)
        # wandb also validates WANDB_MODE from the environment, and an unknown
        # value there makes init raise even with mode= given: the resolved mode
        # stands in for it while the run starts.
        with _env_override("WANDB_MODE", mode):
            return wandb.init(
                project=self.project,
                name=self.name,
                group=self.group,
                job_type=self.job_type,
                config=self.config,
                tags=list(self.tags) or None,
                dir=os.fspath(self.dir),
                mode=mode,
                settings=wandb.Settings(**fields),
            )

    # -- helpers ----------------------------------------------------------- #

    def _warn_once(self, key: str, message: str, stacklevel: int = 3) -> None:
        # stacklevel 3 points at the caller of the public method that called
        # _warn_once directly; callers one frame deeper pass 4.
        if key in self._warned:
            log.debug("%s", message)
            return
        self._warned.add(key)
        log.warning("%s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)

    def _swallow(self, what: str, exc: BaseException) -> None:
        self._warn_once(
            what,
            f"W&B {what} failed for run {self.name!r}: {type(exc).__name__}: {exc}",
            stacklevel=4,
        )

    @property
    def active(self) -> bool:
        """Whether a wandb run is live (False for the no-op tracker and after finish)."""
        return self._run is not None and not self._finished

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else self._run.id

    @property
    def run_dir(self) -> Path | None:
        """Local run directory holding ``run-<id>.wandb`` (offline *and* online), or None."""
        if self._run is None:
            return None
        try:
            return Path(self._run.settings.sync_dir)
        except Exception:  # noqa: BLE001
            return None

    # -- logging ----------------------------------------------------------- #

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log one row of metrics at ``step`` (calls with the same step merge)."""
        if not self.active:
            return
        step = int(step)
        if self._last_step is not None and step < self._last_step:
            self._warn_once(
                "log-step",
                f"run {self.name!r}: step {step} < last step {self._last_step}; "
                "W&B drops rows that go back in time",
            )
            return
        data = {str(k): _plain(v) for k, v in metrics.items()}
        try:
            self._run.log(data, step=step)
        except Exception as exc:  # noqa: BLE001
            self._swallow("log", exc)
            return
        self._last_step = step
        for key in data:
            self._late_summary.pop(key, None)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (they win over the last logged value)."""
        if not self.active:
            return
        data = {str(k): _plain(v) for k, v in values.items()}
        try:
            self._run.summary.update(data)
        except Exception as exc:  # noqa: BLE001
            self._swallow("summary", exc)
            return
        self._late_summary.update(data)

    def log_table(self, name: str, df: Any, step: int | None = None) -> None:
        """Log a :class:`pandas.DataFrame` as a ``wandb.Table`` under key ``name``.

        It goes into the row of ``step`` (default: the last logged step, or 0).
        """
        if not self.active:
            return
        if step is None:
            step = self._last_step if self._last_step is not None else 0
        try:
            import wandb

            table = wandb.Table(dataframe=df)
        except Exception as exc:  # noqa: BLE001
            self._swallow("log_table", exc)
            return
        self.log({name: table}, step=step)

    def log_artifact(
        self,
        path: Path | str | Sequence[Path | str],
        name: str,
        type: str,  # mirrors wandb.Artifact(type=...)
        metadata: Mapping[str, Any] | None = None,
        *,
        aliases: Sequence[str] = (),
        immutable: bool = False,
    ) -> str | None:
        """Log a file, a directory, or a list of files as one artifact; returns its name.

        A missing ``path`` is a caller bug and raises :class:`FileNotFoundError`
        in every mode; W&B failures only warn (and return None). ``immutable``
        skips wandb's staging copy: use it for large outputs that will not
        change afterwards.
        """
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"artifact path does not exist: {p}")
        art_name = sanitize_artifact_name(name)
        if not self.active:
            return None
        try:
            import wandb

            art = wandb.Artifact(
                art_name,
                type=sanitize_artifact_name(type),
                metadata=_plain(dict(metadata)) if metadata else None,
            )
            policy = "immutable" if immutable else "mutable"
            for p in paths:
                if p.is_dir():
                    art.add_dir(os.fspath(p), policy=policy)
                else:
                    art.add_file(os.fspath(p), name=p.name, policy=policy)
            self._run.log_artifact(art, aliases=list(aliases) or None)
        except Exception as exc:  # noqa: BLE001
            self._swallow("log_artifact", exc)
            return None
        return art_name

    # -- shutdown ---------------------------------------------------------- #

    def finish(self, exit_code: int | None = None) -> None:
        """Flush and close the run (idempotent). Never raises."""
        if self._run is None or self._finished:
            self._finished = True
            return
        self._finished = True
        run = self._run
        try:
            if self._late_summary and self._last_step is not None:
                # Commit the pending row now, then re-apply summary values set
                # after it, which the implicit flush in finish() would clobber.
                run.log({}, step=self._last_step, commit=True)
                run.summary.update(self._late_summary)
        except Exception as exc:  # noqa: BLE001
            self._swallow("summary", exc)
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._swallow("finish", exc)
        self._wait_for_offline_log()

    def _wait_for_offline_log(self, timeout: float = 30.0) -> None:
        """Block until wandb's service has written the exit record of an offline run.

        ``run.finish()`` can return before the separate service process has flushed the
        last records on a loaded machine; waiting here (bounded) means a finished job's
        ``.wandb`` file is complete when readers (``wandb sync``, tests) see it.
        """
        run_dir = self.run_dir
        if self.mode != "offline" or run_dir is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a half-written tail is expected here
                try:
                    done = read_offline_run(run_dir).exit_code is not None
                except Exception:  # noqa: BLE001 -- a half-written file: try again
                    done = False
            if done:
                return
            time.sleep(0.1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)

    def __repr__(self) -> str:
        return (
            f"Tracker(name={self.name!r}, group={self.group!r}, job_type={self.job_type!r}, "
            f"mode={self.mode!r}, run_id={self.run_id!r})"
        )


# --------------------------------------------------------------------------- #
# Reading the local transaction log
# --------------------------------------------------------------------------- #

_MAGIC = b":W&B"
_FILE_HEADER = _MAGIC + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32(type byte + data), length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclasses.dataclass
class OfflineRun:
    """What one W&B run logged, as read back from its ``.wandb`` file."""

    path: Path
    run_id: str
    project: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    artifacts: list[dict[str, Any]]
    exit_code: int | None

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def series(self, key: str) -> list[tuple[int, Any]]:
        """``(step, value)`` for every history row that has ``key``."""
        return [(row["_step"], row[key]) for row in self.history if key in row]


def _iter_chunks(data: bytes, path: Path) -> Iterator[tuple[int, bytes]]:
    pos = len(_FILE_HEADER)
    n = len(data)
    while pos < n:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer too short for a header
            pos += left
            continue
        if pos + _CHUNK_HEADER.size > n:
            log.warning("%s: truncated chunk header at byte %d", path, pos)
            return
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:  # zero padding to the block end
            pos += left
            continue
        start = pos + _CHUNK_HEADER.size
        end = start + length
        if end > n:
            log.warning(
                "%s: truncated record at byte %d (run still writing or crashed?)", path, pos
            )
            return
        if length > left - _CHUNK_HEADER.size or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise ValueError(f"{path}: corrupt chunk header at byte {pos}")
        payload = data[start:end]
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise ValueError(f"{path}: CRC mismatch in chunk at byte {pos}")
        yield kind, payload
        pos = end


def _iter_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path}: not a W&B transaction log (bad magic)")
    if data[: len(_FILE_HEADER)] != _FILE_HEADER:
        raise ValueError(f"{path}: unsupported W&B log header {data[:7]!r}")
    parts: list[bytes] | None = None
    for kind, payload in _iter_chunks(data, path):
        if kind == _FULL:
            if parts is not None:
                raise ValueError(f"{path}: full record inside a fragmented one")
            yield payload
        elif kind == _FIRST:
            if parts is not None:
                raise ValueError(f"{path}: new record before the last one ended")
            parts = [payload]
        else:
            if parts is None:
                raise ValueError(f"{path}: record continuation without a start")
            parts.append(payload)
            if kind == _LAST:
                yield b"".join(parts)
                parts = None
    if parts is not None:
        log.warning("%s: last record incomplete (run still writing or crashed?)", path)


def _item_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _item_value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value") if "value" in type(item).DESCRIPTOR.oneofs_by_name else None
    if which is None or which == "none":
        return None
    raw = getattr(item, which)
    return json.loads(raw) if which == "json" else raw


def _set_path(target: dict[str, Any], keys: list[str], value: Any) -> None:
    if not keys:
        return
    node = target
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = node[k] = {}
        node = child
    node[keys[-1]] = value


def _del_path(target: dict[str, Any], keys: list[str]) -> None:
    node: Any = target
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(keys[-1], None)


def _apply(target: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord/SummaryRecord (updates then removes) to ``target``."""
    for item in record.update:
        _set_path(target, _item_path(item), _item_value(item))
    for item in record.remove:
        _del_path(target, _item_path(item))


def _clean_config(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    # Legacy / config.yaml style stores each entry as {"value": v, "desc": ...}.
    # wandb 0.31 records do not, so unwrap only if *every* entry is wrapped, to
    # leave a genuine {"value": ...} entry of a plain config alone.
    if cfg and all(
        isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} for v in cfg.values()
    ):
        cfg = {k: v["value"] for k, v in cfg.items()}
    return cfg


def _resolve_log_file(run_dir_or_file: Path) -> Path:
    p = Path(run_dir_or_file)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no such W&B run file or directory: {p}")
    files = sorted(p.glob("*.wandb"))
    if len(files) == 1:
        return files[0]
    if not files:
        runs = find_offline_runs(p)
        if len(runs) == 1:
            return _resolve_log_file(runs[0])
        hint = f"; it holds {len(runs)} runs, use find_offline_runs()" if runs else ""
        raise FileNotFoundError(f"no .wandb file in {p}{hint}")
    raise ValueError(f"several .wandb files in {p}: {[f.name for f in files]}")


def read_offline_run(run_dir_or_file: Path | str) -> OfflineRun:
    """Read what a W&B run logged from its local ``run-<id>.wandb`` transaction log.

    Accepts the run directory (``.../wandb/offline-run-<ts>-<id>``), the
    ``.wandb`` file itself, or a ``wandb`` directory holding exactly one run.

    Returns an :class:`OfflineRun` with ``config`` (wandb-internal ``_`` keys
    dropped), ``history`` (one dict per committed step, nested keys as nested
    dicts, incl. ``_step``/``_runtime``/``_timestamp``), ``summary`` (the final
    summary, with wandb's ``_wandb`` entry dropped), ``artifacts`` (dicts with
    ``name``, ``type``, ``metadata``, ``digest``, ``aliases``, ``files``; this
    includes the ``run_table`` artifacts wandb makes for logged tables),
    ``run_id``, ``project``, ``name``, ``group``, ``job_type``, ``tags`` and
    ``exit_code`` (None if the run has not finished).

    Raises :class:`ValueError` on a corrupt file (bad header, CRC mismatch); a
    truncated tail (run still writing, or killed) is skipped with a warning.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = _resolve_log_file(Path(run_dir_or_file))
    meta: dict[str, Any] = {
        "run_id": "",
        "project": "",
        "name": "",
        "group": "",
        "job_type": "",
        "tags": [],
        "exit_code": None,
    }
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []

    for payload in _iter_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            meta.update(
                run_id=run.run_id or meta["run_id"],
                project=run.project or meta["project"],
                name=run.display_name or meta["name"],
                group=run.run_group or meta["group"],
                job_type=run.job_type or meta["job_type"],
                tags=list(run.tags) or meta["tags"],
            )
            _apply(config, run.config)
            _apply(summary, run.summary)
        elif kind == "config":
            _apply(config, rec.config)
        elif kind == "summary":
            _apply(summary, rec.summary)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set_path(row, _item_path(item), _item_value(item))
            if "_step" not in row and rec.history.HasField("step"):
                row["_step"] = rec.history.step.num
            history.append(row)
        elif kind == "artifact":
            art = rec.artifact
            artifacts.append(
                {
                    "name": art.name,
                    "type": art.type,
                    "metadata": json.loads(art.metadata) if art.metadata else {},
                    "digest": art.digest,
                    "aliases": list(art.aliases),
                    "files": [c.path for c in art.manifest.contents],
                }
            )
        elif kind == "exit":
            meta["exit_code"] = rec.exit.exit_code

    summary.pop("_wandb", None)
    return OfflineRun(
        path=path,
        config=_clean_config(config),
        history=history,
        summary=summary,
        artifacts=artifacts,
        **meta,
    )


def _run_sort_key(run_dir: Path) -> tuple[str, int, str]:
    # Directory names are "<kind>-run-YYYYMMDD_HHMMSS-<id>"; runs started in the
    # same second are ordered by when their log was last written.
    m = re.search(r"run-(\d{8}_\d{6})-", run_dir.name)
    stamp = m.group(1) if m else ""
    try:
        mtime = max(f.stat().st_mtime_ns for f in run_dir.glob("*.wandb"))
    except ValueError:
        mtime = 0
    return stamp, mtime, run_dir.name


def find_offline_runs(wandb_dir: Path | str, *, include_online: bool = False) -> list[Path]:
    """Offline run directories (``offline-run-*``) under ``wandb_dir``, oldest first.

    ``wandb_dir`` is the ``wandb`` directory itself or the ``dir`` given to the
    run (which holds ``wandb/``). Only directories with a ``.wandb`` log count.
    ``include_online=True`` adds online runs (``run-*``), whose local log
    :func:`read_offline_run` reads as well; note that an online attempt that
    failed and fell back to offline leaves such a directory with no history.
    """
    root = Path(wandb_dir)
    if root.name != "wandb" and (root / "wandb").is_dir():
        root = root / "wandb"
    if not root.is_dir():
        return []
    runs = [
        p
        for pattern in ("offline-run-*", "run-*")[: 2 if include_online else 1]
        for p in root.glob(pattern)
        if p.is_dir() and not p.is_symlink() and any(p.glob("*.wandb"))
    ]
    return sorted(runs, key=_run_sort_key)


def load_offline_table(run: OfflineRun | Path | str, key: str) -> Any:
    """Load the table last logged under ``key`` as a :class:`pandas.DataFrame`."""
    import pandas as pd

    if not isinstance(run, OfflineRun):
        run = read_offline_run(run)
    ref = run.summary.get(key)
    if not (isinstance(ref, dict) and ref.get("path")):
        for row in reversed(run.history):
            if isinstance(row.get(key), dict) and row[key].get("path"):
                ref = row[key]
                break
        else:
            raise KeyError(f"no table logged under {key!r} in {run.path}")
    table = json.loads((run.run_dir / "files" / ref["path"]).read_text())
    return pd.DataFrame(table["data"], columns=table["columns"])


def download_artifact(ref: str, dest: str | Path) -> Path:
    """Download W&B artifact ``ref`` (``entity/project/name:version``) into ``dest``.

    Needs network access and credentials (``WANDB_API_KEY`` or ``wandb login``); the
    error says so instead of hanging when either is missing.
    """
    import wandb

    dest = Path(dest)
    try:
        artifact = wandb.Api(timeout=_timeout_from_env("LOPT_WANDB_INIT_TIMEOUT", 60.0)).artifact(ref)
        return Path(artifact.download(root=str(dest)))
    except Exception as exc:  # noqa: BLE001 -- wandb raises many types (CommError, ValueError, ...)
        raise RuntimeError(
            f"cannot download W&B artifact {ref!r} ({type(exc).__name__}: {exc}); "
            "it needs network access and a W&B API key (wandb login)"
        ) from None
