"""Estimator studies: the PES / NRES paper experiments as configs, runs and analyses.

A study (``configs/paper/*.yaml``, ``kind: study``) is one unrolled system, several
estimator methods and several seeds:

- :mod:`lopt.studies.config`   -- the typed YAML schema (no JAX)
- :mod:`lopt.studies.systems`  -- system, starting theta and unperturbed metric
- :mod:`lopt.studies.run`      -- meta-train one (method, seed), record the curve
- :mod:`lopt.studies.analysis` -- figures, tables and the paper-claims check
"""

from lopt.studies.config import StudyConfig, is_study, load_study

__all__ = ["StudyConfig", "is_study", "load_study"]
