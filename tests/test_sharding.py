"""Particles sharded over several devices give the single-device meta-gradient.

Runs in a subprocess with ``--xla_force_host_platform_device_count=4`` (the device
count is fixed when JAX starts). The same config meta-trains with ``devices: 1`` and
``devices: 4``; the sharded run must really place the particle axis on 4 devices and
reach the same meta-parameters up to float32 summation order.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import sandbox_env

SCRIPT = r"""
import json, sys
import jax, numpy as np
from lopt.config import validate_config
from lopt.meta_train import build_trainer, meta_train

assert jax.device_count() == 4, jax.devices()
out = {}
for devices in (1, 4):
    raw = {
        "name": "shard_test",
        "data": {"root": sys.argv[1] + "/data"},
        "lopt": {"kind": "mlp_lopt", "hidden_size": 8, "step_mult": 0.1},
        "meta_train": {
            "task": {"kind": "quadratic", "dim": 10},
            "estimator": "nres", "num_particles": 16, "trunc_length": 5, "horizon": 20,
            "outer_steps": 12, "checkpoint_every": 6, "log_every": 6, "devices": devices,
            **json.loads(sys.argv[2]),
        },
        "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}], "num_steps": 20, "eval_every": 10},
        "tracking": {"mode": "disabled"},
    }
    cfg = validate_config(raw)
    theta0 = build_trainer(cfg).init().theta
    state = meta_train(cfg, f"{sys.argv[1]}/run{devices}", progress=False)
    steps = state.estimator_state.particles.step
    out[devices] = {
        "theta": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.theta)],
        "moved": max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(theta0))),
        "num_devices": len(steps.sharding.device_set),
        "shard_shape": list(steps.sharding.shard_shape(steps.shape)),
    }
print(json.dumps(out))
"""


def _on_four_devices(script: str, tmp_path, *args: str) -> tuple[dict, str]:
    """Run ``script`` in a fresh Python with 4 forced CPU devices; (its JSON result, stderr)."""
    env = sandbox_env(tmp_path)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


# episodes of random length (min_horizon): the lengths are drawn per particle from its key,
# so they must not depend on how the particle axis is split
@pytest.mark.parametrize("extra", [{}, {"min_horizon": 5}], ids=["constant_T", "sampled_T"])
def test_sharded_meta_training_matches_single_device(tmp_path, extra):
    out, _ = _on_four_devices(SCRIPT, tmp_path, json.dumps(extra))
    one, four = out["1"], out["4"]
    assert one["num_devices"] == 1
    assert four["num_devices"] == 4 and four["shard_shape"] == [4]  # 16 particles / 4 devices
    import numpy as np

    for a, b in zip(one["theta"], four["theta"], strict=True):
        # same noise, same windows; only the order of the cross-particle sums differs:
        # float32 rounding over 12 Adam steps stays far below 1e-4 relative
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    # the comparison is meaningful: 12 Adam steps of lr 3e-3 moved theta ~100x the tolerance
    assert one["moved"] > 1e-2, one["moved"]
    diff = max(abs(x - y) for a, b in zip(one["theta"], four["theta"]) for x, y in zip(a, b))
    assert diff < 1e-2 * one["moved"], (diff, one["moved"])


STUDY_SCRIPT = r"""
import json, logging, sys
import jax, numpy as np, pandas as pd
from lopt.studies.config import StudyConfig
from lopt.studies.run import particle_mesh_for, run_method

assert jax.device_count() == 4, jax.devices()
methods = [
    {"name": "pes", "estimator": "pes", "num_particles": 16, "trunc_length": 20},
    {"name": "tes", "estimator": "tes", "num_particles": 16, "trunc_length": 20},
    {"name": "gpes", "estimator": "gpes", "num_particles": 16, "trunc_length": 20, "noise_reuse_steps": 40},
    {"name": "full_es", "estimator": "full_es", "num_particles": 8},
    {"name": "tbptt", "estimator": "tbptt", "num_particles": 4, "trunc_length": 20},
    {"name": "odd", "estimator": "nres", "num_particles": 12, "trunc_length": 20},  # 6 pairs: not 4 x whole pairs
]
for m in methods:
    m.update(sigma=0.04, outer={"name": "sgd", "lr": 3e-4 if m["estimator"] in ("tes", "tbptt") else 3e-5})
out = {}
for devices in (1, 4):
    study = StudyConfig.model_validate({
        "kind": "study", "name": "shard", "seeds": 1, "outer_steps": 6,
        "system": {"kind": "lorenz", "horizon": 80, "dt": 0.005, "start_noise": 0.0},
        "evaluation": {"every": 3, "num_episodes": 8},
        "methods": methods, "compute": {"devices": devices},
    })
    for m in methods:
        mesh = particle_mesh_for(study, study.method(m["name"]))
        curve = pd.read_csv(run_method(study, m["name"], 0, f"{sys.argv[1]}/{devices}/{m['name']}"))
        out.setdefault(m["name"], {})[devices] = {
            "theta": curve[["theta_0", "theta_1"]].to_numpy().tolist(),
            "mesh": 0 if mesh is None else mesh.devices.size,
        }
print(json.dumps(out))
"""


def test_sharded_study_runs_match_single_device_for_every_estimator(tmp_path):
    """Every other estimator (PES, TES, GPES, FullES, TBPTT; NRES is above) through a
    study run: sharded over 4 devices it gives the one-device theta trajectory."""
    import numpy as np

    out, stderr = _on_four_devices(STUDY_SCRIPT, tmp_path)
    assert {name: r["4"]["mesh"] for name, r in out.items()} == {
        "pes": 4, "tes": 4, "gpes": 4, "full_es": 4, "tbptt": 4, "odd": 0
    }
    assert "odd: num_particles 12 is not a multiple of 8" in stderr
    for name, r in out.items():
        one, four = np.asarray(r["1"]["theta"]), np.asarray(r["4"]["theta"])
        # same noise and windows; only the order of the cross-particle sums differs (float32)
        np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-6, err_msg=name)
        moved = np.abs(one[-1] - one[0]).max()
        assert moved > 1e-3 and np.abs(four - one).max() < 1e-2 * moved, (name, moved)
