"""Experiment tracking with Weights & Biases, and a reader for what it wrote.

This is the only package of :mod:`lopt` that imports :mod:`wandb`, and it does
so lazily, inside functions, so ``import lopt.tracking`` stays cheap.

Two modules:

- :mod:`~lopt.tracking.tracker`: :class:`Tracker` wraps one W&B run. Tracking is a
  side channel and must never fail or stall a job: if ``wandb.init`` raises or times
  out (for instance online mode without a network), the tracker warns once and falls
  back to offline mode, and if that fails too, to a no-op tracker. Every method
  swallows W&B errors with a warning.
- :mod:`~lopt.tracking.offline`: :func:`read_offline_run` parses the run's local
  transaction log (``run-<id>.wandb``, written in offline *and* online mode) back into
  plain Python values, so tests of the pipeline can check exactly what a run logged.
  wandb itself ships no reader for it.

The mode is a config's ``tracking.mode`` if set, else :func:`resolve_mode`:
``WANDB_MODE`` if set, otherwise ``offline`` (whether or not an API key is
configured). Runs go online only when asked to; offline runs are uploaded
later with ``wandb sync``.
"""

from lopt.tracking.offline import (
    OfflineRun,
    find_offline_runs,
    load_offline_table,
    read_offline_run,
)
from lopt.tracking.tracker import (
    DEFAULT_FINISH_TIMEOUT,
    DEFAULT_INIT_TIMEOUT,
    FINISH_TIMEOUT_ENV,
    INIT_TIMEOUT_ENV,
    MODES,
    Tracker,
    download_artifact,
    resolve_mode,
    sanitize_artifact_name,
)

__all__ = [
    "DEFAULT_FINISH_TIMEOUT",
    "DEFAULT_INIT_TIMEOUT",
    "FINISH_TIMEOUT_ENV",
    "INIT_TIMEOUT_ENV",
    "MODES",
    "OfflineRun",
    "Tracker",
    "download_artifact",
    "find_offline_runs",
    "load_offline_table",
    "read_offline_run",
    "resolve_mode",
    "sanitize_artifact_name",
]
