"""Reading result tables for analysis, with one-line errors for damaged files.

Analysis runs on pulled or long-finished artifacts; a file emptied or cut short by a
crash, or edited by hand, must say which file it is and which stage rewrites it, not
raise pandas' ``EmptyDataError`` or a ``KeyError`` from deep inside a figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# The columns analysis reads from each stage's tables, and the command that writes them.
META_METRICS = (("step", "meta_loss", "grad_norm"), "lopt meta-train")
EVAL_CURVES = (("task", "optimizer", "step", "split", "loss", "seed"), "lopt evaluate")
EVAL_SUMMARY = (("task", "distribution", "optimizer", "split", "loss_mean", "loss_sem"), "lopt evaluate")
EVAL_METRICS = (("task", "distribution", "optimizer", "best_loss"), "lopt evaluate")
TRADEOFFS = (
    ("optimizer", "num_params", "num_meta_params", "state_floats_per_param", "xla_bytes_per_param",
     "ms_per_update", "time_vs_adam"),
    "python benchmarks/lopt_overhead.py",
)
STUDY_CURVE = (("outer_step", "eval_loss", "unroll_steps", "wall_time"), "lopt study-run")
BASELINE_CURVES = (("task", "optimizer", "learning_rate", "step", "split", "loss", "seed"), "lopt baselines")
BASELINE_SWEEP = (("task", "optimizer", "learning_rate", "selected"), "lopt baselines")


class ResultsError(ValueError):
    """A result table analysis cannot use; the message names the file, the problem and the fix."""


def read_result(path: str | Path, kind: tuple[Sequence[str], str], *, may_be_empty: bool = False) -> pd.DataFrame:
    """``path`` as a DataFrame with at least one row and ``kind``'s columns.

    ``kind`` is one of this module's ``(columns, writer)`` constants. Raises
    ``FileNotFoundError`` when the file is absent and :class:`ResultsError` when it is
    empty, not a CSV table, cut off mid-row (lopt's tables end with a newline; pandas would
    pad the torn row with NaN), has no rows, or lacks a column. ``may_be_empty``: an empty
    file is an empty DataFrame instead (a table with nothing to hold, e.g. the reference
    runs of an evaluation without a reference optimizer).
    """
    path = Path(path)
    columns, writer = kind
    fix = f"re-run `{writer}` (snakemake reruns it once the file is removed)"
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; {fix}") from None
    except pd.errors.EmptyDataError:
        if may_be_empty:
            return pd.DataFrame()
        raise ResultsError(f"{path}: empty, not a CSV table; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"{path}: not a readable CSV table ({reason}); {fix}") from None
    with open(path, "rb") as f:
        f.seek(-1, 2)
        if f.read(1) not in (b"\n", b"\r"):
            raise ResultsError(f"{path}: its last row is cut off (no final newline); {fix}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))}); {fix}")
    if df.empty:
        raise ResultsError(f"{path}: has a header but no rows; {fix}")
    return df
