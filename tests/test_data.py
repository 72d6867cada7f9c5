"""Tests for lopt.data: preparation, loading and the source parsers. Fully offline.

Downloaded sources are exercised with small files generated here in the original
formats (gzipped IDX, the CIFAR-10 python tarball) served from ``file://`` URLs, so the
real pooch retrieval, hash check, parsing and resizing code runs without a network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from lopt.data import (
    DATASETS,
    SPLITS,
    Dataset,
    DatasetError,
    Split,
    load,
    prepare,
    read_manifest,
    sources,
)
from lopt.data.sources import Remote, area_resize, load_cifar10, load_idx_images, read_idx

MNIST1D_OPTIONS = {"num_samples": 500}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}




@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared1d")
    prepare("mnist1d", root, seed=3, options=MNIST1D_OPTIONS)
    return root


# ------------------------------------------------------------------ registry / import


def test_registry_names_and_flags() -> None:
    assert set(DATASETS) == {
        "digits",
        "mnist1d",
        "mnist_8x8",
        "mnist_16x16",
        "fashion_mnist_8x8",
        "fashion_mnist_16x16",
        "cifar10_8x8",
        "cifar10_16x16",
    }
    assert not DATASETS["digits"].needs_download and not DATASETS["mnist1d"].needs_download
    for name in ("mnist_8x8", "fashion_mnist_16x16", "cifar10_8x8"):
        assert DATASETS[name].needs_download
    assert DATASETS["mnist_16x16"].loader.keywords == {"size": 16, "remote": sources.MNIST}
    assert DATASETS["fashion_mnist_8x8"].loader.keywords == {
        "size": 8,
        "remote": sources.FASHION_MNIST,
    }
    assert DATASETS["cifar10_16x16"].loader.keywords["size"] == 16


def test_pinned_hashes_are_sha256() -> None:
    for remote in (sources.MNIST, sources.FASHION_MNIST, sources.CIFAR10):
        for fname, h in remote.files.items():
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), (remote.name, fname)
    assert set(sources.MNIST.files) == set(sources.FASHION_MNIST.files)


def test_import_is_cheap() -> None:
    code = (
        "import sys, lopt.data; "
        "heavy = [m for m in ('jax', 'sklearn', 'mnist1d', 'pooch', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ prepare / load


@pytest.mark.parametrize(
    ("name", "root_fixture", "total", "n_test", "shape"),
    [
        ("digits", "digits_root", 1797, 359, (8, 8, 1)),
        ("mnist1d", "mnist1d_root", 500, 100, (40,)),
    ],
)
def test_prepared_splits(
    request: pytest.FixtureRequest,
    name: str,
    root_fixture: str,
    total: int,
    n_test: int,
    shape: tuple[int, ...],
) -> None:
    root: Path = request.getfixturevalue(root_fixture)
    directory = root / name
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [f"{s}.npz" for s in SPLITS] + ["manifest.json"]
    )
    manifest = read_manifest(name, root)
    n_train_orig = total - n_test
    k = int(n_train_orig * 0.1)
    expected = {"train": n_train_orig - 2 * k, "inner_valid": k, "outer_valid": k, "test": n_test}

    ds = load(name, root)
    assert isinstance(ds, Dataset) and ds.name == name and ds.num_classes == 10
    for s in SPLITS:
        split = getattr(ds, s)
        assert isinstance(split, Split)
        assert split.x.shape == (expected[s], *shape)
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert split.y.min() >= 0 and split.y.max() < 10
        rec = manifest["splits"][s]
        assert rec == {
            "file": f"{s}.npz",
            "num_examples": expected[s],
            "sha256": _sha(directory / f"{s}.npz"),
        }
        with np.load(directory / f"{s}.npz") as z:  # plain numpy can read the files
            np.testing.assert_array_equal(z["x"], split.x)
            np.testing.assert_array_equal(z["y"], split.y)
    assert sum(expected.values()) == total

    assert abs(float(ds.train.x.mean())) < 1e-5
    assert abs(float(ds.train.x.std()) - 1.0) < 1e-5
    # all splits use the train statistics, so they are close to but not exactly standard
    assert abs(float(ds.test.x.mean())) < 0.2

    assert manifest["name"] == name and manifest["num_classes"] == 10
    assert manifest["input_shape"] == list(shape)
    assert manifest["dtypes"] == {"x": "float32", "y": "int32"}
    assert manifest["generator"]["tool"] == "lopt.data"
    assert manifest["generator"]["version"] == __import__("lopt").__version__
    assert "numpy" in manifest["generator"]["packages"]
    assert manifest["normalisation"]["std"] > 0
    assert manifest["source"]["remote"] is None and manifest["source"]["description"]


def test_digits_standardisation_values(digits_root: Path) -> None:
    from sklearn.datasets import load_digits

    manifest = read_manifest("digits", digits_root)
    ds = load("digits", digits_root)
    mean, std = manifest["normalisation"]["mean"], manifest["normalisation"]["std"]
    raw = ds.train.x * std + mean  # back to [0, 1] pixels
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5
    # every prepared image is one of sklearn's images (no mixing across examples)
    sk = (load_digits().images / 16.0).reshape(1797, -1)
    first = raw[0].reshape(-1)
    assert np.abs(sk - first).max(axis=1).min() < 1e-5
    assert manifest["generator"]["packages"]["scikit-learn"]


def test_rerun_is_byte_identical(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later wall clock must not change the bytes (np.savez would stamp zip times).
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400 * 400)
    out = prepare("digits", tmp_path, seed=0)
    assert _files(out) == _files(digits_root / "digits")
    # Re-running over an existing directory replaces it atomically and leaves no debris.
    prepare("digits", tmp_path, seed=0)
    assert _files(out) == _files(digits_root / "digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_prepared_directory_is_readable_by_others(tmp_path: Path) -> None:
    """The dataset directory gets the umask's permissions, not a temp dir's 0o700 (a lab's
    other users and cluster jobs read data/ from a shared filesystem)."""
    old = os.umask(0o022)
    try:
        out = prepare("digits", tmp_path, seed=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.iterdir())


def test_seed_changes_split(digits_root: Path, tmp_path: Path) -> None:
    prepare("digits", tmp_path, seed=1)
    a, b = load("digits", digits_root), load("digits", tmp_path)
    assert read_manifest("digits", tmp_path)["seed"] == 1
    assert not np.array_equal(a.test.y, b.test.y)


def test_mnist1d_rerun_identical_and_manifest(mnist1d_root: Path, tmp_path: Path) -> None:
    out = prepare("mnist1d", tmp_path, seed=3, options=MNIST1D_OPTIONS)
    assert _files(out) == _files(mnist1d_root / "mnist1d")
    manifest = read_manifest("mnist1d", tmp_path)
    assert manifest["options"] == MNIST1D_OPTIONS
    assert "mnist1d" in manifest["generator"]["packages"]


def test_mnist1d_restores_global_rngs() -> None:
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    sources.load_mnist1d(0, None, num_samples=20)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before


def test_corrupted_file_raises_naming_it(digits_root: Path, tmp_path: Path) -> None:
    shutil.copytree(digits_root / "digits", tmp_path / "digits")
    target = tmp_path / "digits" / "inner_valid.npz"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"inner_valid\.npz"):
        load("digits", tmp_path)
    target.unlink()
    with pytest.raises(DatasetError, match=r"inner_valid\.npz.*missing"):
        load("digits", tmp_path)


def test_split_settings_must_match_the_prepared_data(digits_root: Path, tmp_path: Path, capsys) -> None:
    """data/<name>/ is named by dataset only: another experiment's split must not load silently."""
    import yaml
    from conftest import REPO

    from lopt.cli import main
    from lopt.config import DataConfig, ImageMLPTaskConfig
    from lopt.tasks.build import build_task

    task = ImageMLPTaskConfig(dataset="digits")
    same = DataConfig(root=str(digits_root), seed=0, valid_fraction=0.1)
    assert build_task(task, digits_root, data_cfg=same)[1]["train"][0].shape[0] == 1152
    other = DataConfig(root=str(digits_root), seed=7, valid_fraction=0.3)
    with pytest.raises(DatasetError, match=r"digits/manifest\.json was prepared with data\.seed=0, "
                       r"data\.valid_fraction=0\.1.*asks for data\.seed=7, data\.valid_fraction=0\.3"):
        build_task(task, digits_root, data_cfg=other)
    # through the CLI: a one-line error naming the config, exit status 2
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["data"] = {"root": str(digits_root), "seed": 7}
    raw["tracking"] = {"mode": "disabled"}
    cfg = tmp_path / "seed7.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["meta-train", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cfg}: ") and "data.seed=7" in err and "Traceback" not in err


