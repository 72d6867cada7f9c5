"""Writing files whole or not at all.

Every artifact lopt writes goes to a temporary file in the same directory and is then
renamed over its name (``os.replace``, atomic on POSIX), so a kill, a full disk or an
exception mid-write leaves either the previous file or the new one, never a truncated one
that a later stage, ``dvc commit`` or a resume would take for finished.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas only for the annotation: lopt.checkpoint imports this module too
    import pandas as pd


def temporary_name(path: Path) -> Path:
    """The temporary name :func:`replace_with` writes ``path`` under (hidden, ``.tmp``)."""
    return path.with_name(f".{path.name}.tmp")


def replace_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to write the new contents to a temporary file, then move it to ``path``.

    The parent directory is created if needed; the temporary file is removed if ``write``
    fails. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, whole or not at all."""
    return replace_with(path, lambda tmp: tmp.write_text(text))


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """``df.to_csv(path, index=False)``, whole or not at all."""
    return replace_with(path, lambda tmp: df.to_csv(tmp, index=False))


def write_rows(path: str | Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """A CSV of ``rows`` (dicts) under the header ``fields``, whole or not at all."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return replace_with(path, write)
