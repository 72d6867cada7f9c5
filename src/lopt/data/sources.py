"""Raw dataset sources: one loader per source, plus the :data:`DATASETS` registry.

Every loader has the signature ``loader(seed, cache_dir, **options) -> RawArrays`` and
returns ``(x_train, y_train, x_test, y_test)`` as numpy arrays, ``x`` float32 with pixel
values in ``[0, 1]`` (images are ``[N, H, W, C]``) and ``y`` int32. Loaders are pure
functions of their arguments and the (hash-pinned) files they read: they keep no global
state and leave numpy's and Python's global RNGs as they found them.

Downloaded sources go through :func:`fetch`, which wraps :func:`pooch.retrieve` with a
pinned ``known_hash``; ``file://`` URLs are copied locally (tests use this to feed small
generated files in the original formats through the real parsing code). sklearn, mnist1d
and pooch are imported lazily so ``import lopt.data`` stays cheap.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import random
import shutil
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RawArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Loader = Callable[..., RawArrays]


class DatasetError(RuntimeError):
    """A dataset cannot be prepared or loaded (unknown name, missing/corrupt file...)."""


@dataclass(frozen=True)
class Remote:
    """Where a downloaded source lives.

    ``name`` is the cache sub-directory (MNIST and Fashion-MNIST share file names),
    ``base_url`` the URL prefix, ``files`` maps file name -> pooch ``known_hash``.
    """

    name: str
    base_url: str
    files: Mapping[str, str]


# sha256 of the original files. MNIST and Fashion-MNIST: tensorflow/datasets
# url_checksums/{mnist,fashion_mnist}.txt (MNIST there is listed at the cvdf mirror; the
# ossci mirror serves the same bytes: same sizes and the same md5s torchvision pins for
# both mirrors). The four Fashion-MNIST sha256 also agree with the pins of several
# unrelated public projects (checked 2026-11; no download is possible from CI here).
# CIFAR-10 (python version): keras/datasets/cifar10.py ``file_hash``.
# fmt: off
MNIST = Remote(
    name="mnist",
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    files={
        "train-images-idx3-ubyte.gz":
            "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
)
FASHION_MNIST = Remote(
    name="fashion_mnist",
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files={
        "train-images-idx3-ubyte.gz":
            "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz":
            "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz":
            "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz":
            "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
)
CIFAR10 = Remote(
    name="cifar10",
    base_url="https://www.cs.toronto.edu/~kriz/",
    files={
        # md5 (published on the CIFAR page): c58f30108f718f92721af3b95e74349a
        "cifar-10-python.tar.gz":
            "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    },
)
# fmt: on


# --------------------------------------------------------------------------- download


def _copy_file_url(url: str, output_file: Any, pooch: Any = None) -> None:
    """A pooch downloader for ``file://`` URLs: copy the local file to ``output_file``."""
    src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if hasattr(output_file, "write"):
        with open(src, "rb") as f:
            shutil.copyfileobj(f, output_file)
    else:
        shutil.copyfile(src, output_file)


def fetch(base_url: str, fname: str, known_hash: str, cache_dir: Path) -> Path:
    """Return the local path of ``base_url + fname``, downloading it into ``cache_dir``.

    A cached file whose hash matches ``known_hash`` is used as is (no network); otherwise
    the file is (re)downloaded and verified. Raises :class:`DatasetError` naming the
    file when the hash does not match or the download fails.
    """
    import pooch

    url = base_url.rstrip("/") + "/" + fname
    downloader = _copy_file_url if url.startswith("file:") else None
    try:
        path = pooch.retrieve(
            url, known_hash=known_hash, fname=fname, path=Path(cache_dir), downloader=downloader
        )
    except (ValueError, OSError) as e:  # hash mismatch -> ValueError; requests errors are OSError
        raise DatasetError(f"could not fetch {fname} from {url}: {e}") from e
    return Path(path)


def _fetch_remote(remote: Remote, fname: str, cache_dir: Path) -> Path:
    return fetch(remote.base_url, fname, remote.files[fname], Path(cache_dir) / remote.name)


