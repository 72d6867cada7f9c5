"""The data-preparation stage: :func:`prepare` writes a dataset directory, :func:`load`
reads it back (verifying hashes).

Layout of ``root/<name>/``::

    train.npz  inner_valid.npz  outer_valid.npz  test.npz   # arrays x (float32), y (int32)
    manifest.json                                          # provenance + sha256 per file

``inner_valid`` and ``outer_valid`` are each ``valid_fraction`` of the source's train
split (seeded permutation), ``train`` is the rest; ``test`` is the source's test split.
Inputs are standardised with the (final) train split's scalar mean and std. Outputs are
a deterministic function of ``(name, seed, valid_fraction, options)`` and the package
versions recorded in the manifest: re-running gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lopt import __version__
from lopt.data.sources import DatasetError, get_spec

SPLITS: tuple[str, ...] = ("train", "inner_valid", "outer_valid", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_HINT = "run `lopt prepare-data` (lopt.data.prepare) to create it"


class Split(NamedTuple):
    """One split: ``x [N, ...]`` float32 (standardised), ``y [N]`` int32 class labels."""

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    """A prepared dataset, as numpy arrays (the caller moves it to device)."""

    train: Split
    inner_valid: Split
    outer_valid: Split
    test: Split
    num_classes: int
    name: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_npz(path: Path, split: Split) -> None:
    """Write an uncompressed ``.npz`` (readable by ``np.load``) with fixed zip metadata.

    ``np.savez`` stamps each member with the current time, so its bytes change from run
    to run; here every member gets the fixed 1980-01-01 timestamp instead.
    """
    with open(path, "wb") as raw:
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
            for key, arr in (("x", split.x), ("y", split.y)):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        raw.flush()
        os.fsync(raw.fileno())


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot record option of type {type(obj).__name__} in the manifest")


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "unknown"
    return out


def _carve(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, inner_valid, outer_valid)`` of an ``n``-example split."""
    k = int(n * valid_fraction)
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return perm[2 * k :], perm[:k], perm[k : 2 * k]


