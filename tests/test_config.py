"""Malformed configs fail at once, naming the file, the key path and the allowed values."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, sandbox_env

from lopt.config import ConfigError, load_config, validate_config

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
    "multiple of eval_every",
    "low (2.0) must be < high",
    "num_heads (3) must divide",
    "gpu_model ('a100') needs gpus >= 1",
}

# (key path to corrupt, new value, text the message must contain besides file and key)
MALFORMED = [
    ("lopt.features", ["grad", "param", "grad"], "lists grad more than once; give each at most once"),
    ("meta_train.task", {"hidden_sizes": [4]}, "kind: Field required (allowed values: 'image_mlp', 'image_conv'"),
    ("meta_train.estimator", "sgd-es", "'tbptt', 'full_es', 'tes', 'pes', 'gpes' or 'nres'"),
    ("meta_train.noise_reuse_steps", 10, "applies to estimator 'gpes' only"),
    ("meta_train.num_particles", 7, "even"),
    ("meta_train.num_particles", "many", "valid integer"),
    ("meta_train.sigma", -0.1, "greater than 0"),
    ("meta_train.trunc_length", 50, "50 must be <= horizon (20)"),
    ("meta_train.task.dataset", "imagenet", "'digits'"),
    ("meta_train.task.activation", "swish", "'relu'"),
    ("meta_train.task.hidden_size", [3], "allowed keys: activation, batch_size"),
    ("meta_train.outer_stepz", 10, "allowed keys:"),
    ("lopt.momentum_decays", [0.9, 1.5], "less than 1"),
    ("evaluation.baselines", ["sgd", "lamb"], "'adamw', 'nadamw', 'rmsprop', 'lion' or 'adafactor'"),
    ("evaluation.eval_every", 7, "multiple of eval_every"),
    ("evaluation.baselines", ["adam", "sgd", "adam"], "lists adam more than once; give each at most once"),
    ("evaluation.schedules", ["cosine", "cosine"], "lists cosine more than once"),
    ("evaluation.tasks", [], "at least 1 item"),
    ("evaluation.lr_grid.low", 2.0, "low (2.0) must be < high"),
    ("tracking.mode", "cloud", "'online', 'offline' or 'disabled'"),
    ("name", "x", "at least 2 characters"),
    ("name", _DELETE, "Field required"),
    ("data.valid_fraction", 0.7, "less than 0.5"),
    ("meta_train.devices", 3, "must be a multiple of 2 x devices"),
    ("meta_train.devices", "every", "'all'"),
    # union members: one line at the real key, listing both alternatives (no `.constrained-int`)
    ("meta_train.devices", 0, "Input should be greater than or equal to 1 or 'all'"),
    ("meta_train.devices", True, "Input should be a valid integer or 'all' (got True)"),
    ("compute.distributed.local_device_ids", "some", "Input should be a valid list or 'all'"),
    # strict scalars: no bool -> int / float, no string -> bool, no inf / nan
    ("meta_train.checkpoint_every", True, "valid integer (got True)"),
    ("meta_train.outer_steps", "20", "valid integer (got '20')"),
    ("meta_train.step_unlock", "no", "valid boolean (got 'no'; allowed values: true, false)"),
    ("lopt.zero_init_output", 1, "valid boolean"),
    ("meta_train.sigma", True, "valid number (got True)"),
    ("meta_train.outer_lr", float("inf"), "finite number (got inf)"),
    ("meta_train.grad_clip", float("nan"), "finite number"),
    ("lopt.step_mult", float("-inf"), "finite number"),
    ("resources.meta_train.gpu_model", "a100", "gpu_model ('a100') needs gpus >= 1"),
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
    # key paths are the user's keys: no pydantic union-member labels
    assert not re.search(r"constrained-|literal\[|list\[|function-", msg), msg


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML") as err:
        load_config(bad)
    assert f'in "{bad}", line 1' in str(err.value) and "<unicode string>" not in str(err.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty .or only comments.; expected a mapping"):
        load_config(empty)
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: not a UTF-8 text file \(byte 6: invalid start byte\)"):
        load_config(binary)
    from lopt.studies.config import is_study

    assert not is_study(binary)  # the CLI asks first: not a study, so load_config reports it


def test_a_study_without_its_kind_is_told_to_add_it(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "paper" / "pes_influence.yaml").read_text())
    raw.pop("kind")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).endswith("(this looks like a paper study, configs/paper/*.yaml: add `kind: study` at the top)")


def test_shipped_configs_are_valid():
    from lopt.studies.config import is_study, load_study

    paths = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "paper").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        cfg = load_study(path) if is_study(path) else load_config(path)
        assert cfg.name == path.stem
        if is_study(path):  # the quick variant re-validates the dumped study (lr_decay's int keys)
            assert load_study(path, quick=True).name == f"{path.stem}_quick"


SMOKE = (REPO / "configs" / "smoke.yaml").read_text()


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("word", ["off", "on", "auto", "Off", "ON"])
def test_yaml_1_1_boolean_words_are_strings(tmp_path, word):
    """`mode: off` is the allowed value 'off', not YAML 1.1's boolean False."""
    path = _write(tmp_path, SMOKE + f"compute:\n  distributed:\n    mode: {word}\n")
    if word in ("Off", "ON"):  # strings now, but not allowed values: the message says which are
        with pytest.raises(ConfigError, match=r"compute\.distributed\.mode: Input should be 'auto', 'on' or 'off'"):
            load_config(path)
        return
    assert load_config(path).compute.distributed.mode == word


