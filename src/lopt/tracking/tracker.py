"""A W&B run that never fails or stalls a job (:class:`Tracker`), and artifact download.

The only module of :mod:`lopt` that starts W&B runs; it imports :mod:`wandb` lazily,
inside functions. If ``wandb.init`` raises or times out (for instance online mode
without a network), the tracker warns once and falls back to offline mode, and if that
fails too, to a no-op tracker. Every method swallows W&B errors with a warning.

A W&B call that does not return in time (the W&B service process hung, e.g. its
directory on a stalled network file system) would block the job forever: every call to
the run goes through one worker thread and is waited for at most
:data:`DEFAULT_CALL_TIMEOUT` seconds (``LOPT_WANDB_CALL_TIMEOUT``; ``finish`` adds the
finish timeout). On a timeout the tracker warns, stops tracking, and kills the service
process it started, so that neither the stuck call nor wandb's exit hook waits on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lopt.tracking.offline import read_offline_run

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("online", "offline", "disabled")

#: Seconds ``wandb.init`` may take before the tracker falls back (online).
DEFAULT_INIT_TIMEOUT = 30.0
#: Seconds ``run.finish`` may spend uploading in online mode before giving up;
#: whatever was not uploaded stays on disk and can be sent with ``wandb sync``.
DEFAULT_FINISH_TIMEOUT = 120.0
#: Seconds any other call to the run (log, summary, artifact) may block before the
#: tracker takes the W&B service for stalled and stops tracking.
DEFAULT_CALL_TIMEOUT = 60.0
#: Environment overrides of the defaults above.
INIT_TIMEOUT_ENV = "LOPT_WANDB_INIT_TIMEOUT"
FINISH_TIMEOUT_ENV = "LOPT_WANDB_FINISH_TIMEOUT"
CALL_TIMEOUT_ENV = "LOPT_WANDB_CALL_TIMEOUT"

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


def _serve(calls: Any) -> None:
    """The W&B worker thread: run queued calls in order until ``None``."""
    while (job := calls.get()) is not None:
        job()


def _kill_owned_service() -> bool:
    """SIGKILL the wandb-core service process this process started, if any (whether one
    was killed). Reached through wandb's private setup singleton, so any change there
    makes this a no-op rather than an error."""
    try:
        from wandb.sdk import wandb_setup

        setup = wandb_setup._singleton
        conn = getattr(setup, "_connection", None) if setup is not None else None
        process = getattr(getattr(conn, "_proc", None), "_process", None)
        if process is None or process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        cleanup = getattr(conn, "_cleanup", None)
        if callable(cleanup):  # unregisters wandb's exit hook, which would only report the dead peer
            cleanup()
        return True
    except Exception:  # noqa: BLE001 - best effort
        return False


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
        self.call_timeout = _timeout_from_env(CALL_TIMEOUT_ENV, DEFAULT_CALL_TIMEOUT)
        self._extra_settings = dict(settings or {})
        self._run: Any = None
        self._calls: Any = None  # the worker's job queue, started with the first call
        self._stalled = False
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

    def _call(self, what: str, fn: Any, timeout: float | None = None) -> bool:
        """Run ``fn()`` (a call to the run) on the W&B worker thread, waiting at most
        ``timeout`` (default :attr:`call_timeout`) seconds; whether it returned normally.
        An exception is swallowed with a warning; a timeout stops tracking (see the module
        docstring)."""
        import queue

        if self._stalled:
            return False
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._calls,), name="lopt-wandb", daemon=True).start()
        done, failure = threading.Event(), []

        def job() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - tracking must never fail a job
                failure.append(exc)
            finally:
                done.set()

        self._calls.put(job)
        limit = self.call_timeout if timeout is None else timeout
        if not done.wait(limit):
            self._stalled = True
            killed = _kill_owned_service()
            self._warn_once(
                "stalled",
                f"W&B {what} did not return within {limit:g} s for run {self.name!r}: the W&B "
                f"service looks stalled; tracking stops for this run and the job goes on"
                + (" (the service process was killed)" if killed else ""),
                stacklevel=4,
            )
            return False
        if failure:
            self._swallow(what, failure[0])
            return False
        return True

    def _swallow(self, what: str, exc: BaseException) -> None:
        self._warn_once(
            what,
            f"W&B {what} failed for run {self.name!r}: {type(exc).__name__}: {exc}",
            stacklevel=4,
        )

    @property
    def active(self) -> bool:
        """Whether a wandb run is live (False for the no-op tracker, after finish, and once
        the W&B service stalled)."""
        return self._run is not None and not self._finished and not self._stalled

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
        run = self._run
        if not self._call("log", lambda: run.log(data, step=step)):
            return
        self._last_step = step
        for key in data:
            self._late_summary.pop(key, None)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (they win over the last logged value)."""
        if not self.active:
            return
        data = {str(k): _plain(v) for k, v in values.items()}
        run = self._run
        if not self._call("summary", lambda: run.summary.update(data)):
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
        except Exception as exc:  # noqa: BLE001
            self._swallow("log_artifact", exc)
            return None
        run = self._run
        if not self._call("log_artifact", lambda: run.log_artifact(art, aliases=list(aliases) or None)):
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
        late, last_step = dict(self._late_summary), self._last_step

        def flush() -> None:
            # Commit the pending row now, then re-apply summary values set after it,
            # which the implicit flush in finish() would clobber.
            run.log({}, step=last_step, commit=True)
            run.summary.update(late)

        if late and last_step is not None:
            self._call("summary", flush)
        if self._call("finish", lambda: run.finish(exit_code=exit_code), self.finish_timeout + self.call_timeout):
            self._wait_for_offline_log()
        if self._calls is not None:
            self._calls.put(None)  # the worker's end (it may be stuck in a stalled call: a daemon)

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
                    done = read_offline_run(run_dir, warn_truncated=False).exit_code is not None
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
