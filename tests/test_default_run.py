"""The default pipeline (`make run`) on 2 cores: time budget and the headline result.

Acceptance criterion of the foundation issue: the default Snakemake pipeline finishes
within 10 minutes on 2 CPU cores, and the NRES-meta-trained learned optimizer reaches a
lower mean final training loss over the held-out tasks than learning-rate-tuned SGD.
The time bound is the issue's stated budget, with ~3x headroom over the measured
~3.5 min (benchmarks/RESULTS.md), not a performance benchmark.

Opt-in (`make test-slow`): at 4-6 CPU-minutes it was a fifth of `make test`. The CI suite
checks the same claims through the release instead (tests/test_release.py): the released
tables show the headline, the current code re-computes the released evaluation (the
learned optimizer and tuned SGD), and it retraces the released meta-training run's first
steps from scratch, so a change to what the default run computes fails there.
"""

from __future__ import annotations

import pytest
from pipeline_utils import assert_lopt_beats_tuned_sgd, run_pipeline

from lopt.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_default_pipeline_beats_tuned_sgd(tmp_path):
    repo, _, seconds, _ = run_pipeline(tmp_path, "configs/default.yaml")
    assert seconds < 600, f"default pipeline took {seconds:.0f} s on 2 cores (budget 600 s)"
    cfg = load_config(repo / "configs" / "default.yaml")
    assert_lopt_beats_tuned_sgd(repo / "results" / "default", {t.name for t in cfg.evaluation.tasks})
    bench = list((repo / "results" / "default" / "benchmarks").glob("*.tsv"))
    assert {p.stem for p in bench} >= {"meta_train", "analyze"}
