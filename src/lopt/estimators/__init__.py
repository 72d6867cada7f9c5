"""Meta-gradient estimators over the truncated-unroll engine (one file each)."""

from lopt.estimators.base import Estimator
from lopt.estimators.nres import NRESState, nres
from lopt.estimators.pes import PESState, pes

ESTIMATORS = {"pes": pes, "nres": nres}


def make_estimator(name: str, system, **kwargs) -> Estimator:
    """Build estimator ``name`` over ``system``; errors list the allowed names."""
    try:
        factory = ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}") from None
    return factory(system, **kwargs)


__all__ = ["ESTIMATORS", "Estimator", "NRESState", "PESState", "make_estimator", "nres", "pes"]
