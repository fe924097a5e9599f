"""mach_jax: extreme classification in log memory with MACH (count-min sketch of R classifiers).

Python API (see README):
    from mach_jax import MachClassifier           # fit(X, Y) / predict(X) on scipy.sparse or numpy
    from mach_jax import Config, get_preset, train_and_evaluate, MachEnsemble, read_xc

Heavy modules (jax, flax, orbax) load lazily, so ``--help`` and the data tools start fast.
"""

from __future__ import annotations

import importlib

from mach_jax.config import Config, get_preset
from mach_jax.errors import ConfigError

__version__ = "0.1.0"

_LAZY = {
    "MachClassifier": "mach_jax.estimator",
    "train_and_evaluate": "mach_jax.experiment",
    "MachEnsemble": "mach_jax.readout.ensemble",
    "read_xc": "mach_jax.data.xc_format",
    "write_xc": "mach_jax.data.xc_format",
    "CsrMatrix": "mach_jax.data.csr",
    "XCDataset": "mach_jax.data.csr",
    "DataFormatError": "mach_jax.errors",
    "make_synthetic": "mach_jax.data.synthetic",
}

__all__ = ["Config", "ConfigError", "get_preset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mach_jax' has no attribute {name!r}")
