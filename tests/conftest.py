"""Shared fixtures: no network, W&B offline into a temp dir, deterministic JAX on CPU."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["DVC_NO_ANALYTICS"] = "1"


def pytest_configure(config):
    """One JAX persistent compilation cache per test session, shared by the xdist workers
    and every subprocess (lopt, Snakemake jobs) through the environment.

    Many tests compile the same program in several processes (a killed run and its
    resume, the hosts of a multi-host run, a pipeline re-run after ``lopt pull``); XLA's
    CPU compile dominates those tests. The cache starts empty every session, so nothing
    carries over between CI runs, and a cached executable is the very program a fresh
    compile produces (bit-identical results). A size limit turns on JAX's file lock, so
    concurrent processes never read a half-written entry.

    In-process tests also get the command line's CPU lowering of Threefry
    (:func:`lopt.runtime.setup`): the same bits, compiled about twice as fast.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # else set by the user, or by the xdist controller
        cache = tempfile.mkdtemp(prefix="lopt-test-jax-cache-")
        config._lopt_jax_cache = cache
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
        os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 * 2**30)
    # only now import JAX: it reads the cache settings above from the environment at import
    from lopt.threefry_cpu import use_unrolled_threefry_on_cpu

    use_unrolled_threefry_on_cpu()


def pytest_unconfigure(config):
    cache = getattr(config, "_lopt_jax_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


# The longest modules first (module totals of `--durations=0`, largest first): `make test`
# hands whole modules to its 2 workers (--dist loadscope, --no-loadscope-reorder keeps this
# order), and starting the long ones early lets the short ones fill the end instead of one
# worker running a long module alone for its last minutes. Unlisted modules follow
# in collection order; the order changes only when tests run, never what they check.
LONGEST_FIRST = (
    "test_meta_train.py", "test_estimators.py", "test_pipeline.py", "test_zoo_meta_train.py",
    "test_lopt_zoo.py", "test_studies.py", "test_kubernetes.py", "test_sharding.py", "test_release.py",
    "test_multihost.py", "test_task_zoo.py", "test_variance.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline with every directory it writes under ``tmp_path``."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        path = tmp_path / var.lower()
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wandb_dir"


def sandbox_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: venv on PATH, W&B offline under ``tmp_path``."""
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["WANDB_MODE"] = "offline"
    env.pop("WANDB_API_KEY", None)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        path = tmp_path / var.lower()
        path.mkdir(exist_ok=True)
        env[var] = str(path)
    env["DVC_NO_ANALYTICS"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """scikit-learn's digits prepared once per test session (split seed 0); read-only."""
    from lopt.data import prepare

    root = tmp_path_factory.mktemp("digits_data")
    prepare("digits", root, seed=0)
    return root
