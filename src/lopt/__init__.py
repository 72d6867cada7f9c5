"""lopt: reproducible learned-optimizer research in JAX.

The package reads like the method section of a paper:

- :mod:`lopt.data`        datasets and the data-preparation stage
- :mod:`lopt.tasks`       inner problems (``init``/``loss`` plus a batch stream)
- :mod:`lopt.optimizers`  learned optimizers and tuned optax baselines
- :mod:`lopt.unroll`      the vectorised truncated-unroll engine
- :mod:`lopt.estimators`  meta-gradient estimators over the engine
- :mod:`lopt.meta_train`  the outer loop (optax + orbax + tracking)
- :mod:`lopt.evaluate`    held-out evaluation against tuned baselines
- :mod:`lopt.analysis`    figures, tables and statistics from result files

Importing :mod:`lopt` is cheap: submodules import JAX only when used.
"""

__version__ = "0.1.0"
