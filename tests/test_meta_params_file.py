"""meta_params.npz and its sha256 sidecar (lopt.checkpoint), beyond the small round trip.

test_components.py round-trips a few-kB MLPLOpt and flips one byte; test_cluster.py
checks the CLI's one-line errors for a flipped byte, a non-npz file and broken JSON. Not
covered there:

- the sidecar records the sha256 of the whole file (hashlib over its bytes) under
  ``sha256`` and the file's name under ``file``, and ``sha256_file`` reads files larger
  than its 1 MiB chunk to the end: a byte flipped past the first MiB is caught;
- a template with a meta-parameter the file lacks (another optimizer config) is a
  :class:`CheckpointError` naming it, not a bare ``KeyError``;
- a sidecar that is valid JSON but not an object is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lopt.checkpoint import CheckpointError, load_meta_params, save_meta_params, sha256_file


def test_sidecar_records_the_whole_files_sha256_past_the_first_mebibyte(tmp_path):
    # 3 * 2^18 float32 = 3 MiB of data: three chunks of sha256_file
    theta = {"layer_0": {"w": np.arange(3 * 2**18, dtype=np.float32), "b": np.ones(2, np.float32)}}
    path = tmp_path / "meta_params.npz"
    digest = save_meta_params(path, theta, {"experiment": "big"})
    raw = path.read_bytes()
    assert len(raw) > 3 * 2**20
    assert digest == sha256_file(path) == hashlib.sha256(raw).hexdigest()
    sidecar = json.loads((tmp_path / "meta_params.npz.json").read_text())
    assert sidecar == {"experiment": "big", "sha256": digest, "file": "meta_params.npz"}
    loaded = load_meta_params(path, {"layer_0": {"w": np.zeros(3 * 2**18, np.float32), "b": np.zeros(2, np.float32)}})
    np.testing.assert_array_equal(np.asarray(loaded["layer_0"]["w"]), theta["layer_0"]["w"])

    damaged = bytearray(raw)
    damaged[2**21 + 12345] ^= 0xFF  # inside the array data, 2 MiB in
    path.write_bytes(bytes(damaged))
    assert sha256_file(path) == hashlib.sha256(bytes(damaged)).hexdigest() != digest
    with pytest.raises(CheckpointError, match=r"corrupt \(its sha256 differs"):
        load_meta_params(path, theta)


def test_a_meta_parameter_missing_from_the_file_is_named(tmp_path):
    path = tmp_path / "meta_params.npz"
    save_meta_params(path, {"layer_0": {"w": np.ones((2, 3), np.float32)}}, {})
    template = {"layer_0": {"w": np.zeros((2, 3), np.float32)}, "layer_1": {"w": np.zeros((3, 1), np.float32)}}
    with pytest.raises(CheckpointError, match=r"missing meta-parameter \['layer_1'\]\['w'\]; the optimizer config differs"):
        load_meta_params(path, template)


def test_a_sidecar_that_is_not_a_json_object_is_named(tmp_path):
    path = tmp_path / "meta_params.npz"
    theta = {"w": np.ones(3, np.float32)}
    save_meta_params(path, theta, {})
    sidecar = tmp_path / "meta_params.npz.json"
    sidecar.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"meta_params\.npz\.json: expected a JSON object, got list"):
        load_meta_params(path, theta)
    # without verification the sidecar is not read
    np.testing.assert_array_equal(np.asarray(load_meta_params(path, theta, verify=False)["w"]), theta["w"])
