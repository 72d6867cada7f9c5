"""The learned-optimizer protocol.

A learned optimizer is a recipe for meta-parameters plus a map from meta-parameters
to an optax :class:`~optax.GradientTransformationExtraArgs`. Meta-training perturbs and
differentiates ``meta_params``; evaluation and users only ever see ``to_optax``.

Contract shared by every learned optimizer in :mod:`lopt.optimizers` (frozen dataclasses):

- ``name: str``: a short identifier (e.g. ``"mlp_lopt"``).
- ``init(key) -> meta_params``: a pytree (nested dicts) of float32 arrays.
- ``to_optax(meta_params, num_steps)``: an ``optax.GradientTransformationExtraArgs`` whose
  ``update(grads, state, params=None, **extra_args)`` *requires* ``params`` (ValueError
  otherwise) and accepts an optional ``value=`` keyword: the scalar training loss at the
  current params. Callers in lopt always pass ``value=loss``; optimizers that do not use the
  loss ignore it, those that need it raise a ValueError when it is missing. ``num_steps``
  sets the training-fraction features and may be a traced value.
- Everything is pure, jittable, vmappable over meta-parameters *and* inner states (ES
  evaluates ``jax.vmap(lambda theta, s: to_optax(theta, n).update(g, s, p, value=l))``),
  float32, and differentiable with finite gradients (truncated backprop through the
  unroll): no ``sqrt(0)``, ``log(0)`` or ``0/0`` anywhere on the path from meta-parameters.
- ``num_meta_params() -> int``: the number of scalars in ``init``'s pytree.
- ``card() -> dict``: a model card with keys ``name``, ``architecture`` (one sentence),
  ``features`` (input feature names, one per input unit), ``num_meta_params``,
  ``state_floats_per_param`` (optimizer-state floats per inner parameter, asymptotically),
  ``state_floats_per_tensor`` (constant per-tensor state, e.g. LSTM hidden + cell) and
  ``untrained`` (what the optimizer does before meta-training: ``"no-op"``,
  ``"Adam(lr=0.001)"``, ...). Optimizers may add keys; :func:`model_card_markdown`
  renders any card.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import optax

MetaParams = Any

CARD_KEYS = (
    "name",
    "architecture",
    "features",
    "num_meta_params",
    "state_floats_per_param",
    "state_floats_per_tensor",
    "untrained",
)


@runtime_checkable
class LearnedOptimizer(Protocol):
    """``init(key) -> meta_params`` and ``to_optax(meta_params, num_steps)``; see module doc."""

    name: str

    def init(self, key: jax.Array) -> MetaParams:
        """Initial meta-parameters (a pytree of float32 arrays)."""
        ...

    def to_optax(
        self, meta_params: MetaParams, num_steps: int
    ) -> optax.GradientTransformationExtraArgs:
        """An optax optimizer for an inner run of ``num_steps`` steps.

        ``num_steps`` sets the training-fraction features; it may be a traced value.
        ``update(grads, state, params, value=loss)`` needs ``params``; ``value`` is optional
        for optimizers that do not read the loss.
        """
        ...

    def num_meta_params(self) -> int:
        """Number of scalar meta-parameters."""
        ...

    def card(self) -> dict[str, Any]:
        """The model card (see the module docstring for the keys)."""
        ...


def model_card_markdown(card: dict[str, Any]) -> str:
    """Render a :meth:`LearnedOptimizer.card` as a Markdown section."""
    lines = [f"### {card.get('name', 'learned optimizer')}", ""]
    if "architecture" in card:
        lines += [str(card["architecture"]), ""]
    lines += ["| field | value |", "|---|---|"]
    ordered = [k for k in CARD_KEYS if k in card and k not in ("name", "architecture")]
    ordered += [k for k in card if k not in CARD_KEYS]
    for key in ordered:
        value = card[key]
        if key == "features":
            value = f"{len(value)}: " + ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        text = str(value).replace("|", "\\|")
        lines.append(f"| {key} | {text} |")
    return "\n".join(lines) + "\n"


def update_rule(lopt: Any) -> str | None:
    """The muP update rule of ``lopt`` (:mod:`lopt.tasks.mup`): which per-tensor
    learning-rate multipliers a muP task applies to its updates.

    ``"adam"`` unless the optimizer declares an ``update_rule`` attribute: a learned step
    ``d * exp(alpha * m) * beta`` is O(1) per coordinate whatever the gradient's scale (its
    inputs are normalised per tensor), as Adam's is, and muLO scales it as Adam's.
    """
    return getattr(lopt, "update_rule", "adam")
