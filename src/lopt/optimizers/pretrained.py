"""Build learned optimizers from configs, and load meta-trained ones as optax optimizers.

A meta-training run publishes ``meta_params.npz`` plus ``meta_params.npz.json`` (sha256,
the resolved optimizer config, estimator, tasks; see :mod:`lopt.checkpoint`). That pair
is all a consumer needs:

    pretrained = load_pretrained("results/default/meta/meta_params.npz")
    opt = pretrained.to_optax(num_steps=200)          # an optax optimizer
    updates, state = opt.update(grads, state, params, value=loss)

``num_steps`` is the length of the run the optimizer is used for (it sets the
training-fraction features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax
from pydantic import BaseModel, ConfigDict

from lopt.config import LOptConfig
from lopt.optimizers.base import LearnedOptimizer
from lopt.optimizers.registry import make_lopt


class _Sidecar(BaseModel):
    """The part of a ``meta_params.npz.json`` that names the architecture (for its errors)."""

    model_config = ConfigDict(extra="ignore")
    optimizer: LOptConfig


def from_config(cfg: Any) -> LearnedOptimizer:
    """The learned optimizer of a validated ``lopt:`` config (:data:`lopt.config.LOptConfig`)."""
    fields = cfg.model_dump(exclude={"kind", "nominal"})
    nominal = cfg.nominal.model_dump() if cfg.nominal is not None else None
    return make_lopt(cfg.kind, nominal=nominal, **fields)


class Pretrained(NamedTuple):
    """A meta-trained optimizer: architecture, meta-parameters and the run's metadata."""

    lopt: LearnedOptimizer
    meta_params: Any
    metadata: dict[str, Any]

    def to_optax(self, num_steps: int) -> optax.GradientTransformationExtraArgs:
        return self.lopt.to_optax(self.meta_params, num_steps)


def load_pretrained(path: str | Path, fallback: Any = None) -> Pretrained:
    """Load ``meta_params.npz`` (and its ``.json`` metadata) as a :class:`Pretrained`.

    The sha256 in the metadata is verified. ``fallback`` (an ``lopt:`` config) names the
    architecture when the metadata has none. Raises ``FileNotFoundError`` /
    ``CheckpointError`` (a ``ValueError``) naming the file when a file is missing or they disagree.
    """
    from pydantic import ValidationError

    from lopt.checkpoint import CheckpointError, load_meta_params, read_json
    from lopt.config.errors import error_lines

    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    for p in (path, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found (a pretrained optimizer is meta_params.npz + .json)")
    metadata = read_json(meta_path)
    if "optimizer" in metadata:
        try:
            cfg = _Sidecar.model_validate({"optimizer": metadata["optimizer"]}).optimizer
        except ValidationError as exc:
            lines = "\n".join(error_lines(exc, _Sidecar))
            raise CheckpointError(f"{meta_path}: 'optimizer' is not a valid lopt config\n{lines}") from None
    elif fallback is not None:
        cfg = fallback
    else:
        raise CheckpointError(f"{meta_path}: no 'optimizer' key; cannot tell which architecture to build")
    lopt = from_config(cfg)
    theta = load_meta_params(path, lopt.init(jax.random.PRNGKey(0)))
    return Pretrained(lopt, theta, metadata)
