"""Data held in Python as the models' CSR: scipy.sparse (any format), dense numpy, lists of label ids.

``as_features`` and ``as_labels`` check everything up front with numpy and raise one
``ValueError``-family error naming the problem (a NaN, a negative id, a wrong width), so that a
bad input never reaches JAX. scipy is imported only when a scipy matrix is handed in.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset


def _is_scipy(value: Any) -> bool:
    return type(value).__module__.startswith("scipy.sparse")


def as_features(features: Any, num_features: int | None = None, what: str = "X") -> CsrMatrix:
    """[N, D] features from a CsrMatrix, a scipy.sparse matrix or array, or a 2-D array.

    Args:
      features: the rows; values must be finite.
      num_features: D the model expects, or None to take the input's width.
      what: the argument's name in error messages.

    Raises:
      ValueError: not 2-D, a width other than ``num_features``, NaN or infinite values.
      TypeError: something that is not a matrix.
    """
    if isinstance(features, CsrMatrix):
        matrix = features
    elif _is_scipy(features):
        if len(features.shape) != 2:
            raise ValueError(f"{what}: a 2-D [N, D] matrix is needed, got shape {features.shape}")
        matrix = CsrMatrix.from_scipy(features)
    elif isinstance(features, (np.ndarray, list, tuple)):
        dense = np.asarray(features)
        if dense.ndim != 2:
            raise ValueError(f"{what}: a 2-D [N, D] array is needed, got shape {dense.shape}")
        if not (np.issubdtype(dense.dtype, np.number) or dense.dtype == bool):
            raise TypeError(f"{what}: numbers are needed, got an array of {dense.dtype}")
        dense = dense.astype(np.float32)
        rows, cols = np.nonzero(dense)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
        matrix = CsrMatrix(indptr, cols, dense[rows, cols], dense.shape[1])
    else:
        raise TypeError(f"{what}: expected a scipy.sparse matrix, a 2-D numpy array or a CsrMatrix, "
                        f"got {type(features).__name__}")
    bad = ~np.isfinite(matrix.values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(matrix.indptr, first, side="right") - 1)
        raise ValueError(f"{what}: {int(bad.sum())} values are NaN or infinite (the first in row {row}, "
                         f"column {int(matrix.indices[first])})")
    if num_features is not None and matrix.num_cols != num_features:
        raise ValueError(f"{what} has {matrix.num_cols} columns (features); the model was trained with "
                         f"D={num_features}")
    return matrix


def as_labels(labels: Any, num_rows: int, num_labels: int | None = None, what: str = "Y") -> CsrMatrix:
    """[N, L] 0/1 labels from a sparse or dense indicator matrix, a CsrMatrix or a list of id lists.

    Args:
      labels: an indicator (stored entries 1, or True) or one list of label ids per point.
      num_rows: N, the feature rows they belong to.
      num_labels: L, or None: the indicator's width, or 1 + the largest id of the lists.
      what: the argument's name in error messages.

    Raises:
      ValueError: a row count other than N, negative ids or ids >= L, repeated ids in one row,
        indicator values other than 0 and 1, a width other than ``num_labels``.
    """
    if isinstance(labels, CsrMatrix) or _is_scipy(labels) or (
            isinstance(labels, np.ndarray) and labels.ndim == 2):
        matrix = as_features(labels, None, what)
        keep = matrix.values != 0
        if np.any(matrix.values[keep] != 1):
            raise ValueError(f"{what}: an indicator matrix holds only 0 and 1, found "
                             f"{matrix.values[keep][matrix.values[keep] != 1][0]:g}")
        rows = np.repeat(np.arange(matrix.num_rows), matrix.row_nnz())[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=matrix.num_rows))])
        matrix = CsrMatrix(indptr, matrix.indices[keep], matrix.values[keep], matrix.num_cols)
    else:
        matrix = _from_id_lists(labels, what)
    if matrix.num_rows != num_rows:
        raise ValueError(f"{what} has {matrix.num_rows} rows but X has {num_rows}: one label row per point")
    _check_unique(matrix, what)
    if num_labels is not None:
        if matrix.indices.size and matrix.indices.max() >= num_labels:
            raise ValueError(f"{what}: label id {int(matrix.indices.max())} is outside [0, {num_labels}), "
                             f"the model's L={num_labels} classes")
        matrix = CsrMatrix(matrix.indptr, matrix.indices, matrix.values, num_labels)
    return matrix


def _from_id_lists(labels: Sequence[Sequence[int]], what: str) -> CsrMatrix:
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise TypeError(f"{what}: expected a label indicator matrix or one list of label ids per point, "
                        f"got {type(labels).__name__}")
    rows = []
    for i, row in enumerate(labels):
        ids = np.asarray(list(row) if not isinstance(row, np.ndarray) else row)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"{what}[{i}]: a list of integer label ids is needed, got {row!r:.60}")
        if ids.size and ids.min() < 0:
            raise ValueError(f"{what}[{i}]: label id {int(ids.min())} is negative")
        rows.append(ids.astype(np.int64))
    counts = np.array([len(r) for r in rows], np.int64)
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if indices.size and indices.max() >= 2**31 - 1:
        raise ValueError(f"{what}: label id {int(indices.max())} does not fit in int32")
    num_labels = int(indices.max()) + 1 if indices.size else 0
    return CsrMatrix(np.concatenate([[0], np.cumsum(counts)]), indices,
                     np.ones(indices.size, np.float32), num_labels)


def _check_unique(matrix: CsrMatrix, what: str) -> None:
    rows = np.repeat(np.arange(matrix.num_rows, dtype=np.int64), matrix.row_nnz())
    keys = np.sort(rows * max(matrix.num_cols, 1) + matrix.indices)
    same = np.flatnonzero(keys[1:] == keys[:-1])
    if same.size:
        row = int(keys[same[0]] // max(matrix.num_cols, 1))
        raise ValueError(f"{what}[{row}]: label id {int(keys[same[0]] % max(matrix.num_cols, 1))} "
                         "appears twice")


def as_dataset(data: Any, source: str, num_labels: int | None = None) -> XCDataset:
    """An ``XCDataset`` as given, or one from an ``(X, Y)`` pair (``as_features``, ``as_labels``):
    features [N, D] and labels [N, L] held in Python, checked up front."""
    if isinstance(data, XCDataset):
        return data
    if not (isinstance(data, tuple) and len(data) == 2):
        raise TypeError(f"{source}: expected an XCDataset or an (X, Y) pair, got {type(data).__name__}")
    features = as_features(data[0], what=f"{source} X")
    return XCDataset(features, as_labels(data[1], features.num_rows, num_labels, what=f"{source} Y"), source)
