"""Input transforms of the feature values: counts are not binary.

A transform maps a CSR row's values, never its ids: a zero stays zero (so a padded or dropped
feature still touches no embedding row), and rows keep their width. It is chosen by
``data.input_transform``, stored in the workdir's ``config.json`` with the training set's
statistics (``feature_idf.npy``), and applied the same way to the training data, to every
evaluation and prediction, and inside exported predictors (``apply_to_batch``).

- ``none``: the values as read;
- ``log1p``: log(1 + |x|) with the sign of x, damping large counts;
- ``l2``: each row scaled to unit L2 norm;
- ``log1p_l2``: log1p, then unit L2 rows;
- ``tfidf_l2``: log1p(x) times the feature's inverse document frequency over the training set,
  idf_d = log((1 + N) / (1 + df_d)) + 1 (the smoothed form), then unit L2 rows.
"""

from __future__ import annotations

import numpy as np

from mach_jax.config import INPUT_TRANSFORMS
from mach_jax.data.csr import CsrMatrix

TRANSFORMS = INPUT_TRANSFORMS


def uses_idf(name: str) -> bool:
    """Whether the transform needs the training set's inverse document frequencies."""
    return name == "tfidf_l2"


def fit_idf(features: CsrMatrix) -> np.ndarray:
    """Smoothed inverse document frequency of every feature over the rows: float32 [D].

    A feature in df of N rows gets log((1 + N) / (1 + df)) + 1; one never seen gets the largest.
    """
    present = features.indices[features.values != 0]
    doc_freq = np.bincount(present, minlength=features.num_cols)
    return (np.log((1.0 + features.num_rows) / (1.0 + doc_freq)) + 1.0).astype(np.float32)


def _row_l2_scale(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """values [nnz] scaled so that every row has unit L2 norm (an all-zero row stays zero)."""
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    norms = np.sqrt(np.bincount(rows, weights=np.square(values), minlength=len(counts)))
    norms[norms == 0] = 1.0
    return values / np.repeat(norms, counts)


def apply(features: CsrMatrix, name: str, idf: np.ndarray | None = None) -> CsrMatrix:
    """The transformed [N, D] features (same ids and widths, new values).

    Args:
      features: [N, D] CSR.
      name: one of ``TRANSFORMS``.
      idf: float32 [D] from ``fit_idf`` on the training data (``tfidf_l2`` only).
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown input transform {name!r}; known: {TRANSFORMS}")
    if name == "none":
        return features
    values = features.values.astype(np.float64)
    if name != "l2":
        values = np.log1p(np.abs(values)) * np.sign(values)
    if uses_idf(name):
        if idf is None or len(idf) != features.num_cols:
            raise ValueError(f"{name} needs the training set's idf over the D={features.num_cols} features")
        values = values * idf[features.indices]
    if name.endswith("l2"):
        values = _row_l2_scale(values, features.indptr)
    return CsrMatrix(features.indptr, features.indices, values.astype(np.float32), features.num_cols)


def apply_to_batch(feat_ids, feat_vals, name: str, idf=None, xp=np):
    """The same transform on a padded batch, on device or host: exported predictors use it.

    Args:
      feat_ids: int32 [N, K]; feat_vals: float32 [N, K], 0 for padding (which stays 0).
      name: one of ``TRANSFORMS``; idf: float32 [D] (``tfidf_l2`` only).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      float32 [N, K] values. A row's norm is over its K given entries.
    """
    values = feat_vals
    if name == "none":
        return values
    if name != "l2":
        values = xp.log1p(xp.abs(values)) * xp.sign(values)
    if uses_idf(name):
        values = values * idf[feat_ids]
    if name.endswith("l2"):
        norms = xp.sqrt((values * values).sum(axis=-1, keepdims=True))
        values = values / xp.where(norms == 0, 1.0, norms)
    return values.astype(xp.float32)
