"""Datasets and the data-preparation stage.

``prepare(name, root)`` writes ``root/<name>/{train,inner_valid,outer_valid,test}.npz``
plus ``manifest.json``; ``load(name, root)`` reads them back as a :class:`Dataset` of
numpy :class:`Split` s after verifying their sha256. :data:`DATASETS` is the registry of
names. Importing this package does not import JAX, scikit-learn, mnist1d or pooch.
"""

from lopt.data.prepare import SPLITS, Dataset, Split, load, prepare, read_manifest
from lopt.data.sources import DATASETS, DatasetError, SourceSpec

__all__ = [
    "DATASETS",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "SourceSpec",
    "Split",
    "load",
    "prepare",
    "read_manifest",
]