def prepare(
    name: str,
    root: Path,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    cache_dir: Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Prepare dataset ``name`` under ``root/<name>`` and return that directory.

    ``cache_dir`` holds downloads (default ``root/.downloads``); ``options`` are passed
    to the source loader (e.g. ``{"num_samples": 500}`` for mnist1d) and recorded in the
    manifest. The directory is written to a temporary sibling and moved into place with
    ``os.replace``, so it is either absent, the old version, or complete. Raises
    :class:`DatasetError` for unknown names/options or a failed download.
    """
    spec = get_spec(name)
    options = dict(options or {})
    bad = sorted(set(options) - set(spec.options))
    if bad:
        raise DatasetError(f"{name}: unknown options {bad}; allowed: {list(spec.options)}")
    if not 0.0 <= valid_fraction < 0.5:
        raise DatasetError(f"valid_fraction must be in [0, 0.5), got {valid_fraction}")
    root = Path(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else root / ".downloads"

    x_tr, y_tr, x_te, y_te = spec.loader(seed, cache_dir, **options)
    tr, inner, outer = _carve(len(y_tr), valid_fraction, seed)
    raw = {
        "train": (x_tr[tr], y_tr[tr]),
        "inner_valid": (x_tr[inner], y_tr[inner]),
        "outer_valid": (x_tr[outer], y_tr[outer]),
        "test": (x_te, y_te),
    }
    mean = float(raw["train"][0].mean(dtype=np.float64))
    std = float(raw["train"][0].std(dtype=np.float64))
    if not np.isfinite(std) or std <= 0.0:
        raise DatasetError(f"{name}: train inputs have degenerate std {std}")
    splits = {
        s: Split(((x.astype(np.float64) - mean) / std).astype(np.float32), y.astype(np.int32))
        for s, (x, y) in raw.items()
    }

    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = _fresh_dir(root, f".{name}.tmp-")
    try:
        records = {}
        for s in SPLITS:
            path = tmp / f"{s}.npz"
            _write_npz(path, splits[s])
            records[s] = {
                "file": path.name,
                "num_examples": len(splits[s].y),
                "sha256": _sha256(path),
            }
        remote = options.get("remote", spec.remote)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "source": {"description": spec.description, "remote": remote},
            "generator": _generator(spec.packages),
            "seed": int(seed),
            "valid_fraction": float(valid_fraction),
            "options": options,
            "num_classes": int(spec.num_classes),
            "input_shape": list(splits["train"].x.shape[1:]),
            "dtypes": {"x": "float32", "y": "int32"},
            "normalisation": {"mean": mean, "std": std, "computed_on": "train"},
            "splits": records,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default) + "\n"
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _generator(packages: tuple[str, ...]) -> dict[str, Any]:
    return {"tool": "lopt.data", "version": __version__, "packages": _versions(packages)}


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory under ``parent`` with the usual permissions.

    Not ``tempfile.mkdtemp``: its 0o700 would become the dataset directory's, unreadable to
    the other users of a shared filesystem (a lab's cluster jobs); ``mkdir`` applies the umask.
    """
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` directory to ``final``, replacing any previous one."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / final.name, final)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def read_manifest(name: str, root: Path) -> dict[str, Any]:
    """The manifest of ``root/<name>``; :class:`DatasetError` if missing or unreadable."""
    get_spec(name)
    path = Path(root) / name / MANIFEST
    if not path.is_file():
        raise DatasetError(f"dataset {name!r} is not prepared: {path} is missing; {_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is unreadable ({e}); {_HINT}") from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} is not a manifest (a JSON object; got {type(manifest).__name__}); {_HINT}")
    return manifest


def load(
    name: str,
    root: Path,
    *,
    verify: bool = True,
    seed: int | None = None,
    valid_fraction: float | None = None,
) -> Dataset:
    """Load ``root/<name>`` prepared by :func:`prepare`.

    With ``verify`` (default) each split file's sha256 is checked against the manifest.
    ``seed`` / ``valid_fraction``, when given, must be the ones the directory was
    prepared with: the directory is named by dataset only, so an experiment with
    other split settings would otherwise train on another experiment's split.
    Raises :class:`DatasetError` naming the offending file when a file is missing,
    corrupt or does not match, when the split settings differ, or when the dataset
    was never prepared.
    """
    manifest = read_manifest(name, root)
    directory = Path(root) / name
    expected = {"seed": seed, "valid_fraction": valid_fraction}
    wrong = {k: v for k, v in expected.items() if v is not None and manifest.get(k) != v}
    if wrong:
        found = ", ".join(f"data.{k}={manifest.get(k)!r}" for k in wrong)
        asked = ", ".join(f"data.{k}={v!r}" for k, v in wrong.items())
        raise DatasetError(
            f"{directory / MANIFEST} was prepared with {found}, but the config asks for {asked}; "
            f"re-run `lopt prepare-data` with this config (it replaces {directory}), or give this "
            f"experiment its own data.root"
        )
    splits = {}
    for s in SPLITS:
        try:
            rec = manifest["splits"][s]
            path = directory / rec["file"]
        except (KeyError, TypeError) as e:
            raise DatasetError(
                f"{directory / MANIFEST} has no valid entry for {s!r}; {_HINT}"
            ) from e
        if not path.is_file():
            raise DatasetError(f"{path} is missing; {_HINT}")
        if verify and _sha256(path) != rec["sha256"]:
            raise DatasetError(f"{path} does not match the sha256 in its manifest; {_HINT}")
        try:
            with np.load(path, allow_pickle=False) as z:
                x, y = z["x"], z["y"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{path} is unreadable ({e}); {_HINT}") from e
        if x.dtype != np.float32 or y.dtype != np.int32 or len(x) != len(y):
            raise DatasetError(
                f"{path}: unexpected arrays x {x.dtype}{x.shape}, y {y.dtype}{y.shape}"
            )
        if len(y) != rec["num_examples"]:
            raise DatasetError(f"{path}: {len(y)} examples, manifest says {rec['num_examples']}")
        splits[s] = Split(x, y)
    return Dataset(**splits, num_classes=int(manifest["num_classes"]), name=name)
