"""Which config settings invalidate a meta-training checkpoint (``lopt.meta_train.fingerprint``).

Every setting that changes the meta-training computation must change the fingerprint (a
resume would otherwise continue another experiment's run); the bookkeeping settings
listed in run_dir._NON_FINGERPRINT must not (a longer or re-chunked run resumes), nor may
``data.root`` (moved data).
"""

from __future__ import annotations

import pytest

from lopt.config import validate_config
from lopt.meta_train import fingerprint

BASE = {"name": "fp", "meta_train": {"task": {"kind": "quadratic"}, "num_particles": 8},
        "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}]}}


def _fp(section: str | None, **update) -> str:
    raw = {**BASE, "meta_train": dict(BASE["meta_train"])}
    if section is None:
        raw.update(update)
    else:
        raw[section] = {**raw.get(section, {}), **update}
    return fingerprint(validate_config(raw))


@pytest.mark.parametrize(
    ("section", "update"),
    [
        (None, {"seed": 1}),
        ("data", {"seed": 1}),
        ("data", {"valid_fraction": 0.2}),
        ("lopt", {"hidden_size": 16}),
        ("lopt", {"step_mult": 0.01}),
        ("meta_train", {"sigma": 0.02}),
        ("meta_train", {"num_particles": 16}),
        ("meta_train", {"trunc_length": 20}),
        ("meta_train", {"estimator": "pes"}),
        ("meta_train", {"outer_lr": 0.001}),
        ("meta_train", {"task": {"kind": "quadratic", "dim": 5}}),
    ],
)
def test_settings_of_the_computation_change_the_fingerprint(section, update):
    assert _fp(section, **update) != _fp(None), (section, update)


@pytest.mark.parametrize(
    "update",
    [{"outer_steps": 400}, {"checkpoint_every": 10}, {"max_to_keep": 5}, {"log_every": 1}, {"particle_chunk": 4}],
)
def test_bookkeeping_settings_keep_the_fingerprint(update):
    assert _fp("meta_train", **update) == _fp(None), update


def test_the_data_root_keeps_the_fingerprint():
    """Where the datasets are is not what they hold: a run resumes with its data moved."""
    assert _fp("data", root="/scratch/job-123/data") == _fp(None)