def test_yaml_booleans_and_floats(tmp_path):
    """true/false stay booleans; yes/no reach a bool field as strings and are rejected by
    name; 1e-3 (YAML 1.2 float, a string to YAML 1.1) is a float."""
    text = SMOKE.replace("  log_every: 5\n", "  log_every: 5\n  step_unlock: false\n  normalize_grad: TRUE\n  outer_lr: 1e-3\n  sigma: 2E-2\n")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.meta_train.step_unlock is False and cfg.meta_train.normalize_grad is True
    assert cfg.meta_train.outer_lr == 1e-3 and cfg.meta_train.sigma == 2e-2
    for word in ("no", "yes", "off", "on"):
        bad = _write(tmp_path, SMOKE.replace("  log_every: 5\n", f"  log_every: 5\n  step_unlock: {word}\n"))
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert f"{bad}: invalid config" in str(info.value)
        assert f"  meta_train.step_unlock: Input should be a valid boolean (got '{word}'; allowed values: true, false)" in str(info.value)


def test_duplicate_keys_are_errors(tmp_path):
    """YAML keeps the last of two equal keys silently; a config file must not."""
    lines = SMOKE.splitlines()
    seed_line = lines.index("seed: 0") + 1
    path = _write(tmp_path, SMOKE + "seed: 7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: duplicate key 'seed' at line {len(lines) + 1} (already given at line {seed_line}); "
        "each key may appear only once"
    )
    # a second block of a section (the first would be dropped whole), a nested key, a flow mapping
    meta_line = lines.index("meta_train:") + 1
    for text, fragment in [
        (SMOKE + "meta_train:\n  outer_steps: 5\n", f"duplicate key 'meta_train' at line {len(lines) + 1} (already given at line {meta_line})"),
        (SMOKE.replace("  horizon: 20\n", "  horizon: 20\n  horizon: 40\n"), "duplicate key 'meta_train.horizon'"),
        (SMOKE.replace("{low: 0.001,", "{low: 0.001, low: 0.01,"), "duplicate key 'evaluation.lr_grid.low' at line"),
        (SMOKE.replace("      distribution: in\n", "      distribution: in\n      distribution: out\n"),
         "duplicate key 'evaluation.tasks[0].distribution'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {fragment}")):
            load_config(_write(tmp_path, text))
    # YAML merge keys may still be overridden: that is what `<<` is for
    merged = SMOKE.replace("meta_train:\n", "defaults: &d {outer_steps: 20}\nmeta_train:\n  <<: *d\n")
    with pytest.raises(ConfigError, match="  defaults: Extra inputs"):  # not a duplicate-key error
        load_config(_write(tmp_path, merged))


def test_duplicate_keys_in_a_study_are_errors(tmp_path):
    from lopt.studies.config import is_study, load_study

    text = (REPO / "configs" / "paper" / "toy_schedule.yaml").read_text()
    assert "\nseeds:" in text
    path = _write(tmp_path, text + "seeds: 1\n", "toy_schedule.yaml")
    for call in (is_study, load_study):  # is_study too: `kind` could be the repeated key
        with pytest.raises(ConfigError, match=re.escape(f"{path}: duplicate key 'seeds' at line")):
            call(path)
    kind = _write(tmp_path, text + "kind: experiment\n", "kind.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'kind'"):
        is_study(kind)


def test_study_cross_field_and_kind_errors_name_the_keys(tmp_path):
    from lopt.studies.config import is_study, load_study

    text = (REPO / "configs" / "paper" / "pes_influence.yaml").read_text()
    assert "  num_positive: 10\n" in text and "\nkind: study\n" in text
    path = _write(tmp_path, text.replace("  num_positive: 10\n", "  num_positive: 50\n"), "pi.yaml")
    with pytest.raises(ConfigError, match=re.escape("  system.num_positive: 50 must be <= dim (23)")):
        load_study(path)
    path = _write(tmp_path, text.replace("\nkind: study\n", "\nkind: studyy\n"), "pi.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: kind: 'studyy' is not allowed; the only value is 'study'")):
        is_study(path)


def test_study_scalars_are_strict(tmp_path):
    from lopt.studies.config import load_study

    text = (REPO / "configs" / "paper" / "toy_schedule.yaml").read_text()
    for old, new, message in [
        ("seeds: ", "seeds: true #", "  seeds: Input should be a valid integer (got True)"),
        ("seeds: ", "seeds: .inf #", "  seeds: Input should be a valid integer (got inf)"),
        ("analysis:\n", "analysis:\n  log_loss: no\n", "  analysis.log_loss: Input should be a valid boolean (got 'no'"),
        ("theta0: [-6.0, 3.0]", "theta0: [-6.0, .nan]", "  analysis.surface.theta0[1]: Input should be a finite number (got nan)"),
    ]:
        assert old in text
        path = _write(tmp_path, text.replace(old, new, 1), "toy.yaml")
        with pytest.raises(ConfigError) as info:
            load_study(path)
        assert f"{path}: invalid study config" in str(info.value) and message in str(info.value), str(info.value)


