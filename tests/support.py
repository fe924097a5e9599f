"""Small builders the tests share (not library code): datasets from Python rows, and the
host-side class -> bucket table that the on-device hashing is checked against."""

from __future__ import annotations

import numpy as np

from mach_jax.core.hashing import hash_to_range, repetition_seeds
from mach_jax.data.csr import CsrMatrix, XCDataset


def from_rows(feature_rows, label_rows, num_features: int, num_labels: int,
              source: str = "<memory>") -> XCDataset:
    """Builds a dataset from Python rows (for tests and small examples).

    Args:
      feature_rows: N dicts {feature id: value}.
      label_rows: N lists of distinct label ids.
      num_features: D.
      num_labels: L.
      source: description stored in the dataset.

    Returns:
      The dataset with features [N, D] and labels [N, L], ids in the given order.
    """
    if len(feature_rows) != len(label_rows):
        raise ValueError(f"{len(feature_rows)} feature rows but {len(label_rows)} label rows")
    if any(len(set(row)) != len(row) for row in label_rows):
        raise ValueError("a label row repeats a label id")
    fptr = np.cumsum([0] + [len(row) for row in feature_rows])
    lptr = np.cumsum([0] + [len(row) for row in label_rows])
    features = CsrMatrix(fptr, np.array([k for row in feature_rows for k in row], np.int64),
                         [v for row in feature_rows for v in row.values()], num_features)
    label_ids = np.array([k for row in label_rows for k in row], np.int64)
    labels = CsrMatrix(lptr, label_ids, np.ones(len(label_ids), np.float32), num_labels)
    return XCDataset(features, labels, source)


def bucket_lookup(num_labels: int, num_buckets: int, base_seed: int, repetitions) -> np.ndarray:
    """Class -> bucket table of every repetition.

    Args:
      num_labels: L.
      num_buckets: B.
      base_seed: seed of repetition 0; repetition r uses ``base_seed + r``.
      repetitions: R, or an explicit array of repetition ids (a subset of an ensemble).

    Returns:
      int32 [R, L]: entry [r, c] is ``h_r(c)`` in [0, B).
    """
    return hash_to_range(np.arange(num_labels, dtype=np.uint32),
                         repetition_seeds(base_seed, repetitions), num_buckets)
