"""Build any learned optimizer of the zoo by kind name (for configs and the CLI)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lopt.optimizers.adafac_mlp_lopt import AdafacMLPLOpt
from lopt.optimizers.base import LearnedOptimizer
from lopt.optimizers.mlp_lopt import MLPLOpt
from lopt.optimizers.nn_adam import NNAdam
from lopt.optimizers.nominal import NOMINAL_OPTIMIZERS, NominalLOpt
from lopt.optimizers.rnn_mlp_lopt import RNNMLPLOpt

LOPT_KINDS = ("mlp_lopt", "adafac_mlp_lopt", "nn_adam", "rnn_mlp_lopt")

_CLASSES: dict[str, type] = {
    "mlp_lopt": MLPLOpt,
    "adafac_mlp_lopt": AdafacMLPLOpt,
    "nn_adam": NNAdam,
    "rnn_mlp_lopt": RNNMLPLOpt,
}


def lopt_fields(kind: str) -> dict[str, Any]:
    """The dataclass fields of ``kind`` and their defaults."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown learned optimizer kind {kind!r}; allowed: {list(LOPT_KINDS)}")
    return {f.name: f.default for f in dataclasses.fields(_CLASSES[kind])}


def make_lopt(kind: str, nominal: dict | None = None, **fields: Any) -> LearnedOptimizer:
    """``make_lopt("adafac_mlp_lopt", hidden_size=8)``; ``nominal={"optimizer": "adam",
    "learning_rate": 1e-3}`` wraps the result in :class:`NominalLOpt`.

    Lists are accepted for tuple-typed fields (YAML/JSON have no tuples).
    """
    defaults = lopt_fields(kind)
    unknown = sorted(set(fields) - set(defaults))
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {unknown}; allowed fields: {sorted(defaults)}")
    kwargs = {
        k: tuple(v) if isinstance(v, list) and isinstance(defaults[k], tuple) else v
        for k, v in fields.items()
    }
    lopt = _CLASSES[kind](**kwargs)
    if nominal is None:
        return lopt
    nominal = dict(nominal)
    allowed = {"optimizer", "learning_rate"}
    bad = sorted(set(nominal) - allowed)
    if bad:
        raise ValueError(f"nominal: unknown key(s) {bad}; allowed keys: {sorted(allowed)}")
    optimizer = nominal.get("optimizer", "adam")
    if optimizer not in NOMINAL_OPTIMIZERS:
        raise ValueError(
            f"nominal.optimizer {optimizer!r} unknown; allowed: {list(NOMINAL_OPTIMIZERS)}"
        )
    return NominalLOpt(
        base=lopt, nominal=optimizer, learning_rate=float(nominal.get("learning_rate", 1e-3))
    )
