"""Meta-gradient estimators over the truncated-unroll engine (one file each).

| name    | module      | unbiased | notes                                              |
|---------|-------------|----------|----------------------------------------------------|
| tbptt   | tbptt.py    | no       | autodiff through the last K steps                  |
| full_es | full_es.py  | yes      | whole episodes from fresh states (K = T)           |
| tes     | tes.py      | no       | ES over one window from a shared unperturbed state |
| pes     | pes.py      | yes      | persistent states, accumulated noise               |
| gpes    | gpes.py     | yes      | fresh noise every K' steps (PES: K'=K, NRES: K'>=T)|
| nres    | nres.py     | yes      | one noise per particle per episode                 |

:func:`multi_task` (``multi_task.py``) averages one estimator per task of a task family.
"""

from typing import Any

from lopt.estimators.base import Estimator
from lopt.estimators.full_es import FullESState, full_es
from lopt.estimators.gpes import GPESState, gpes
from lopt.estimators.multi_task import multi_task
from lopt.estimators.nres import NRESState, nres
from lopt.estimators.pes import PESState, pes
from lopt.estimators.tbptt import TBPTTState, tbptt
from lopt.estimators.tes import TESState, tes

ESTIMATORS = {"tbptt": tbptt, "full_es": full_es, "tes": tes, "pes": pes, "gpes": gpes, "nres": nres}


def estimator_options(
    name: str,
    *,
    noise_reuse_steps: int | None = None,
    loss_diff_clip: float | None = None,
    window_loss: str = "mean",
    particle_chunk: int | None = None,
) -> dict[str, Any]:
    """The options estimator ``name`` takes, from the settings a config carries for all of
    them (``noise_reuse_steps``: GPES; ``window_loss``: TBPTT; ``loss_diff_clip``: ES)."""
    options: dict[str, Any] = {"window_loss": window_loss} if name == "tbptt" else {"loss_diff_clip": loss_diff_clip}
    if name == "gpes":
        options["noise_reuse_steps"] = noise_reuse_steps
    if particle_chunk is not None:
        options["particle_chunk"] = particle_chunk
    return options


def make_estimator(name: str, system, **kwargs) -> Estimator:
    """Build estimator ``name`` over ``system``; errors list the allowed names."""
    try:
        factory = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}") from None
    return factory(system, **kwargs)


__all__ = [
    "ESTIMATORS",
    "Estimator",
    "FullESState",
    "GPESState",
    "NRESState",
    "PESState",
    "TBPTTState",
    "TESState",
    "estimator_options",
    "full_es",
    "gpes",
    "make_estimator",
    "multi_task",
    "nres",
    "pes",
    "tbptt",
    "tes",
]