def test_missing_dataset_tells_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="lopt prepare-data"):
        load("digits", tmp_path)


@pytest.mark.parametrize("text,expected", [("{bad", "is unreadable"), ("[]", "is not a manifest .a JSON object; got list.")])
def test_damaged_manifest_is_named_with_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "manifest.json").write_text(text)
    with pytest.raises(DatasetError, match=rf"digits/manifest\.json {expected}.*lopt prepare-data"):
        load("digits", tmp_path)


def test_unknown_name_lists_allowed(tmp_path: Path) -> None:
    for call in (lambda: prepare("mnist_32x32", tmp_path), lambda: load("nope", tmp_path)):
        with pytest.raises(DatasetError) as info:
            call()
        for name in DATASETS:
            assert name in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown options"):
        prepare("digits", tmp_path, options={"num_samples": 3})
    with pytest.raises(DatasetError, match="valid_fraction"):
        prepare("digits", tmp_path, valid_fraction=0.5)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ resizing / parsing


def test_area_resize_hand_computed() -> None:
    x = np.zeros((1, 8, 8, 1))
    x[0, :4, :4, 0], x[0, :4, 4:, 0], x[0, 4:, :4, 0], x[0, 4:, 4:, 0] = 1, 2, 3, 4
    np.testing.assert_array_equal(area_resize(x, 2)[0, :, :, 0], [[1, 2], [3, 4]])
    # non-integer ratio 3 -> 2: each output covers 1.5 input pixels
    y = area_resize(np.array([[0.0, 3.0, 6.0]])[None, :, :, None].repeat(3, 1), 2)
    np.testing.assert_allclose(y[0, 0, :, 0], [1.0, 5.0], rtol=1e-6)
    const = np.full((2, 28, 28, 3), 7, np.uint8)
    np.testing.assert_allclose(area_resize(const, 8, scale=1 / 7), 1.0, rtol=1e-6)
    assert area_resize(const, 16).dtype == np.float32


