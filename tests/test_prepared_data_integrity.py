"""A prepared dataset keeps each input with its own label, and `load` refuses a split file
whose contents differ from the manifest even when the file is a valid, loadable npz."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lopt.data import SPLITS, DatasetError, load, read_manifest


def test_every_prepared_example_keeps_its_label(digits_root: Path) -> None:
    from sklearn.datasets import load_digits

    sk = load_digits()
    # sklearn's digits are integers 0..16; key each image by its pixels -> its labels
    labels_of: dict[bytes, set[int]] = {}
    for img, label in zip(sk.images.astype(np.uint8), sk.target):
        labels_of.setdefault(img.tobytes(), set()).add(int(label))
    norm = read_manifest("digits", digits_root)["normalisation"]
    ds = load("digits", digits_root)
    for s in SPLITS:
        split = getattr(ds, s)
        # back to 0..16: x = (p / 16 - mean) / std, float32 rounding ~1e-6 << 0.5
        pixels = np.rint((split.x[..., 0].astype(np.float64) * norm["std"] + norm["mean"]) * 16).astype(np.uint8)
        wrong = [i for i, (img, y) in enumerate(zip(pixels, split.y)) if int(y) not in labels_of.get(img.tobytes(), ())]
        assert not wrong, (s, len(wrong), len(split.y))


def test_load_checks_the_sha256_of_a_valid_but_changed_file(digits_root: Path, tmp_path: Path) -> None:
    shutil.copytree(digits_root / "digits", tmp_path / "digits")
    path = tmp_path / "digits" / "train.npz"
    with np.load(path) as z:
        x, y = z["x"].copy(), z["y"].copy()
    y[0] = (y[0] + 1) % 10  # one flipped label: same shapes, dtypes and count
    with open(path, "wb") as f:
        np.savez(f, x=x, y=y)
    load("digits", tmp_path, verify=False)  # readable: only the checksum can tell
    with pytest.raises(DatasetError, match=r"train\.npz does not match the sha256"):
        load("digits", tmp_path)
