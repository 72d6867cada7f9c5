"""Saved optimizers stay usable: an old run's checkpoint evaluates, references resolve.

``tests/fixtures/old_run/`` holds ``meta_params.npz`` + ``.json`` written by lopt at
commit 7550d35 (before the learned-optimizer zoo existed; its metadata has no
``features`` / ``nominal`` keys) from ``configs/smoke.yaml``, and ``expected_curves.json``:
the losses that code produced when training the smoke evaluation task with it. Current
code must load the file and reproduce those losses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from lopt.artifacts import resolve_checkpoint, restamp
from lopt.config import ImageMLPTaskConfig
from lopt.evaluate import train_curves
from lopt.optimizers import load_pretrained

FIXTURE = REPO / "tests" / "fixtures" / "old_run"




def test_old_checkpoint_still_evaluates_to_the_same_losses(digits_root):
    from lopt.tasks import build_task

    expected = json.loads((FIXTURE / "expected_curves.json").read_text())
    pretrained = load_pretrained(FIXTURE / "meta_params.npz")
    assert pretrained.lopt.name == "mlp_lopt" and pretrained.metadata["outer_steps"] == 20
    task, data = build_task(ImageMLPTaskConfig(**expected["task"]), digits_root, 512)
    opt = pretrained.to_optax(expected["num_steps"])
    curves = train_curves(
        task, lambda _: opt, jnp.zeros((1,)), np.asarray(expected["seeds"]), data,
        expected["num_steps"], expected["eval_every"],
    )
    # same float32 program on the same data: equal up to XLA fusion differences
    np.testing.assert_allclose(curves["train_batch"][0], expected["train_batch"], rtol=1e-5)
    np.testing.assert_allclose(curves["test_loss"][0], expected["test_loss"], rtol=1e-5)
    assert curves["train_batch"][0][:, -1].mean() < curves["train_batch"][0][:, 0].mean()


def test_references_resolve_to_a_local_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    assert resolve_checkpoint(run / "meta_params.npz") == run / "meta_params.npz"
    assert resolve_checkpoint(run) == run / "meta_params.npz"  # a directory holding one
    monkeypatch.chdir(tmp_path)  # not a DVC repository: nothing to pull
    with pytest.raises(FileNotFoundError, match="DVC-tracked path") as info:
        resolve_checkpoint(tmp_path / "nope" / "meta_params.npz")
    assert "wandb:<entity>/<project>/<name>:<version>" in str(info.value)


def test_tracked_checkpoint_is_pulled_from_the_first_remote_that_has_it(tmp_path, monkeypatch):
    """Default remote unreachable -> the next remote; none has it -> each one's failure named."""
    import subprocess
    import sys

    from lopt.artifacts import remotes

    def dvc(*args):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, check=True, capture_output=True)

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURE, tmp_path / "meta")
    sha = (tmp_path / "meta" / "meta_params.npz").read_bytes()
    dvc("init", "--no-scm")
    dvc("remote", "add", "-d", "lab", str(tmp_path / "unreachable"))
    dvc("remote", "add", "shipped", str(tmp_path / "shipped"))
    dvc("add", "meta")
    dvc("push", "-r", "shipped")
    assert remotes(tmp_path) == ["lab", "shipped"]
    shutil.rmtree(tmp_path / "meta")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    assert resolve_checkpoint("meta") == Path("meta") / "meta_params.npz"
    assert (tmp_path / "meta" / "meta_params.npz").read_bytes() == sha

    # `lopt pull` the same way: the unreachable remote's DVC error is held back when the
    # next remote succeeds, and shown, named by remote, when every remote fails
    def lopt_pull():
        return subprocess.run([sys.executable, "-m", "lopt.cli", "pull", "meta"], cwd=tmp_path, check=False, capture_output=True, text=True)

    shutil.rmtree(tmp_path / "meta")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    proc = lopt_pull()
    assert proc.returncode == 0, proc.stderr
    assert "remote 'lab' failed; trying remote 'shipped'" in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    assert (tmp_path / "meta" / "meta_params.npz").read_bytes() == sha
    shutil.rmtree(tmp_path / "meta")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    shutil.move(tmp_path / "shipped", tmp_path / "shipped.away")
    proc = lopt_pull()
    assert proc.returncode != 0
    assert "remote 'lab' had failed with:" in proc.stderr and proc.stderr.count("ERROR") >= 2, proc.stderr
    shutil.move(tmp_path / "shipped.away", tmp_path / "shipped")

    shutil.rmtree(tmp_path / "meta", ignore_errors=True)
    shutil.rmtree(tmp_path / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(tmp_path / "shipped")
    with pytest.raises(FileNotFoundError, match="failed from every remote") as info:
        resolve_checkpoint("meta")
    assert "remote 'lab'" in str(info.value) and "remote 'shipped'" in str(info.value)


def test_wandb_reference_without_network_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("LOPT_WANDB_INIT_TIMEOUT", "5")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    with pytest.raises(FileNotFoundError, match="network access and a W&B API key"):
        resolve_checkpoint("wandb:lab/lopt/pretrained-default:v0", cache_dir=tmp_path / "cache")


def test_corrupt_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = bytearray((run / "meta_params.npz").read_bytes())
    raw[-40] ^= 0xFF
    (run / "meta_params.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt .its sha256 differs"):
        load_pretrained(run / "meta_params.npz")


@pytest.mark.parametrize(
    "optimizer,expected",
    [
        ({"kind": "bogus"}, "  optimizer.kind: unknown learned-optimizer kind (allowed values: mlp_lopt, adafac_mlp_lopt"),
        ({"kind": "mlp_lopt", "hiden_size": 8}, "  optimizer.hiden_size: Extra inputs are not permitted (allowed keys: "),
    ],
    ids=["unknown-kind", "misspelled-key"],
)
def test_sidecar_with_a_bad_architecture_names_the_key_and_allowed_values(tmp_path, optimizer, expected):
    from lopt.checkpoint import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    sidecar = run / "meta_params.npz.json"
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), optimizer=optimizer)))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(run / "meta_params.npz")
    lines = str(info.value).splitlines()
    assert lines[0] == f"{sidecar}: 'optimizer' is not a valid lopt config", lines
    assert lines[1].startswith(expected) and "pydantic" not in str(info.value), lines


