"""The XC metrics as plain functions of (true labels, predicted ids), named as pyxclib names them.

    from mach_jax.readout.xc_metrics import precision, ndcg, psprecision, recall, inv_propensity
    ips = inv_propensity(Y_train, 0.55, 1.5)          # float32 [L]
    precision(Y_test, ids, k=5)                       # [P@1, ..., P@5]

``Y`` is a 0/1 indicator [N, L] (scipy.sparse, dense or ``CsrMatrix``) or one list of label ids
per point; ``ids`` is int [N, >= k], best first (id L, an empty place of approximate decoding,
is a miss). The definitions are those of ``readout.metrics`` (its module docstring), so that
these functions on ``MachEnsemble.predict``'s ids give what ``MachEnsemble.evaluate`` reports:
P@k divides by k, a point without labels counts as 0, PSP@k is the ratio of summed propensity
gains to the best possible sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mach_jax.data.csr import CsrMatrix
from mach_jax.data.in_memory import as_labels
from mach_jax.readout.metrics import inverse_propensity


def inv_propensity(labels: Any, a: float = 0.55, b: float = 1.5, num_labels: int | None = None) -> np.ndarray:
    """1 / p_l of every label from the training labels [N, L] (pyxclib's ``compute_inv_propesity``);
    ``num_labels``: L for id lists (default: 1 + the largest id).

    Returns:
      float32 [L]: 1 + C (N_l + B)^-A, C = (ln N - 1) (B + 1)^A, N_l label l's count.
    """
    matrix = _labels(labels, None, num_labels)
    counts = np.bincount(matrix.indices, minlength=matrix.num_cols)
    return inverse_propensity(counts, matrix.num_rows, a, b)


def precision(labels: Any, ids: np.ndarray, k: int = 5) -> np.ndarray:
    """P@1..P@k: float64 [k], entry j the mean over points of hits in the top j + 1, / (j + 1)."""
    hits = _hits(labels, ids, k)[0]
    return np.cumsum(hits.mean(0)) / np.arange(1, k + 1)


def ndcg(labels: Any, ids: np.ndarray, k: int = 5) -> np.ndarray:
    """nDCG@1..nDCG@k: float64 [k], DCG over the DCG of min(|y|, j) labels ranked first."""
    hits, matrix = _hits(labels, ids, k)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = np.cumsum(hits * discounts, axis=1)  # [N, k]
    # The ideal DCG@j of a point: its min(|y|, j) labels in the first places.
    ideal_at = np.cumsum(discounts)[np.minimum(np.arange(k)[None, :], matrix.row_nnz()[:, None] - 1)]
    has = matrix.row_nnz()[:, None] > 0
    return np.where(has, dcg / np.where(has, ideal_at, 1.0), 0.0).mean(0)


def recall(labels: Any, ids: np.ndarray, k: int = 5) -> np.ndarray:
    """R@1..R@k: float64 [k], entry j the mean over points of the share of a point's labels in its
    top j + 1 (a point without labels counts as 0): how much a shortlist of j + 1 classes holds."""
    hits, matrix = _hits(labels, ids, k)
    sizes = matrix.row_nnz()[:, None]
    return np.where(sizes > 0, np.cumsum(hits, axis=1) / np.maximum(sizes, 1), 0.0).mean(0)


def psprecision(labels: Any, ids: np.ndarray, inv_psp: np.ndarray, k: int = 5) -> np.ndarray:
    """PSP@1..PSP@k: float64 [k]; ``inv_psp`` float [L] from ``inv_propensity`` of the training labels."""
    inv_psp = np.asarray(inv_psp, np.float64)
    if inv_psp.ndim != 1:
        raise ValueError(f"inv_psp: one value per label, [L], is needed, got shape {inv_psp.shape}")
    hits, matrix = _hits(labels, ids, k, num_labels=inv_psp.size)
    top = np.asarray(ids)[:, :k]
    gains = hits * np.where(top < matrix.num_cols, inv_psp[np.minimum(top, matrix.num_cols - 1)], 0.0)
    true = inv_psp[matrix.indices]
    # Each point's own labels by 1/p, largest first: the best any top-k could hold.
    order = np.lexsort((-true, np.repeat(np.arange(matrix.num_rows), matrix.row_nnz())))
    rank = np.arange(true.size) - np.repeat(matrix.indptr[:-1], matrix.row_nnz())
    best = np.zeros((matrix.num_rows, k))
    keep = rank < k
    rows = np.repeat(np.arange(matrix.num_rows), matrix.row_nnz())
    best[rows[keep], rank[keep]] = true[order][keep]
    ks = np.arange(1, k + 1)
    ideal = np.cumsum(best.sum(0)) / ks
    return np.where(ideal > 0, (np.cumsum(gains.sum(0)) / ks) / np.where(ideal > 0, ideal, 1.0), 0.0)


def _labels(labels: Any, num_rows: int | None, num_labels: int | None = None) -> CsrMatrix:
    if num_rows is None:
        num_rows = labels.num_rows if isinstance(labels, CsrMatrix) else (
            labels.shape[0] if hasattr(labels, "shape") else len(labels))
    return as_labels(labels, num_rows, num_labels)


def _hits(labels: Any, ids: np.ndarray, k: int, num_labels: int | None = None) -> tuple[np.ndarray, CsrMatrix]:
    """float64 [N, k]: 1 where predicted id j of point i is one of its labels; and the labels."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids: an integer [N, k] array is needed, got {ids.dtype} of shape {ids.shape}")
    if not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k={k}: must be between 1 and the {ids.shape[1]} ids given per point")
    if ids.size and ids.min() < 0:
        raise ValueError(f"ids: predicted id {int(ids.min())} is negative")
    matrix = _labels(labels, ids.shape[0], num_labels)
    width = max(matrix.num_cols, int(ids.max(initial=0)) + 1)
    rows = np.repeat(np.arange(matrix.num_rows, dtype=np.int64), matrix.row_nnz())
    keys = np.sort(rows * width + matrix.indices)
    wanted = np.arange(ids.shape[0], dtype=np.int64)[:, None] * width + ids[:, :k]
    at = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
    hits = (keys[at] == wanted) if keys.size else np.zeros(wanted.shape, bool)
    return hits.astype(np.float64), matrix
