"""Shared fixtures: no network, W&B offline into a temp dir, deterministic JAX on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["DVC_NO_ANALYTICS"] = "1"


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
