"""Several meta-training seeds (``num_meta_seeds``): which seeds, where their runs go, and the
table that puts their results side by side (lopt.analysis.meta_seeds).

The table's inputs are exact hand-made summaries, so expected values are plain arithmetic
compared to float rounding. The end-to-end run (Snakemake plans and runs only the new
seeds) is ``test_pipeline.py::test_more_meta_seeds_train_and_evaluate_only_the_new_optimizers``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lopt.analysis.meta_seeds import group_statistics, meta_seed_frame, meta_seed_table
from lopt.config import ConfigError, load_config
from lopt.meta_train.run_dir import checkpoint_dir

REPO = Path(__file__).resolve().parents[1]


def _cfg(**top):
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    return cfg.model_copy(update=top)


def test_meta_seeds_follow_the_config_seed():
    cfg = _cfg(seed=5, num_meta_seeds=3)
    assert cfg.meta_seeds() == [5, 6, 7]
    assert cfg.with_meta_seed(7).seed == 7 and cfg.with_meta_seed(7).evaluation == cfg.evaluation
    assert cfg.meta_seed_dir(5) == "." and cfg.meta_seed_dir(6) == "meta_seeds/seed6"
    with pytest.raises(ConfigError, match=r"meta-seed 8 is not one of .*\[5, 6, 7\]"):
        cfg.with_meta_seed(8)
    assert load_config(REPO / "configs" / "smoke.yaml").meta_seeds() == [0]  # default: one


def test_meta_seeds_never_share_a_checkpoint_root_directory(tmp_path):
    cfg = _cfg(num_meta_seeds=2)
    out = tmp_path / "results" / "smoke" / "meta"
    assert checkpoint_dir(cfg, out, 1) == out / "checkpoints"  # the job's own directory: already apart
    rooted = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"checkpoint_root": str(tmp_path / "ck")})})
    assert checkpoint_dir(rooted, out) == tmp_path / "ck" / "smoke"
    assert checkpoint_dir(rooted, out, 0) == tmp_path / "ck" / "smoke"  # the config's own seed: as before
    assert checkpoint_dir(rooted, out, 1) == tmp_path / "ck" / "smoke.seed1"  # "." is in no experiment name


def test_cli_refuses_a_meta_seed_outside_the_experiment(capsys):
    from lopt.cli import main

    assert main(["meta-train", "--config", str(REPO / "configs" / "smoke.yaml"), "--meta-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--meta-seed 1 is not one of the experiment's meta-training seeds [0]" in err


def test_num_meta_seeds_must_be_positive():
    from lopt.config import validate_config
    from lopt.config.loader import load_yaml

    raw = load_yaml(REPO / "configs" / "smoke.yaml") | {"num_meta_seeds": 0}
    with pytest.raises(ConfigError, match="num_meta_seeds"):
        validate_config(raw, "smoke.yaml")


def _summary(learned: dict[str, float]) -> pd.DataFrame:
    # test-split final losses: the baselines are the same for every meta-seed
    baselines = {("t_in", "in"): {"adam": 0.4, "sgd": 0.8}, ("t_out", "out"): {"adam": 0.6, "sgd": 0.5}}
    rows = []
    for (task, dist), per_opt in baselines.items():
        for opt, loss in per_opt.items() | {"lopt": learned[task]}.items():
            rows.append({"task": task, "distribution": dist, "optimizer": opt, "split": "test", "loss_mean": loss})
    return pd.DataFrame(rows)


def _metrics(speedups: dict[str, tuple[float, bool]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"task": t, "optimizer": "lopt", "speedup": s, "censored": c} for t, (s, c) in speedups.items()
    ] + [{"task": t, "optimizer": "adam", "speedup": 0.8, "censored": False} for t in speedups])


def _frame() -> pd.DataFrame:
    summaries = {0: _summary({"t_in": 0.2, "t_out": 1.0}), 1: _summary({"t_in": 0.6, "t_out": 0.25})}
    metrics = {0: _metrics({"t_in": (2.0, False), "t_out": (0.5, False)}),
               1: _metrics({"t_in": (4.0, True), "t_out": (1.5, False)})}
    return meta_seed_frame(summaries, metrics)


def test_each_seed_is_compared_with_the_best_tuned_baseline():
    frame = _frame().set_index(["meta_seed", "task"])
    # t_in: best baseline adam 0.4; t_out: best baseline sgd 0.5
    assert frame.loc[(0, "t_in"), "ratio"] == pytest.approx(0.2 / 0.4, rel=1e-12)
    assert frame.loc[(1, "t_in"), "ratio"] == pytest.approx(0.6 / 0.4, rel=1e-12)
    assert frame.loc[(0, "t_out"), "ratio"] == pytest.approx(1.0 / 0.5, rel=1e-12)
    assert frame.loc[(1, "t_out"), "ratio"] == pytest.approx(0.25 / 0.5, rel=1e-12)
    assert frame.loc[(1, "t_out"), "best_baseline"] == "sgd"
    assert frame["win"].tolist() == [True, False, False, True]
    assert frame.loc[(1, "t_in"), "speedup"] == 4.0 and frame.loc[(1, "t_in"), "censored"]


def test_table_gives_each_seed_their_mean_and_sample_sd():
    md = meta_seed_table(_frame())
    sd = np.std([0.5, 1.5], ddof=1)  # 0.707: the sample s.d. of two seeds
    # seed 1's speed-up on t_in is censored: its cell and the mean over it are lower bounds
    assert f"| in | t_in | 0.5 / 1.5 | 1 ± {sd:.2g} | 1 of 2 | 2 / 4+ | 3+ ± {np.std([2.0, 4.0], ddof=1):.2g} |" in md, md
    assert "| out | t_out | 2 / 0.5 | 1.25 ± " in md and "| 0.5 / 1.5 | 1 ± " in md, md
    # per group and seed: tasks, wins, median ratio, IQM speed-up (n = 2 trims nothing: the mean)
    assert "| all | 2 / 2 | 1 / 1 | 1.25 / 1 | 1.25 / 2.75+ | 2+ ± " in md, md
    assert "+: a lower bound" in md


def test_group_statistics_are_median_and_iqm_over_many_skewed_tasks():
    """Six tasks with skewed ratios and speed-ups, so mean, median and IQM all differ: the
    table's group row must be the median of the ratios and the IQM (trim 25 %: floor(6/4) = 1
    per end) of the speed-ups."""
    ratios = [0.5, 0.8, 1.0, 1.5, 4.0, 20.0]      # median (1.0 + 1.5) / 2 = 1.25; mean 4.63
    speedups = [0.1, 0.2, 0.9, 1.1, 1.3, 8.0]     # IQM mean(0.2, 0.9, 1.1, 1.3) = 0.875; median 1.0
    frame = pd.DataFrame({
        "meta_seed": 0, "task": [f"t{i}" for i in range(6)], "distribution": "out", "ratio": ratios,
        "win": [r < 1 for r in ratios], "best_baseline": "adam", "speedup": speedups, "censored": False,
    })
    g = group_statistics(frame).set_index(["distribution", "meta_seed"]).loc[("out", 0)]
    assert g["median_ratio"] == pytest.approx(1.25) and g["iqm_speedup"] == pytest.approx(0.875)
    assert (g["tasks"], g["wins"], g["diverged"], g["censored"]) == (6, 2, 0, 0)
    assert "| out | 6 | 2 | 1.25 | 0.875 | 0.875 |" in meta_seed_table(frame)


def test_a_seed_without_a_task_leaves_a_gap_not_a_shift():
    """Seed 1 lacks t_out (e.g. its evaluation failed): its column shows "-", and seed 2's value
    stays under seed 2."""
    summaries = {s: _summary({"t_in": 0.2 * (s + 1), "t_out": 1.0}) for s in (0, 1, 2)}
    summaries[1] = summaries[1][summaries[1]["task"] != "t_out"]
    metrics = {s: _metrics({"t_in": (1.0, False), "t_out": (float(s + 1), False)}) for s in (0, 1, 2)}
    md = meta_seed_table(meta_seed_frame(summaries, metrics))
    assert "| out | t_out | 2 / - / 2 | 2 ± 0 | 0 of 2 | 1 / - / 3 | 2 ± 1.4 |" in md, md
    assert "| all | 2 / 1 / 2 |" in md, md


def test_a_diverged_seed_makes_the_mean_diverged_not_smaller():
    summaries = {0: _summary({"t_in": 0.2, "t_out": 1.0}), 1: _summary({"t_in": math.inf, "t_out": 0.25})}
    metrics = {s: _metrics({"t_in": (1.0, False), "t_out": (1.0, False)}) for s in (0, 1)}
    md = meta_seed_table(meta_seed_frame(summaries, metrics))
    assert "| in | t_in | 0.5 / diverged | diverged | 1 of 2 |" in md, md
    # a group median made infinite by a diverged task says so
    assert "| 0.5 / inf (1 diverged) |" in md, md
    groups = group_statistics(meta_seed_frame(summaries, metrics)).set_index(["distribution", "meta_seed"])
    assert groups.loc[("in", 1), "median_ratio"] == math.inf and groups.loc[("in", 1), "diverged"] == 1
