"""Artifacts are written whole or not at all, and a rerun killed part-way leaves a set that
every reader refuses rather than new files beside old ones (kills simulated by an
exception at the write that would be cut short)."""

from __future__ import annotations

from pathlib import Path

import jax
import pandas as pd
import pytest

from lopt.atomic import replace_with, temporary_name, write_text
from lopt.config import validate_config
from lopt.evaluate import jobs


class Killed(Exception):
    pass


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.md"
    write_text(path, "old\n")

    def half_then_die(tmp: Path) -> None:
        tmp.write_text("ne")
        raise Killed

    with pytest.raises(Killed):
        replace_with(path, half_then_die)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
    assert temporary_name(path).name == ".table.md.tmp"  # hidden beside it: globbing *.md never sees it


def test_figures_keep_their_format_through_the_temporary_name(tmp_path):
    import matplotlib.pyplot as plt

    from lopt.analysis.figures import _save

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    _save(fig, tmp_path / "figures" / "f.png", dpi=50)
    assert (tmp_path / "figures" / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


RAW = {
    "name": "atomic",
    "meta_train": {"task": {"kind": "quadratic", "dim": 10}},
    "evaluation": {"tasks": [{"name": "quad", "task": {"kind": "quadratic"}}], "num_steps": 20,
                   "eval_every": 10, "num_seeds": 2, "baselines": ["sgd"],
                   "lr_grid": {"low": 0.01, "high": 1.0, "num": 3}},
}


def _die_after(monkeypatch, n: int) -> None:
    """The n+1-th table write of lopt.evaluate.jobs raises (a kill mid-way through the set)."""
    real, calls = jobs.write_csv, []

    def write_csv(path, df):
        if len(calls) == n:
            raise Killed
        calls.append(path)
        return real(path, df)

    monkeypatch.setattr(jobs, "write_csv", write_csv)


def test_baselines_rerun_killed_midway_is_refused_not_mixed(tmp_path, monkeypatch):
    cfg = validate_config(RAW)
    out = tmp_path / "baselines"
    jobs.run_baselines(cfg, "quad", out)
    settings = jobs.baseline_settings(cfg, "quad")
    jobs.load_baselines(out, settings)  # complete
    _die_after(monkeypatch, 1)  # the new curves.csv is written, then the kill
    with pytest.raises(Killed):
        jobs.run_baselines(cfg, "quad", out)
    # the old settings.json no longer vouches for tables it did not produce
    with pytest.raises(FileNotFoundError, match="settings.json: not found"):
        jobs.load_baselines(out, settings)


def test_evaluation_rerun_killed_midway_leaves_an_incomplete_set(tmp_path, monkeypatch):
    from lopt.analysis.results import EVAL_METRICS, read_result
    from lopt.optimizers.pretrained import Pretrained, from_config

    cfg = validate_config(RAW)
    lopt = from_config(cfg.lopt)
    pretrained = Pretrained(lopt, lopt.init(jax.random.PRNGKey(0)), {})
    out = tmp_path / "eval"
    jobs.run_evaluation(cfg, "quad", pretrained, out)
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "metrics.csv", "summary.csv", "sweep.csv"]
    _die_after(monkeypatch, 3)  # curves, sweep and summary rewritten; killed before metrics
    with pytest.raises(Killed):
        jobs.run_evaluation(cfg, "quad", pretrained, out)
    with pytest.raises(FileNotFoundError):  # analysis refuses the set instead of mixing two evaluations
        read_result(out / "metrics.csv", EVAL_METRICS)
    assert not list(out.glob(".*.tmp"))


def test_republishing_removes_the_completion_mark_first(tmp_path, monkeypatch):
    """An extended run republishes over a finished one: killed before the new weights are
    written, the old weights must not load beside the new log and card."""
    import lopt.checkpoint
    from lopt.meta_train.run_dir import publish
    from lopt.meta_train.step import build_trainer
    from lopt.optimizers import load_pretrained

    raw = dict(RAW, data={"root": str(tmp_path / "data")})
    cfg = validate_config(raw)
    trainer = build_trainer(cfg)
    state = trainer.init()
    out = tmp_path / "meta"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "metrics.live.csv").write_text("step,meta_loss\n1,0.5\n")
    publish(out, cfg, trainer, state, 1.0)
    assert load_pretrained(out / "meta_params.npz").metadata["outer_steps"] == 0

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(lopt.checkpoint, "save_meta_params", killed)
    (out / "checkpoints" / "metrics.live.csv").write_text("step,meta_loss\n1,0.5\n2,0.4\n")
    with pytest.raises(Killed):
        publish(out, cfg, trainer, state._replace(step=state.step + 2), 2.0)
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2]  # the new log ...
    with pytest.raises(FileNotFoundError, match="meta_params.npz.json: not found"):
        load_pretrained(out / "meta_params.npz")  # ... never beside the old weights