@pytest.mark.parametrize(("size_in", "size_out"), [(28, 8), (28, 16), (32, 8), (32, 16)])
def test_area_resize_is_exact_area_mean(size_in: int, size_out: int) -> None:
    # Reference: nearest-upsample by u so the ratio becomes an integer b, then block-mean.
    img = np.random.default_rng(0).random((size_in, size_in))
    u = {28: 2 if size_out == 8 else 4, 32: 1}[size_in]
    b = size_in * u // size_out
    up = img.repeat(u, 0).repeat(u, 1)
    ref = up.reshape(size_out, b, size_out, b).mean(axis=(1, 3))
    out = area_resize(img[None, :, :, None], size_out)[0, :, :, 0]
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("size_out", [8, 16])
def test_area_resize_matches_pil_box_for_integer_ratios(size_out: int) -> None:
    # PIL's BOX filter point-samples a box kernel: it equals the area mean only when the
    # ratio is an integer (for 28 -> 8 it weights 4/3/4... pixels instead of 3.5).
    from PIL import Image

    img = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    ref = np.asarray(Image.fromarray(img, mode="F").resize((size_out, size_out), Image.BOX))
    out = area_resize(img[None, :, :, None], size_out)[0, :, :, 0]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


def _mnist_images(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Image k: left half (columns < 14) = 8k+7, right half 0; label (3k) % 10."""
    k = np.arange(offset, offset + n)
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, :, :14] = (8 * k + 7)[:, None, None]
    return x, (3 * k % 10).astype(np.uint8)


@pytest.fixture
def idx_remote(tmp_path: Path) -> Remote:
    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for prefix, n, offset in (("train", 20, 0), ("t10k", 10, 20)):
        x, y = _mnist_images(n, offset)
        for fname, arr in (
            (f"{prefix}-images-idx3-ubyte.gz", x),
            (f"{prefix}-labels-idx1-ubyte.gz", y),
        ):
            (served / fname).write_bytes(_idx_bytes(arr))
            files[fname] = "sha256:" + _sha(served / fname)
    return Remote(name="mnist", base_url=served.as_uri() + "/", files=files)


def test_read_idx_roundtrip_and_bad_magic(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\x00" * 8))
    with pytest.raises(DatasetError, match="b.gz"):
        read_idx(tmp_path / "b.gz")


@pytest.mark.parametrize("size", [8, 16])
def test_idx_loader_through_pooch(idx_remote: Remote, tmp_path: Path, size: int) -> None:
    cache = tmp_path / "cache"
    x_tr, y_tr, x_te, y_te = load_idx_images(0, cache, size=size, remote=idx_remote)
    assert x_tr.shape == (20, size, size, 1) and x_te.shape == (10, size, size, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    np.testing.assert_array_equal(y_tr, np.arange(20) * 3 % 10)
    np.testing.assert_array_equal(y_te, np.arange(20, 30) * 3 % 10)
    # 28 -> size: the 14-pixel left half maps exactly onto the left size/2 output columns
    for x, k in ((x_tr, np.arange(20)), (x_te, np.arange(20, 30))):
        np.testing.assert_allclose(
            x[:, :, : size // 2, 0],
            np.broadcast_to(((8 * k + 7) / 255)[:, None, None], (len(k), size, size // 2)),
            rtol=1e-6,
        )
        assert np.all(x[:, :, size // 2 :, 0] == 0)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(idx_remote.files)

    # With a verified cache nothing is fetched: an unreachable URL still works.
    offline = Remote(name="mnist", base_url="http://127.0.0.1:9/", files=idx_remote.files)
    again = load_idx_images(0, cache, size=size, remote=offline)
    for a, b in zip(again, (x_tr, y_tr, x_te, y_te), strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_hash_raises(idx_remote: Remote, tmp_path: Path) -> None:
    files = dict(idx_remote.files)
    files["t10k-labels-idx1-ubyte.gz"] = "sha256:" + "0" * 64
    bad = Remote(name="mnist", base_url=idx_remote.base_url, files=files)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_idx_images(0, cache, size=8, remote=bad)
    assert not (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_prepare_downloaded_source_end_to_end(idx_remote: Remote, tmp_path: Path) -> None:
    out = prepare(
        "fashion_mnist_8x8", tmp_path / "data", options={"remote": idx_remote}, valid_fraction=0.25
    )
    ds = load("fashion_mnist_8x8", tmp_path / "data")
    assert [len(getattr(ds, s).y) for s in SPLITS] == [10, 5, 5, 10]
    assert ds.train.x.shape[1:] == (8, 8, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["remote"]["base_url"] == idx_remote.base_url
    assert manifest["source"]["remote"]["files"] == dict(idx_remote.files)
    assert (tmp_path / "data" / ".downloads" / "mnist").is_dir()  # default cache_dir
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.train.y, ds.inner_valid.y, ds.outer_valid.y])),
        np.sort(np.arange(20) * 3 % 10),
    )


def _cifar_tarball(path: Path) -> None:
    """Five train batches of 2 images and a test batch of 3, in the original layout.

    Image k: red plane = k + 1, green plane = 255 on columns < 16, blue plane = 0.
    """

    def batch(ks: range) -> bytes:
        data = np.zeros((len(ks), 3, 32, 32), np.uint8)
        data[:, 0] = np.array(list(ks))[:, None, None] + 1
        data[:, 1, :, :16] = 255
        return pickle.dumps(
            {
                b"batch_label": b"tiny",
                b"labels": [k % 10 for k in ks],
                b"data": data.reshape(len(ks), 3072),
                b"filenames": [b"%d.png" % k for k in ks],
            },
            protocol=2,
        )

    members = {f"data_batch_{i}": batch(range(2 * (i - 1), 2 * i)) for i in range(1, 6)}
    members["test_batch"] = batch(range(10, 13))
    members["batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("size", [8, 16])
def test_cifar_loader_through_pooch(tmp_path: Path, size: int) -> None:
    served = tmp_path / "served"
    served.mkdir()
    _cifar_tarball(served / "cifar-10-python.tar.gz")
    remote = Remote(
        name="cifar10",
        base_url=served.as_uri(),
        files={"cifar-10-python.tar.gz": "sha256:" + _sha(served / "cifar-10-python.tar.gz")},
    )
    x_tr, y_tr, x_te, y_te = load_cifar10(0, tmp_path / "cache", size=size, remote=remote)
    assert x_tr.shape == (10, size, size, 3) and x_te.shape == (3, size, size, 3)
    assert x_tr.dtype == np.float32 and y_te.dtype == np.int32
    np.testing.assert_array_equal(y_tr, np.arange(10) % 10)
    np.testing.assert_array_equal(y_te, np.arange(10, 13) % 10)
    x = np.concatenate([x_tr, x_te])
    red = (np.arange(13) + 1) / 255
    np.testing.assert_allclose(
        x[..., 0], np.broadcast_to(red[:, None, None], x.shape[:3]), rtol=1e-6
    )
    np.testing.assert_allclose(x[:, :, : size // 2, 1], 1.0, rtol=1e-6)
    assert np.all(x[:, :, size // 2 :, 1] == 0) and np.all(x[..., 2] == 0)

    bad = Remote(
        name="cifar10",
        base_url=served.as_uri(),
        files={"cifar-10-python.tar.gz": "sha256:" + "f" * 64},
    )
    with pytest.raises(DatasetError, match="cifar-10-python"):
        load_cifar10(0, tmp_path / "cache2", size=size, remote=bad)


def test_unreachable_url_without_cache_raises(tmp_path: Path) -> None:
    remote = Remote(name="mnist", base_url="http://127.0.0.1:9/", files=sources.MNIST.files)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz"):
        load_idx_images(0, tmp_path, size=8, remote=remote)
