"""Reading back what a W&B run logged, from its local transaction log.

:func:`read_offline_run` parses ``run-<id>.wandb`` (written in offline *and* online mode)
into plain Python values, so tests of the pipeline can check exactly what a run logged;
wandb itself ships no reader for it. It imports wandb's protobuf definitions lazily.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- #
# Reading the local transaction log
# --------------------------------------------------------------------------- #

log = logging.getLogger(__name__)

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


def _iter_chunks(data: bytes, path: Path, warn_truncated: bool = True) -> Iterator[tuple[int, bytes]]:
    pos = len(_FILE_HEADER)
    n = len(data)
    while pos < n:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer too short for a header
            pos += left
            continue
        if pos + _CHUNK_HEADER.size > n:
            if warn_truncated:
                log.warning("%s: truncated chunk header at byte %d", path, pos)
            return
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:  # zero padding to the block end
            pos += left
            continue
        start = pos + _CHUNK_HEADER.size
        end = start + length
        if end > n:
            if warn_truncated:
                log.warning("%s: truncated record at byte %d (run still writing or crashed?)", path, pos)
            return
        if length > left - _CHUNK_HEADER.size or kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise ValueError(f"{path}: corrupt chunk header at byte {pos}")
        payload = data[start:end]
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise ValueError(f"{path}: CRC mismatch in chunk at byte {pos}")
        yield kind, payload
        pos = end


def _iter_records(path: Path, warn_truncated: bool = True) -> Iterator[bytes]:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path}: not a W&B transaction log (bad magic)")
    if data[: len(_FILE_HEADER)] != _FILE_HEADER:
        raise ValueError(f"{path}: unsupported W&B log header {data[:7]!r}")
    parts: list[bytes] | None = None
    for kind, payload in _iter_chunks(data, path, warn_truncated):
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
    if parts is not None and warn_truncated:
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


def read_offline_run(run_dir_or_file: Path | str, *, warn_truncated: bool = True) -> OfflineRun:
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
    truncated tail (run still writing, or killed) is skipped, with a logged warning unless
    ``warn_truncated`` is False (a reader polling a run it knows is still being written).
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

    for payload in _iter_records(path, warn_truncated):
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

