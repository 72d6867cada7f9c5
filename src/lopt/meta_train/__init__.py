"""Meta-training: estimator + optax outer optimizer, checkpointed, resumable, tracked.

One outer step is a single jitted pure function

    meta_step(MetaState, data) -> (MetaState, metrics)

that draws its PRNG key as ``fold_in(fold_in(PRNGKey(seed), KEY_STEPS), step)``, asks the estimator for a
meta-gradient over one truncation window of every particle, clips it by global norm
and applies the outer optimizer (Adam by default). Because the key is a function of
the step and the state holds everything else, a run resumed from a checkpoint
computes bit-identical meta-parameters on the same machine.

Outputs (``out_dir``):
    checkpoints/        run state: orbax steps of the whole MetaState every
                        ``checkpoint_every``, ``fingerprint.json``, and
                        ``metrics.live.csv``, the per-step log appended as training
                        goes (kept with the checkpoints it belongs to); in
                        ``<compute.checkpoint_root>/<name>/`` instead when that is set
    metrics.csv         final: one row per outer step (step, meta_loss, grad_norm, ...)
    model_card.md       final: architecture card + how it was meta-trained
    meta_params.npz     final: meta-parameters (+ .json with sha256 and config)

The final files are written only when training completes, so a pipeline that sees them
sees a finished run. A resume continues only from checkpoints whose fingerprint (every
config field that changes the computation; ``outer_steps`` and logging cadence excluded,
so a run can be extended) matches; stale checkpoints are moved aside, never deleted.

Modules: :mod:`~lopt.meta_train.step` (the state, the trainer and the pure meta-step),
:mod:`~lopt.meta_train.run_dir` (fingerprints, stale runs moved aside, publishing),
:mod:`~lopt.meta_train.log` (the per-step CSV log) and :mod:`~lopt.meta_train.run` (the
outer loop).
"""

from lopt.meta_train.log import METRIC_FIELDS, MetricsLog
from lopt.meta_train.run import meta_train
from lopt.meta_train.run_dir import (
    LIVE_METRICS,
    PARTICLE_LAYOUT,
    PUBLISHED,
    checkpoint_dir,
    fingerprint,
    prepare_checkpoint_dir,
)
from lopt.meta_train.step import (
    KEY_ESTIMATOR_INIT,
    KEY_STEPS,
    KEY_THETA,
    MetaState,
    MetaTrainer,
    build_trainer,
    make_meta_step,
    meta_state_shardings,
    meta_step_fn,
    outer_optimizer,
    particle_leaves,
)

__all__ = [
    "KEY_ESTIMATOR_INIT", "KEY_STEPS", "KEY_THETA", "LIVE_METRICS", "METRIC_FIELDS", "PARTICLE_LAYOUT",
    "PUBLISHED", "MetaState", "MetaTrainer", "MetricsLog", "build_trainer", "checkpoint_dir", "fingerprint", "make_meta_step",
    "meta_state_shardings", "meta_step_fn", "meta_train", "outer_optimizer", "particle_leaves",
    "prepare_checkpoint_dir",
]