def test_restamp_shares_the_newest_time_and_never_dates_a_set_past_its_products(tmp_path):
    """Pulled files share one time, the newest of theirs: not "now", which would make an
    up-to-date input newer than the outputs a run made from it (Snakemake would re-run)."""
    import os

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    files = [data / "a.npz", data / "sub" / "b.json", tmp_path / "single.txt"]
    for i, path in enumerate(files):
        path.write_text(str(i))
        os.utime(path, (1000.0 + i, 1000.0 + i))
    product = tmp_path / "product.csv"
    product.write_text("made from data")
    os.utime(product, (5000.0, 5000.0))

    assert restamp([data, files[2]]) == 3
    assert {p.stat().st_mtime for p in files} == {1002.0}
    assert restamp([data, files[2]]) == 3  # a second pull that fetched nothing
    assert {p.stat().st_mtime for p in files} == {1002.0}
    assert product.stat().st_mtime == 5000.0
    restamp([data], when=7000.0)
    assert {p.stat().st_mtime for p in files[:2]} == {7000.0}


def test_temporaries_a_kill_leaves_in_dvc_outputs_are_never_versioned():
    """A SIGKILL skips the clean-up of lopt.atomic's and lopt.data.prepare's temporaries
    (and of orbax's staging directories); inside DVC-tracked outputs (data/, results/) a
    later `dvc commit` would version them. .dvcignore keeps them out, and real files in."""
    import subprocess
    import sys

    from conftest import REPO

    paths = ["data/.digits.tmp-52b2572a/train.npz", "results/default/tables/.summary.csv.tmp",
             "results/default/meta/checkpoints/400.orbax-checkpoint-tmp-1733/x", "results/default/tables/summary.csv",
             "data/digits/train.npz"]
    proc = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", *paths], cwd=REPO, capture_output=True,
                          text=True, check=False, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.stdout.split() == paths[:3], proc.stdout + proc.stderr
