"""Malformed configs fail at once, naming the file, the key path and the allowed values."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, sandbox_env

from lopt.config import ConfigError, load_config

BASE = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())


def _set(tree, path, value):
    keys = path.split(".")
    node = tree
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


class _Delete:
    def __repr__(self) -> str:  # stable test ids across xdist workers
        return "<deleted>"


_DELETE = _Delete()
CROSS_FIELD = {
    "applies to estimator 'gpes' only",
    "even",
    "trunc_length (50) must be <= horizon",
    "multiple of eval_every",
    "low (2.0) must be < high",
    "num_heads (3) must divide",
    "must be a multiple of 2 x devices",
}

# (key path to corrupt, new value, text the message must contain besides file and key)
MALFORMED = [
    ("meta_train.estimator", "sgd-es", "'tbptt', 'full_es', 'tes', 'pes', 'gpes' or 'nres'"),
    ("meta_train.noise_reuse_steps", 10, "applies to estimator 'gpes' only"),
    ("meta_train.num_particles", 7, "even"),
    ("meta_train.num_particles", "many", "valid integer"),
    ("meta_train.sigma", -0.1, "greater than 0"),
    ("meta_train.trunc_length", 50, "trunc_length (50) must be <= horizon"),
    ("meta_train.task.dataset", "imagenet", "'digits'"),
    ("meta_train.task.activation", "swish", "'relu'"),
    ("meta_train.task.hidden_size", [3], "allowed keys: activation, batch_size"),
    ("meta_train.outer_stepz", 10, "allowed keys:"),
    ("lopt.momentum_decays", [0.9, 1.5], "less than 1"),
    ("evaluation.baselines", ["sgd", "lamb"], "'adamw', 'nadamw', 'rmsprop', 'lion' or 'adafactor'"),
    ("evaluation.eval_every", 7, "multiple of eval_every"),
    ("evaluation.tasks", [], "at least 1 item"),
    ("evaluation.lr_grid.low", 2.0, "low (2.0) must be < high"),
    ("tracking.mode", "cloud", "'online', 'offline' or 'disabled'"),
    ("name", "x", "at least 2 characters"),
    ("name", _DELETE, "Field required"),
    ("data.valid_fraction", 0.7, "less than 0.5"),
    ("meta_train.devices", 3, "must be a multiple of 2 x devices"),
    ("meta_train.devices", "every", "'all'"),
    ("lopt.kind", "velo", "allowed values: mlp_lopt, adafac_mlp_lopt, nn_adam, rnn_mlp_lopt"),
    ("lopt.features", ["grad", "hessian"], "'param', 'grad', 'momentum'"),
    ("lopt.nominal", {"optimizer": "lion"}, "'adam', 'sgd' or 'momentum'"),
    ("evaluation.tasks.0.distribution", "ood", "'in' or 'out'"),
    ("evaluation.tasks.0.task", {"kind": "char_lm", "num_heads": 3}, "num_heads (3) must divide"),
    ("meta_train.task", {"kind": "image_conv", "channels": []}, "at least 1 item"),
    (
        "meta_train.task_family",
        {"base": {"kind": "image_mlp"}, "choices": {"widths": [[8]]}},
        "choices.widths: not a field of task kind 'image_mlp' (allowed keys: activation",
    ),
    (
        "meta_train.task_family",
        {"base": {"kind": "image_mlp"}, "choices": {"activation": ["relu", "swish"]}},
        "choices.activation[1] = 'swish'",
    ),
]


@pytest.mark.parametrize("path,value,expected", MALFORMED, ids=[f"{p}={v!r}"[:40] for p, v, _ in MALFORMED])
def test_malformed_config_names_file_key_and_allowed(tmp_path, path, value, expected):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    _set(raw, path, value)
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path)
    msg = str(info.value)
    assert str(cfg_path) in msg
    # cross-field checks are reported on the enclosing section
    key = path.rsplit(".", 1)[0] if expected in CROSS_FIELD else path
    key = re.sub(r"\.(\d+)", r"[\1]", key)  # list indices print as tasks[0]
    assert f"  {key}" in msg, msg
    assert expected in msg, msg


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_shipped_configs_are_valid():
    from lopt.studies.config import is_study, load_study

    for path in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = load_study(path) if is_study(path) else load_config(path)
        assert cfg.name == path.stem


def test_schema_file_is_current():
    import json

    from lopt.config import json_schema

    shipped = json.loads((REPO / "configs" / "schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: lopt schema > configs/schema.json"


def test_cli_rejects_before_any_jax_work(tmp_path):
    """The CLI validates first: a bad config exits 2 without importing JAX."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["meta_train"]["sigma"] = 0
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    code = (
        "import sys; from lopt.cli import main; rc = main(['meta-train', '--config', sys.argv[1]]);"
        "assert 'jax' not in sys.modules, 'jax imported before validation'; sys.exit(rc)"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(cfg_path)], capture_output=True, text=True,
                          env=sandbox_env(tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{cfg_path}" in proc.stderr and "meta_train.sigma" in proc.stderr
    assert time.perf_counter() - start < 20


def test_snakemake_rejects_bad_config_at_parse_time(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["meta_train"]["estimator"] = "bogus"
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--configfile", str(cfg_path)],
        cwd=REPO, capture_output=True, text=True, env=sandbox_env(tmp_path), check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(cfg_path) in out and "meta_train.estimator" in out


@pytest.mark.parametrize(
    ("configfile", "overrides", "fragments"),
    [
        ("configs/smoke.yaml", ["seed=3"], ["--config seed: unexpected key", "none (quick applies to study configs only)"]),
        ("configs/smoke.yaml", ["quick=1"], ["--config quick: unexpected key"]),
        ("configs/paper/nres_lorenz.yaml", ["quick=1", "seeds=2", "name=x"],
         ["--config name, seeds: unexpected key", "allowed --config keys: quick."]),
        ("configs/paper/nres_lorenz.yaml", ["quick=maybe"], ["--config quick='maybe'", "allowed values"]),
    ],
    ids=["experiment", "quick-on-experiment", "study", "study-quick-value"],
)
def test_snakemake_rejects_unexpected_config_overrides(tmp_path, configfile, overrides, fragments):
    """`--config KEY=VALUE` is never silently ignored: unknown keys fail at parse time."""
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--configfile", configfile, "--config", *overrides],
        cwd=REPO, capture_output=True, text=True, env=sandbox_env(tmp_path), check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for fragment in fragments:
        assert fragment in out, out
