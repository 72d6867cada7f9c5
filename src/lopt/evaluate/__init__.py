"""Evaluation: train held-out tasks with the learned optimizer and tuned optax baselines.

Protocol (one held-out task at a time):

1. **Tune** each baseline's learning rate on a log grid: every (rate, tuning seed)
   trains for the same step budget as the learned optimizer, all in one ``vmap``; the
   rate with the lowest mean final ``inner_valid`` loss wins (non-finite counts as
   +inf). Tuning seeds are disjoint from reporting seeds. Tuning runs evaluate that
   one split once, at the end: nothing else of them is kept (:func:`baseline_tuner`).
   A rate selected at an edge of the grid is flagged (summary ``lr_at_grid_edge``, a
   dagger in the tables, a line on stderr): that baseline may be under-tuned.
2. **Report**: the learned optimizer and each tuned baseline train ``num_seeds``
   fresh seeds (vmapped; the tuned baselines are branches of one compiled program per
   task, :func:`switched_program`, the learned optimizers of another); every
   ``eval_every`` steps the loss and accuracy on the ``train``, ``inner_valid`` and
   ``test`` splits are recorded, and every step's minibatch loss as split ``train_batch``.

Nothing a baseline computes depends on the learned optimizer, so the two halves run
apart: :func:`run_baselines` (``lopt baselines``, the workflow's ``baselines`` rule) tunes
and reports the baselines of one task into ``results/<name>/baselines/<task>/``, and
:func:`run_evaluation` (``lopt evaluate --baselines DIR``) trains the learned optimizer
and joins the two. A change to the learned optimizer or its meta-training then re-runs
only its own runs, and on a cluster the baselines run beside meta-training. Without ``--baselines``
``lopt evaluate`` computes both, with the same programs and so the same numbers.

Outputs are tidy tables (one observation per row) so analysis never re-runs training.

Modules: :mod:`~lopt.evaluate.runs` (the compiled training runs and their tidy curves),
:mod:`~lopt.evaluate.baselines` (tuning), :mod:`~lopt.evaluate.summary` (final losses,
speed-ups) and :mod:`~lopt.evaluate.jobs` (the CLI's jobs: config in, files out).
"""

from lopt.evaluate.baselines import (
    TUNE_SEED_SHIFT,
    baseline_factory,
    baseline_tuner,
    grid_edge_selections,
    tune_and_report_baselines,
    tune_baseline,
)
from lopt.evaluate.jobs import (
    BASELINE_TABLES,
    BaselinesError,
    baseline_settings,
    load_baselines,
    run_baselines,
    run_evaluation,
)
from lopt.evaluate.runs import (
    EVAL_SPLITS,
    SELECTION_SPLIT,
    curves_program,
    report_curves,
    report_learned,
    switched_program,
    tidy_curves,
    train_curves,
    training_run,
)
from lopt.evaluate.summary import (
    summarise,
    task_metrics,
)

__all__ = [
    "BASELINE_TABLES",
    "EVAL_SPLITS",
    "SELECTION_SPLIT",
    "TUNE_SEED_SHIFT",
    "BaselinesError",
    "baseline_factory",
    "baseline_settings",
    "baseline_tuner",
    "curves_program",
    "grid_edge_selections",
    "load_baselines",
    "report_curves",
    "report_learned",
    "run_baselines",
    "run_evaluation",
    "summarise",
    "switched_program",
    "task_metrics",
    "tidy_curves",
    "train_curves",
    "training_run",
    "tune_and_report_baselines",
    "tune_baseline",
]
