"""Maximal Update Parametrization (muP) of MLP tasks: per-tensor learning-rate multipliers.

Under the standard parametrization (SP) an optimizer meta-trained on narrow networks
takes too-large steps on wide ones: a coordinate-wise update of size eta moves the
logits by about ``width * eta``. muP (Yang et al., Tensor Programs V, 2022, Table 8) fixes
the width dependence with the initialisation, one forward multiplier and per-tensor
learning-rate multipliers; muLO (Therien et al., ICLR 2026) meta-trains learned
optimizers under it and finds they generalise to much wider (and deeper, longer-trained)
networks than they were meta-trained on.

The MLP under muP (:class:`lopt.tasks.ImageMLP` with ``parametrization="mup"``), with
hidden widths ``n_1 .. n_L`` (L >= 1), input size ``d``, ``C`` classes and base width ``b``
(``mup_base_width``):

===============================  ==================  ============  ===========  ===========
tensor                           init                forward       "adam" LR    "sgd" LR
===============================  ==================  ============  ===========  ===========
input weights ``[d, n_1]``       N(0, 1/d)           x 1           x 1          x n_1/b
hidden weights ``[n_i, n_i+1]``  N(0, 1/n_i)         x 1           x b/n_i      x n_i+1/n_i
readout weights ``[n_L, C]``     0                   input x b/n_L x 1          x n_L/b
hidden biases ``[n_i]``          0                   x 1           x 1          x n_i/b
readout bias ``[C]``             0                   x 1           x 1          x 1
===============================  ==================  ============  ===========  ===========

(initial scales also times ``init_scale``). With ``b = 1`` the multipliers are absolute,
as in muLO's code (its hidden multiplier is 1/fan_in); with ``b`` = a width the optimizer
was tuned or meta-trained at, they are mup's relative ones (width multipliers ``n / b``):
a network of width ``b`` then takes exactly the standard parametrization's steps (only
its readout starts at zero), so an SP step size carries over, and wider networks take
muP's smaller ones.

The "adam" column is for rules whose updates are O(1) per coordinate whatever the
gradient's scale: Adam and its relatives, sign methods, and the learned optimizers (muLO
multiplies the learned step by it). The "sgd" column is mup's ``MuSGD`` (vector-like
tensors x their width multiplier, matrix-like x fan_out / fan_in) for SGD and momentum.
``rule=None`` (a rule with no muP multipliers, e.g. Adafactor's parameter-scaled steps)
is refused on a muP task.

The multipliers scale an optimizer's whole update, decoupled weight decay included (AdamW's
``lr * wd * p``), so a hidden layer's decay shrinks with its step; mup instead keeps
``lr * wd`` fixed per tensor. At lopt's ``wd = 1e-4`` the difference is negligible.

Only the training loops of lopt apply the multipliers (:class:`lopt.tasks.InnerTraining`,
the evaluation's baselines and learned optimizer); an optimizer handed to
:func:`lopt.evaluate.train_curves` directly is used as given.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import optax

PARAMETRIZATIONS = ("standard", "mup")
UPDATE_RULES = ("adam", "sgd")


def mlp_update_scales(sizes: Sequence[int], rule: str, base_width: int = 1) -> dict[str, dict[str, float]]:
    """The muP learning-rate multipliers of an MLP with layer sizes ``(d, n_1, .., n_L, C)``.

    Returns ``{"layer_i": {"w": s_w, "b": s_b}}`` (the :class:`~lopt.tasks.ImageMLP`
    parameter tree) from the module docstring's table for ``rule`` ("adam" or "sgd") and
    base width ``b = base_width``.
    """
    if rule not in UPDATE_RULES:
        raise ValueError(f"unknown muP update rule {rule!r}; allowed: {', '.join(UPDATE_RULES)}")
    if len(sizes) < 3:
        raise ValueError("muP needs at least one hidden layer (hidden_sizes is empty)")
    last, base = len(sizes) - 2, float(base_width)
    scales = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if rule == "adam":
            w = base / fan_in if 0 < i < last else 1.0
            b = 1.0
        else:  # MuSGD: vector-like (one width-like dim) x its width multiplier, matrix-like x fan_out / fan_in
            w = fan_out / base if i == 0 else fan_in / base if i == last else fan_out / fan_in
            b = 1.0 if i == last else fan_out / base
        scales[f"layer_{i}"] = {"w": w, "b": b}
    return scales


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiply each update leaf by the matching leaf of ``scales`` (a pytree of floats
    with the parameters' structure). Stateless."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def with_update_scales(task: Any, optimizer: optax.GradientTransformation, rule: str | None) -> optax.GradientTransformation:
    """``optimizer`` followed by ``task``'s muP learning-rate multipliers for ``rule``.

    ``optimizer`` itself when the task has none (every task but a muP one): its state
    and updates are then exactly the optimizer's. Raises ``ValueError`` naming the task
    for ``rule=None`` on a muP task.
    """
    if getattr(task, "parametrization", "standard") == "standard":
        return optimizer
    if rule is None:
        raise ValueError(
            f"task {getattr(task, 'name', task)!r} is muP-parametrized and this optimizer has no muP learning-rate "
            f"multipliers (allowed update rules: {', '.join(UPDATE_RULES)})"
        )
    return optax.chain(optimizer, scale_by_tree(task.update_scales(rule)))
