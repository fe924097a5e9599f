"""In-memory sparse data: CSR matrices and multi-label datasets (N points, D features, L labels).

Everything host-side is numpy CSR; ``DataFormatError`` is the one error type for malformed data,
naming the file, the 1-based line (header = line 1) and the problem.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mach_jax.errors import DataFormatError

_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True, eq=False)
class CsrMatrix:
    """Compressed sparse rows; `==` compares all arrays exactly.

    Attributes:
      indptr: int64 [N + 1], row i holds entries indptr[i]:indptr[i + 1].
      indices: int32 [nnz] column ids in [0, num_cols), in file order within a row.
      values: float32 [nnz].
      num_cols: number of columns (D for features, L for labels).
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    num_cols: int

    def __post_init__(self):
        indptr, indices = np.asarray(self.indptr), np.asarray(self.indices)
        values = np.asarray(self.values)
        num_cols = int(self.num_cols)
        if indptr.ndim != 1 or indices.ndim != 1 or values.ndim != 1 or len(indptr) < 1:
            raise ValueError("indptr, indices and values must be 1-D, indptr non-empty")
        if indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(values):
            raise ValueError(f"indptr must run from 0 to nnz={len(indices)} = len(values)"
                             f"={len(values)}, got {indptr[0]}..{indptr[-1]}")
        if np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if not 0 <= num_cols <= _INT32_MAX:
            raise ValueError(f"num_cols={num_cols} outside [0, 2**31)")
        if indices.size and (indices.min() < 0 or indices.max() >= num_cols):
            raise ValueError(f"column ids must lie in [0, {num_cols})")
        object.__setattr__(self, "indptr", np.ascontiguousarray(indptr, np.int64))
        object.__setattr__(self, "indices", np.ascontiguousarray(indices, np.int32))
        object.__setattr__(self, "values", np.ascontiguousarray(values, np.float32))
        object.__setattr__(self, "num_cols", num_cols)

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    def row_nnz(self) -> np.ndarray:
        """Returns int64 [N]: stored entries per row."""
        return np.diff(self.indptr)

    def take(self, rows) -> CsrMatrix:
        """Selects rows (int ids, negative allowed, or a bool mask [N]); returns [len(rows), C]."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.num_rows,):
                raise IndexError(f"bool mask of shape {rows.shape}, need ({self.num_rows},)")
            rows = np.flatnonzero(rows)
        elif rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"row ids must be integers, got {rows.dtype}")
        if rows.ndim != 1:
            raise IndexError(f"row ids must be 1-D, got shape {rows.shape}")
        rows = rows.astype(np.int64)
        n = self.num_rows
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row id out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.concatenate([[0], np.cumsum(counts)])
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return CsrMatrix(indptr, self.indices[gather], self.values[gather], self.num_cols)

    def __getitem__(self, rows) -> CsrMatrix:
        if isinstance(rows, slice):
            rows = np.arange(self.num_rows)[rows]
        return self.take(rows)

    def to_dense(self) -> np.ndarray:
        """Returns float32 [N, C]; duplicate entries (never produced by the parser) add up."""
        out = np.zeros((self.num_rows, self.num_cols), np.float32)
        np.add.at(out, (np.repeat(np.arange(self.num_rows), self.row_nnz()), self.indices),
                  self.values)
        return out

    @classmethod
    def from_scipy(cls, matrix) -> CsrMatrix:
        """A [N, C] scipy.sparse matrix or array (any format) as CSR, rows in order; within a
        row, columns in the matrix's CSR order. Explicit zeros are kept."""
        import scipy.sparse  # an optional extra: only those who hand us scipy need it

        if not scipy.sparse.issparse(matrix):
            raise TypeError(f"expected a scipy.sparse matrix, got {type(matrix).__name__}")
        csr = scipy.sparse.csr_matrix(matrix)
        rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        keys = np.sort(rows * csr.shape[1] + csr.indices)
        if np.any(keys[1:] == keys[:-1]):  # duplicates add up, as scipy reads them; else order is kept
            csr = csr.copy()
            csr.sum_duplicates()
        return cls(csr.indptr.astype(np.int64), csr.indices.astype(np.int32),
                   csr.data.astype(np.float32), csr.shape[1])

    def to_scipy(self):
        """Returns a float32 [N, C] ``scipy.sparse.csr_matrix`` over copies of the arrays."""
        import scipy.sparse

        return scipy.sparse.csr_matrix((self.values.copy(), self.indices.copy(), self.indptr.copy()),
                                       shape=(self.num_rows, self.num_cols))

    def __eq__(self, other):
        if not isinstance(other, CsrMatrix):
            return NotImplemented
        return (self.num_cols == other.num_cols and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.values, other.values))


@dataclasses.dataclass(frozen=True)
class XCDataset:
    """A multi-label dataset; `==` compares the matrices, not `source`.

    Attributes:
      features: [N, D] feature matrix.
      labels: [N, L] label matrix, values all 1.
      source: path or description of where it came from.
    """

    features: CsrMatrix
    labels: CsrMatrix
    source: str = dataclasses.field(default="<memory>", compare=False)

    def __post_init__(self):
        if self.features.num_rows != self.labels.num_rows:
            raise ValueError(f"{self.features.num_rows} feature rows but "
                             f"{self.labels.num_rows} label rows")
        if not np.all(self.labels.values == 1):
            raise ValueError("label values must all be 1")

    @property
    def num_points(self) -> int:
        return self.features.num_rows

    @property
    def num_features(self) -> int:
        return self.features.num_cols

    @property
    def num_labels(self) -> int:
        return self.labels.num_cols

    def require_points(self, purpose: str) -> None:
        """Refuses a dataset with no points for ``purpose`` ("train on", "evaluate")."""
        if self.num_points == 0:
            raise DataFormatError(self.source, 1, f"the header declares 0 points: nothing to {purpose}")

    @classmethod
    def from_scipy(cls, features, labels, source: str = "<memory>") -> XCDataset:
        """A dataset from scipy.sparse features [N, D] and a 0/1 label indicator [N, L]."""
        labels = CsrMatrix.from_scipy(labels)
        if labels.values.size and not np.all(labels.values == 1):
            raise ValueError("labels: an indicator matrix holds only 1 at its stored entries")
        return cls(CsrMatrix.from_scipy(features), labels, source)

    def to_scipy(self):
        """Returns ``(features [N, D], labels [N, L])`` as ``scipy.sparse.csr_matrix``."""
        return self.features.to_scipy(), self.labels.to_scipy()

    def take(self, rows, source: str | None = None) -> XCDataset:
        """The points ``rows`` (ids or a bool mask [N], as ``CsrMatrix.take``), in that order."""
        return XCDataset(self.features.take(rows), self.labels.take(rows),
                         self.source if source is None else source)
