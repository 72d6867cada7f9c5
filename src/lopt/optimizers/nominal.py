"""NominalLOpt: a learned optimizer plus a hand-designed "nominal" descent term.

Harrison, Metz and Sohl-Dickstein 2022, "A closer look at learned optimization:
stability, robustness, and inductive biases" (2209.11208). The update is

    update = nominal_update + learned_update

where the nominal term is ``optax.adam(learning_rate)`` (``nominal="adam"``),
``optax.sgd(learning_rate)`` (``"sgd"``) or ``optax.sgd(learning_rate, momentum=0.9)``
(``"momentum"``), and the learned term is any :class:`~lopt.optimizers.base.LearnedOptimizer`
(``base``). Meta-parameters are the base's, so an untrained base with a zero-initialised
output (a no-op) leaves exactly the nominal optimizer: training starts from a stable,
descending optimizer instead of from nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import optax

from lopt.optimizers.base import MetaParams

NOMINAL_OPTIMIZERS = ("adam", "sgd", "momentum")
_NOMINAL_STATE_PER_PARAM = {"adam": 2, "sgd": 0, "momentum": 1}


class NominalLOptState(NamedTuple):
    nominal: Any
    learned: Any


def make_nominal(kind: str, learning_rate: float) -> optax.GradientTransformation:
    if kind == "adam":
        return optax.adam(learning_rate)
    if kind == "sgd":
        return optax.sgd(learning_rate)
    if kind == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"unknown nominal optimizer {kind!r}; allowed: {list(NOMINAL_OPTIMIZERS)}")


@dataclasses.dataclass(frozen=True)
class NominalLOpt:
    """``base`` learned optimizer plus a nominal optax term. See the module docstring."""

    base: Any
    nominal: str = "adam"
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.nominal not in NOMINAL_OPTIMIZERS:
            raise ValueError(
                f"unknown nominal optimizer {self.nominal!r}; allowed: {list(NOMINAL_OPTIMIZERS)}"
            )

    @property
    def name(self) -> str:
        return f"nominal_{self.base.name}"

    @property
    def update_rule(self) -> str | None:
        """muP update rule (:mod:`lopt.tasks.mup`): the learned term's "adam" with an Adam
        nominal term; none with an SGD one, whose multipliers differ from the learned term's."""
        return "adam" if self.nominal == "adam" else None

    def _nominal_label(self) -> str:
        label = {"adam": "Adam", "sgd": "SGD", "momentum": "SGD+momentum(0.9)"}[self.nominal]
        return f"{label}(lr={self.learning_rate:g})"

    def init(self, key: jax.Array) -> MetaParams:
        return self.base.init(key)

    def num_meta_params(self) -> int:
        return self.base.num_meta_params()

    def card(self) -> dict[str, Any]:
        base = self.base.card()
        card = dict(base)
        card.update(
            name=self.name,
            architecture=(
                f"{self._nominal_label()} plus the learned update of {self.base.name}: "
                f"{base['architecture']}"
            ),
            state_floats_per_param=base["state_floats_per_param"]
            + _NOMINAL_STATE_PER_PARAM[self.nominal],
            untrained=(
                self._nominal_label()
                if base["untrained"] == "no-op"
                else f"{self._nominal_label()} + {base['untrained']}"
            ),
        )
        if "state_floats_per_param_unfactored" in card:
            card["state_floats_per_param_unfactored"] += _NOMINAL_STATE_PER_PARAM[self.nominal]
        return card

    def to_optax(
        self, meta_params: MetaParams, num_steps: Any
    ) -> optax.GradientTransformationExtraArgs:
        nominal = make_nominal(self.nominal, self.learning_rate)
        learned = self.base.to_optax(meta_params, num_steps)

        def init_fn(params: Any) -> NominalLOptState:
            return NominalLOptState(nominal.init(params), learned.init(params))

        def update_fn(grads: Any, state: NominalLOptState, params: Any = None, **extra_args):
            if params is None:
                raise ValueError(f"{self.name} needs params: call update(grads, state, params)")
            n_upd, n_state = nominal.update(grads, state.nominal, params)
            l_upd, l_state = learned.update(grads, state.learned, params, **extra_args)
            updates = jax.tree.map(lambda a, b: (a + b).astype(b.dtype), n_upd, l_upd)
            return updates, NominalLOptState(n_state, l_state)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