# --------------------------------------------------------------------------- helpers


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` area-averaging matrix: row ``i`` is the overlap of output cell
    ``[i*s, (i+1)*s)`` (``s = n_in / n_out``) with each input cell, divided by ``s``."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + s, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / s


def area_resize(x: np.ndarray, size: int, *, scale: float = 1.0, chunk: int = 4096) -> np.ndarray:
    """Area-average (box-filter) ``x [N, H, W, C]`` (any numeric dtype) to
    ``[N, size, size, C]`` float32, multiplied by ``scale`` (e.g. ``1/255``).

    Exact for any ratio (each output pixel is the mean of the input area it covers, as
    PIL's ``Image.BOX``); a constant block maps to its value. Computed in float64 in
    chunks, then rounded to float32. Deterministic.
    """
    n, h, w, c = x.shape
    wh, ww = area_weights(h, size), area_weights(w, size)
    out = np.empty((n, size, size, c), np.float32)
    for s in range(0, n, chunk):
        xb = np.moveaxis(x[s : s + chunk].astype(np.float64), -1, 1)  # [n, c, h, w]
        out[s : s + chunk] = np.moveaxis((wh @ xb @ ww.T) * scale, 1, -1)
    return out


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file: big-endian ``00 00 <dtype> <ndim>`` magic, ``ndim``
    big-endian uint32 dims, then the data. Raises :class:`DatasetError` if malformed."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{Path(path).name}: not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)) * dtype.itemsize:
        raise DatasetError(f"{Path(path).name}: IDX size does not match dims {dims}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- loaders


def load_digits(
    seed: int, cache_dir: Path | None = None, *, test_fraction: float = 0.2
) -> RawArrays:
    """scikit-learn's bundled 8x8 digits (1797 images, no download): x ``[N, 8, 8, 1]``
    in ``[0, 1]``; a ``seed``-ed permutation holds out ``test_fraction`` as test."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = round(test_fraction * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_mnist1d(seed: int, cache_dir: Path | None = None, *, num_samples: int = 5000) -> RawArrays:
    """MNIST-1D generated locally (``mnist1d.data.make_dataset``, never downloaded):
    x ``[N, 40]`` (already centred by the generator), its own 80/20 train/test split.

    ``make_dataset`` reseeds numpy's and Python's global RNGs; both are restored.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = int(seed)
    args.num_samples = int(num_samples)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    f32, i32 = np.float32, np.int32
    return d["x"].astype(f32), d["y"].astype(i32), d["x_test"].astype(f32), d["y_test"].astype(i32)


def load_idx_images(seed: int, cache_dir: Path, *, size: int, remote: Remote = MNIST) -> RawArrays:
    """MNIST-format source (IDX gz files in ``remote``) area-downsampled 28x28 -> ``size``:
    x ``[N, size, size, 1]`` in ``[0, 1]``; the official train/test split (``seed`` unused)."""
    out = []
    for prefix in ("train", "t10k"):
        images = read_idx(_fetch_remote(remote, f"{prefix}-images-idx3-ubyte.gz", cache_dir))
        labels = read_idx(_fetch_remote(remote, f"{prefix}-labels-idx1-ubyte.gz", cache_dir))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DatasetError(
                f"{remote.name}/{prefix}: images {images.shape}, labels {labels.shape}"
            )
        out += [area_resize(images[..., None], size, scale=1 / 255), labels.astype(np.int32)]
    return out[0], out[1], out[2], out[3]


def load_cifar10(seed: int, cache_dir: Path, *, size: int, remote: Remote = CIFAR10) -> RawArrays:
    """CIFAR-10 python pickles (``data_batch_1..5``, ``test_batch``; uint8 rows of 3x32x32,
    channel-first) area-downsampled to ``size``: x ``[N, size, size, 3]`` in ``[0, 1]``."""
    archive = _fetch_remote(remote, "cifar-10-python.tar.gz", cache_dir)
    batches: dict[str, dict[bytes, Any]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and (base.startswith("data_batch_") or base == "test_batch"):
                # The archive's hash is pinned above, so unpickling it is safe.
                batches[base] = pickle.load(tar.extractfile(member), encoding="bytes")

    def stack(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [n for n in names if n not in batches]
        if missing:
            raise DatasetError(f"{archive.name}: missing batches {missing}")
        data = np.concatenate([np.asarray(batches[n][b"data"], np.uint8) for n in names])
        labels = np.concatenate([np.asarray(batches[n][b"labels"], np.int32) for n in names])
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return area_resize(images, size, scale=1 / 255), labels

    x_tr, y_tr = stack([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = stack(["test_batch"])
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SourceSpec:
    """A registry entry: ``loader(seed, cache_dir, **options)``, a description, the
    ``remote`` it downloads from (``None``: nothing downloaded), the options a caller may
    pass, and the distributions whose versions the manifest records."""

    loader: Loader
    description: str
    num_classes: int
    remote: Remote | None = None
    options: tuple[str, ...] = ()
    packages: tuple[str, ...] = field(default=("numpy",))

    @property
    def needs_download(self) -> bool:
        return self.remote is not None


def _idx(remote: Remote, size: int, what: str) -> SourceSpec:
    return SourceSpec(
        loader=functools.partial(load_idx_images, size=size, remote=remote),
        description=f"{what} ({remote.base_url}), 28x28 area-downsampled to {size}x{size}",
        num_classes=10,
        remote=remote,
        options=("remote",),
        packages=("numpy", "pooch"),
    )


def _cifar(size: int) -> SourceSpec:
    return SourceSpec(
        loader=functools.partial(load_cifar10, size=size, remote=CIFAR10),
        description=f"CIFAR-10 python version ({CIFAR10.base_url}cifar-10-python.tar.gz), "
        f"32x32 area-downsampled to {size}x{size}",
        num_classes=10,
        remote=CIFAR10,
        options=("remote",),
        packages=("numpy", "pooch"),
    )


DATASETS: dict[str, SourceSpec] = {
    "digits": SourceSpec(
        loader=load_digits,
        description="scikit-learn load_digits (UCI optical digits, 8x8, bundled; "
        "seeded 20% test hold-out)",
        num_classes=10,
        options=("test_fraction",),
        packages=("numpy", "scikit-learn"),
    ),
    "mnist1d": SourceSpec(
        loader=load_mnist1d,
        description="MNIST-1D generated locally with mnist1d.data.make_dataset "
        "(https://github.com/greydanus/mnist1d)",
        num_classes=10,
        options=("num_samples",),
        packages=("numpy", "mnist1d"),
    ),
    "mnist_8x8": _idx(MNIST, 8, "MNIST"),
    "mnist_16x16": _idx(MNIST, 16, "MNIST"),
    "fashion_mnist_8x8": _idx(FASHION_MNIST, 8, "Fashion-MNIST"),
    "fashion_mnist_16x16": _idx(FASHION_MNIST, 16, "Fashion-MNIST"),
    "cifar10_8x8": _cifar(8),
    "cifar10_16x16": _cifar(16),
}


def get_spec(name: str) -> SourceSpec:
    """The registry entry for ``name``; :class:`DatasetError` listing names if unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}"
        ) from None