def test_gpu_model_needs_gpus():
    """A lone gpu_model would make the SLURM plugin request --gpus=<model>:1."""
    from lopt.config import StageResources

    assert StageResources(gpus=2, gpu_model="a100").snakemake()["gpu_model"] == "a100"
    assert StageResources(gpus=2, gpu_model="a100").snakemake()["gpu"] == 2
    assert "gpu" not in StageResources().snakemake() and "gpu_model" not in StageResources().snakemake()
    raw = yaml.safe_load(SMOKE)
    raw["resources"] = {"evaluate": {"gpu_model": "h100", "gpus": 0}}
    with pytest.raises(ConfigError, match=r"  resources\.evaluate: gpu_model \('h100'\) needs gpus >= 1 \(got gpus: 0\)"):
        validate_config(raw, "exp.yaml")


def test_multi_node_gpus_are_requested_per_node():
    """sbatch --gpus=N is the job's total, which SLURM may spread unevenly over the nodes;
    JAX's multi-host mesh needs the same local devices on every host, so nodes > 1 asks
    for --gres=gpu:<gpus/nodes> (per node) and gpus must divide evenly."""
    from lopt.config import StageResources

    two_hosts = StageResources(gpus=16, nodes=2).snakemake()
    assert two_hosts["gres"] == "gpu:8" and "gpu" not in two_hosts and "gpu_model" not in two_hosts
    assert StageResources(gpus=4, nodes=2, gpu_model="a100").snakemake()["gres"] == "gpu:a100:2"
    assert "gres" not in StageResources(gpus=4).snakemake()  # one host: --gpus as before
    assert "gres" not in StageResources(nodes=2).snakemake()  # CPU-only hosts ask for no GPU
    raw = yaml.safe_load(SMOKE)
    raw["resources"] = {"meta_train": {"nodes": 2, "gpus": 3}}
    with pytest.raises(ConfigError, match=r"  resources\.meta_train: gpus \(3\) must be a multiple of nodes \(2\)"):
        validate_config(raw, "exp.yaml")


def test_schema_file_is_current():
    import json

    from lopt.config import json_schema

    shipped = json.loads((REPO / "configs" / "schema.json").read_text())
    assert shipped == json_schema(), "regenerate with: lopt schema > configs/schema.json"


def test_schema_piped_into_a_reader_that_stops_early_is_not_an_error():
    """`lopt schema | head`: a closed pipe ends the command quietly, status 0."""
    import fcntl
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the ~40 kB schema cannot fit: the write blocks
    proc = subprocess.Popen([sys.executable, "-m", "lopt.cli", "schema"], stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    assert os.read(read_end, 1) == b"{"
    os.close(read_end)  # like head: the blocked write now fails with EPIPE
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


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


def test_quick_on_an_experiment_config_is_refused(capsys):
    from lopt.cli import main

    smoke = REPO / "configs" / "smoke.yaml"
    capsys.readouterr()
    assert main(["validate", "--config", str(smoke), "--quick"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {smoke}: --quick applies to study configs (kind: study) "
                                               "only; an experiment config has no quick variant")


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


def test_changed_keys_names_the_leaves_that_differ():
    """The stale-output message after a pull names the edited keys, not whole sections."""
    from lopt.config import changed_keys, load_config

    cfg = load_config(REPO / "configs" / "default.yaml").to_dict()
    edited = copy.deepcopy(cfg)
    edited["meta_train"]["sigma"] = 0.5
    edited["evaluation"]["lr_grid"]["num"] = 3
    del edited["seed"]
    assert changed_keys(cfg, edited) == ["evaluation.lr_grid.num", "meta_train.sigma", "seed"]
    assert changed_keys(cfg, copy.deepcopy(cfg)) == []
    assert changed_keys({"a": [1, 2]}, {"a": [1, 3]}) == ["a"]  # lists compare whole


def test_cli_refuses_an_out_path_that_is_a_file_before_computing(tmp_path, capsys):
    """`--out` naming a file would fail only when the results are written, after the
    compute is spent (and with a traceback); it is refused up front, in one line."""
    from lopt.cli import main

    out = tmp_path / "taken"
    out.write_text("")
    argv = ["baselines", "--config", str(REPO / "configs" / "smoke.yaml"), "--task", "digits_mlp16", "--out", str(out)]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 5  # nothing was trained
    assert capsys.readouterr().err == f"error: --out {out}: exists and is not a directory\n"


def test_lopt_pull_outside_a_dvc_repository_is_one_line(tmp_path, monkeypatch, capsys):
    from lopt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pull", "data"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} is not inside a DVC repository") and "Traceback" not in err
