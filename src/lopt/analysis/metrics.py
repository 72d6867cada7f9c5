"""Per-run metrics from loss curves: steps to a target loss and speed-up over a reference.

Pure NumPy; nothing here runs training. A *curve* is a loss evaluated on an increasing
grid of steps ``steps[E]`` (e.g. ``0, eval_every, ..., num_steps``, as written by
:func:`lopt.evaluate.train_curves`), with any leading batch axes ``losses[..., E]``.

Conventions (shared by every function here):

Best-so-far
    Curves are made monotone before use: the loss "reached" by step ``s`` is the
    minimum over evaluation points ``<= s`` (:func:`best_so_far`, a running minimum),
    as VeLOdrome does (Metz et al. 2022, "VeLO", arXiv:2211.09760) -- an optimizer is
    credited with the best loss it has attained, not penalised for a late blip. (For
    :func:`steps_to_target` this changes nothing: the first step at or below a target
    is the same on the raw and on the best-so-far curve.)
Non-finite losses
    NaN (a diverged evaluation) is treated as ``+inf``: it never reaches any target
    and never improves the best-so-far loss -- the rule :mod:`lopt.evaluate` uses
    when tuning learning rates.
Evaluation-grid resolution
    Losses exist only at the evaluation steps. :func:`steps_to_target` does not
    interpolate: it reports the first *evaluated* step, an upper bound on the true
    first step within one ``eval_every``. :func:`speedup` interpolates linearly on the
    reference curve (the VeLOdrome choice), never extrapolates past it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_loss_at", "best_so_far", "speedup", "steps_to_target"]


def _check_curve(steps, losses) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` as a 1-D increasing float array and ``losses`` ``[..., E]``, NaN -> +inf."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D array, got shape {steps.shape}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    if losses.ndim == 0 or losses.shape[-1] != steps.size:
        raise ValueError(
            f"losses must have shape [..., E] with E = len(steps) = {steps.size}, got {losses.shape}"
        )
    return steps, np.where(np.isnan(losses), np.inf, losses)


def _unwrap(x: np.ndarray):
    """A 0-d array as a NumPy scalar, anything else unchanged."""
    return x[()] if x.ndim == 0 else x


def best_so_far(losses) -> np.ndarray:
    """Running minimum of ``losses[..., E]`` along the last axis, NaN treated as ``+inf``."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.minimum.accumulate(np.where(np.isnan(losses), np.inf, losses), axis=-1)


def steps_to_target(steps, losses, target):
    """The first evaluated step at which the loss is ``<= target``.

    Args:
        steps: ``[E]`` strictly increasing evaluation steps.
        losses: ``[..., E]`` losses at ``steps``.
        target: target loss, a float or an array broadcastable to ``losses.shape[:-1]``.

    Returns:
        ``[...]`` float steps (a NumPy scalar for a single curve); ``np.inf`` where the
        curve never gets to ``<= target``. No interpolation: the answer is the evaluation
        grid point, so it is exact only to within the grid spacing (an upper bound on
        the true first step). Equal counts as reached. NaN losses never reach.
    """
    steps, losses = _check_curve(steps, losses)
    target = np.asarray(target, dtype=np.float64)
    hit = losses <= target[..., None]
    first = np.argmax(hit, axis=-1)
    out = np.where(hit.any(axis=-1), steps[first], np.inf)
    return _unwrap(np.asarray(out, dtype=np.float64))


def best_loss_at(steps, losses, budget: float):
    """Best-so-far loss at step ``budget``: the minimum over evaluations at steps ``<= budget``.

    This is "the loss an optimizer reaches at its budget" that :func:`speedup` takes.

    Args:
        steps: ``[E]`` strictly increasing evaluation steps.
        losses: ``[..., E]`` losses at ``steps``.
        budget: a step ``>= steps[0]``; need not be an evaluation step (the last one
            before it counts).

    Returns:
        ``[...]`` losses (a NumPy scalar for a single curve); ``+inf`` where every
        evaluation up to ``budget`` is NaN.
    """
    steps, losses = _check_curve(steps, losses)
    if budget < steps[0]:
        raise ValueError(f"budget ({budget}) precedes the first evaluation step ({steps[0]})")
    last = int(np.searchsorted(steps, budget, side="right"))  # evaluations at steps <= budget
    return _unwrap(np.asarray(losses[..., :last].min(axis=-1)))


