"""The per-step metrics log: an append-only CSV that survives kills and resumes cleanly."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import jax

from lopt.atomic import write_rows

METRIC_FIELDS = (
    "step",
    "meta_loss",
    "grad_norm",
    "episodes_done",
    "diverged",
    "skipped_updates",
    "wall_time",
)


def _complete(row: dict[str | None, str | None]) -> bool:
    """A row with as many fields as the header and an integer step.

    Blank fields are whole: a log begun before a column existed (``diverged``,
    ``skipped_updates``) gets it empty when first rewritten, and those rows
    must survive every later resume. Torn writes are caught by
    :func:`_whole_lines` (unterminated last line) and here (short rows).
    """
    return None not in row and None not in row.values() and (row.get("step") or "").isdigit()


def _whole_lines(text: str) -> str:
    """``text`` without an unterminated last line (a kill mid-write can tear it anywhere)."""
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


class MetricsLog:
    """Append-only CSV of per-step metrics that survives kills and resumes cleanly."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step > 0 and path.exists():
            with open(path, newline="") as f:
                lines = io.StringIO(_whole_lines(f.read()))
            rows = [r for r in csv.DictReader(lines) if _complete(r) and int(r["step"]) <= resume_step]
        self.last_wall_time = float(rows[-1]["wall_time"]) if rows else 0.0
        # Rewrite (dropping rows past the checkpoint a killed run may have logged).
        write_rows(path, METRIC_FIELDS, rows)
        self._file = open(path, "a", newline="")  # noqa: SIM115 -- held open for the run, closed in close()
        # extra metrics (a task family's per-task meta_loss/<i>) go to the tracker only
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_FIELDS, extrasaction="ignore")

    def write(self, rows: list[dict[str, float]]) -> None:
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def rows_of(pending: list[dict[str, Any]], wall: float) -> list[dict[str, float]]:
    """Log rows of the steps' metrics ``pending`` (device arrays, fetched in one transfer),
    each stamped with the cumulative ``wall`` time."""
    rows = []
    for item in jax.device_get(pending):
        row = {k: float(v) for k, v in item.items() if k != "step"}
        rows.append({"step": int(item["step"]), **row, "wall_time": round(wall, 3)})
    return rows
