"""The parsed-array cache of ``xc_format.read_xc``: ``.npz`` files keyed by the source file's
absolute path, size and modification time (and the parser's format version), loaded with
``allow_pickle=False``."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.files import atomic_output

# Bump when the parse of the same bytes could change; invalidates every cache entry.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """$MACH_JAX_CACHE_DIR, else $XDG_CACHE_HOME/mach_jax, else ~/.cache/mach_jax."""
    if os.environ.get("MACH_JAX_CACHE_DIR"):
        return Path(os.environ["MACH_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mach_jax"


def cache_path(cache_dir: Path, path: str, stat: os.stat_result) -> Path:
    """<name>.<hash of the path>.<hash of path, size, mtime, version>.npz"""
    path = os.path.abspath(path)
    key = f"{FORMAT_VERSION}\n{path}\n{stat.st_size}\n{stat.st_mtime_ns}"
    digests = [hashlib.sha256(k.encode()).hexdigest()[:16] for k in (path, key)]
    return cache_dir / f"{Path(path).name}.{digests[0]}.{digests[1]}.npz"


def load_cache(file: Path, source: str) -> XCDataset | None:
    """The cached dataset, or None when there is no usable cache."""
    try:
        with np.load(file, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION:
                return None
            _, num_features, num_labels = z["shape"].tolist()
            labels = z["label_indices"]
            return XCDataset(
                CsrMatrix(z["feature_indptr"], z["feature_indices"], z["feature_values"],
                          num_features),
                CsrMatrix(z["label_indptr"], labels, np.ones(len(labels), np.float32),
                          num_labels), source)
    except Exception:  # missing, truncated or tampered cache: parse the source instead
        return None


def save_cache(file: Path, dataset: XCDataset) -> None:
    """Writes the parsed arrays (atomically: readers never see a half-written cache) and removes
    older caches of the same source file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(file) as f:
            np.savez(f, format_version=FORMAT_VERSION, shape=np.array(
                [dataset.num_points, dataset.num_features, dataset.num_labels], np.int64),
                feature_indptr=dataset.features.indptr, feature_indices=dataset.features.indices,
                feature_values=dataset.features.values, label_indptr=dataset.labels.indptr,
                label_indices=dataset.labels.indices)
        for stale in file.parent.glob(glob.escape(file.name.rsplit(".", 2)[0]) + ".*.npz"):
            if stale != file:  # an older version of the same source file
                stale.unlink(missing_ok=True)
    except OSError:  # read-only or full cache dir: caching is only an optimisation
        pass