def speedup(reference_steps, reference_losses, losses_at_budget, budget: float):
    """VeLOdrome-style speed-up over a reference optimizer (VeLO, Metz et al. 2022).

    ``speedup = steps_ref(L) / budget``: how many steps the (learning-rate-tuned)
    reference optimizer, typically Adam, needs to reach the loss ``L`` that the
    evaluated optimizer reaches within ``budget`` steps, per step of that budget.
    ``> 1`` means the evaluated optimizer is faster (e.g. 2: Adam needs twice the
    steps), ``< 1`` slower.

    The reference curve is the mean over reference seeds of their best-so-far curves
    (the expected best-so-far loss of one reference run; monotone non-increasing by
    construction). ``steps_ref(L)`` is the first step at which that curve is ``<= L``,
    linearly interpolated between the two evaluation points that bracket ``L``.

    Censoring: if the reference never gets to ``L`` within its curve, its steps are
    only known to exceed ``reference_steps[-1]``. We do not extrapolate the curve (the
    VeLO paper does; that would invent data), and we do not return ``inf`` (that would
    claim the reference never gets there and break means and IQMs); we return the lower
    bound ``reference_steps[-1] / budget`` with ``censored=True``. So the largest
    measurable speed-up is ``reference_steps[-1] / budget``: train the reference longer
    than ``budget`` (e.g. several times) to measure speed-ups above 1.

    If ``L`` is at or above the reference's first value, ``steps_ref = reference_steps[0]``
    (0 on a grid starting at 0). A non-finite ``L`` (NaN is treated as ``+inf``: the
    evaluated optimizer reached nothing) gives that value too.

    Learning-rate tuning: given ``[H, S_ref, E]``, one set of reference runs per rate of a
    grid, the reference is tuned *for each target*: ``steps_ref(L)`` is the fewest steps
    any rate needs (the minimum over rates of the above; censored only when every rate
    is). This is VeLOdrome's "learning-rate-tuned Adam": a rate tuned for one budget or
    split would be a slower reference for targets it was not tuned for.

    Args:
        reference_steps: ``[E]`` strictly increasing evaluation steps of the reference.
        reference_losses: ``[H, S_ref, E]`` (rates, seeds), ``[S_ref, E]`` (seeds) or
            ``[E]`` reference losses; without the rate axis, the reference's learning
            rate should already be tuned. NaN counts as ``+inf``.
        losses_at_budget: the evaluated optimizer's best-so-far loss at ``budget``
            (:func:`best_loss_at`); a float or any-shaped array (e.g. per seed).
        budget: the evaluated optimizer's step budget (> 0).

    Returns:
        ``(speedup, censored)``: float(s) and bool(s) of the shape of
        ``losses_at_budget`` (NumPy scalars for a scalar input).
    """
    steps, ref = _check_curve(reference_steps, reference_losses)
    if ref.ndim == 3:  # per target, the fastest rate
        per_rate = [speedup(steps, r, losses_at_budget, budget) for r in ref]
        values = np.stack([np.asarray(v, dtype=np.float64) for v, _ in per_rate]).min(axis=0)
        # a rate that reaches the target does so by steps[-1], no later than a censored
        # rate's bound steps[-1] / budget: the minimum is censored only if every rate is
        censored = np.stack([np.asarray(c) for _, c in per_rate]).all(axis=0)
        return _unwrap(values), _unwrap(censored)
    if ref.ndim == 1:
        ref = ref[None]
    if ref.ndim != 2:
        raise ValueError(f"reference_losses must be [H, S_ref, E], [S_ref, E] or [E], got shape {ref.shape}")
    if not budget > 0:
        raise ValueError(f"budget must be positive, got {budget}")
    curve = best_so_far(ref).mean(axis=0)  # [E], non-increasing
    target = np.asarray(losses_at_budget, dtype=np.float64)
    target = np.where(np.isnan(target), np.inf, target)
    flat = target.reshape(-1)

    hit = curve[None, :] <= flat[:, None]  # [N, E]; monotone curve: False...False True...True
    reached = hit.any(axis=1)
    j = np.argmax(hit, axis=1)  # first evaluation at or below the target
    prev = np.maximum(j - 1, 0)
    lo_loss, hi_loss = curve[prev], curve[j]  # curve[prev] > target >= curve[j] when j > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(j > 0, (lo_loss - flat) / (lo_loss - hi_loss), 0.0)
    # a +inf curve value before the hit (a reference seed NaN at that step) gives no
    # slope to interpolate on: take the hit step itself
    frac = np.where(np.isfinite(frac), frac, 1.0)
    ref_steps = steps[prev] + frac * (steps[j] - steps[prev])
    ref_steps = np.where(reached, ref_steps, steps[-1])

    out = (ref_steps / budget).reshape(target.shape)
    censored = (~reached).reshape(target.shape)
    return _unwrap(out), _unwrap(censored)


def seed_mean(values) -> float:
    """Mean over seeds with a non-finite value (a diverged run) counted as ``+inf``.

    So a method that diverged on any seed never looks better than one that did not, where
    a NaN-skipping mean would average its surviving seeds (and a table would bold it).
    """
    values = np.asarray(values, dtype=np.float64)
    return float(np.mean(np.where(np.isnan(values), np.inf, values))) if values.size else float("nan")


def seed_std(values) -> float:
    """Sample standard deviation over seeds (``ddof=1``); NaN with one seed or when a seed
    is non-finite (its mean is ``+inf``: :func:`seed_mean`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or not np.isfinite(values).all():
        return float("nan")
    return float(np.std(values, ddof=1))


def seed_sem(values) -> float:
    """Standard error of the mean over seeds, :func:`seed_std` ``/ sqrt(n)``, n every seed."""
    return seed_std(values) / float(np.sqrt(max(np.size(values), 1)))


def num_diverged(values) -> int:
    """How many seeds' values are non-finite."""
    return int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
