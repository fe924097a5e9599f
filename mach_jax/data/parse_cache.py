"""The parsed-array cache of ``xc_format.read_xc``: ``.npz`` files keyed by a hash of the source
file's bytes (and the parser's format version), loaded with ``allow_pickle=False`` and checked as
the parser checks a file (finite values, ids within D and L, consistent row pointers): an entry
that fails is ignored and the source parsed again.

The key is the content, not the path, size and modification time: a file edited in place with
its size and mtime kept is parsed again, and the source is read (so a file that became
unreadable is an error) even on a cache hit. Hashing costs little beside parsing: on a 69 MB
file (2 busy cores) SHA-256 read 0.6-0.8 GB/s (BLAKE2b 0.3-0.4 GB/s: this CPU has SHA
instructions) where the parser read 15-25 MB/s, so a hit takes 0.11-0.20 s instead of 2.7-4.7 s.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.files import atomic_output, hash_stream

# Bump when the parse of the same bytes could change; invalidates every cache entry.
FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """$MACH_JAX_CACHE_DIR, else $XDG_CACHE_HOME/mach_jax, else ~/.cache/mach_jax."""
    if os.environ.get("MACH_JAX_CACHE_DIR"):
        return Path(os.environ["MACH_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mach_jax"


def new_digest():
    """The digest a content key is made from: fed a file's raw bytes, ``key_of`` gives the key."""
    return hashlib.sha256(b"mach_jax parse cache %d\n" % FORMAT_VERSION)


def key_of(digest) -> str:
    return digest.hexdigest()[:32]


def content_key(source: BinaryIO | bytes) -> str:
    """The cache key of a file's raw bytes (read from the stream's position, 1 MiB at a time,
    or given whole): their SHA-256 after the format version, 32 hex digits."""
    digest = new_digest()
    if isinstance(source, bytes):
        digest.update(source)
    else:
        hash_stream(source, digest)
    return key_of(digest)


def cache_path(cache_dir: Path, path: str, key: str) -> Path:
    """<name>.<hash of the absolute path>.<content key>.npz"""
    path = os.path.abspath(path)
    return cache_dir / f"{Path(path).name}.{hashlib.sha256(path.encode()).hexdigest()[:16]}.{key}.npz"


def load_cache(file: Path, source: str, key: str) -> XCDataset | None:
    """The cached dataset of the bytes whose content key is ``key``, or None when there is no
    usable cache. Features [N, D] and labels [N, L], as ``read_xc`` returns them."""
    try:
        with np.load(file, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION or str(z["content_key"]) != key:
                return None
            num_points, num_features, num_labels = z["shape"].tolist()
            labels = z["label_indices"]
            if not (_csr_valid(z["feature_indptr"], z["feature_indices"], num_points, num_features)
                    and _csr_valid(z["label_indptr"], labels, num_points, num_labels)
                    and len(z["feature_values"]) == len(z["feature_indices"])
                    and np.isfinite(z["feature_values"]).all()):
                return None  # what the parser would refuse: the source is parsed instead
            return XCDataset(
                CsrMatrix(z["feature_indptr"], z["feature_indices"], z["feature_values"],
                          num_features),
                CsrMatrix(z["label_indptr"], labels, np.ones(len(labels), np.float32),
                          num_labels), source)
    except Exception:  # missing, truncated or tampered cache: parse the source instead
        return None


def _csr_valid(indptr: np.ndarray, indices: np.ndarray, num_rows: int, num_cols: int) -> bool:
    """Whether cached CSR arrays hold what a parse yields: indptr [N + 1] from 0, non-decreasing,
    ending at nnz; ids [nnz] in [0, num_cols). (Duplicates within a row are the parser's to find.)"""
    return (indptr.ndim == 1 and len(indptr) == num_rows + 1 and indptr[0] == 0
            and int(indptr[-1]) == len(indices) and bool((np.diff(indptr) >= 0).all())
            and (not len(indices) or (int(indices.min()) >= 0 and int(indices.max()) < num_cols)))


def save_cache(file: Path, dataset: XCDataset, key: str) -> None:
    """Writes the parsed arrays of the bytes whose content key is ``key`` (atomically: readers
    never see a half-written cache) and removes older caches of the same source file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(file) as f:
            np.savez(f, format_version=FORMAT_VERSION, content_key=np.array(key), shape=np.array(
                [dataset.num_points, dataset.num_features, dataset.num_labels], np.int64),
                feature_indptr=dataset.features.indptr, feature_indices=dataset.features.indices,
                feature_values=dataset.features.values, label_indptr=dataset.labels.indptr,
                label_indices=dataset.labels.indices)
        for stale in file.parent.glob(glob.escape(file.name.rsplit(".", 2)[0]) + ".*.npz"):
            if stale != file:  # an older version of the same source file
                stale.unlink(missing_ok=True)
    except OSError:  # read-only or full cache dir: caching is only an optimisation
        pass
