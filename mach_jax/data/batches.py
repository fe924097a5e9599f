"""Host-side input: CSR rows -> fixed-shape, padded numpy batches.

Every batch of a run has the same shapes, so the jitted step compiles once:

- ``feat_ids`` int32 [N, K] and ``feat_vals`` float32 [N, K]: the row's features, padded with
  value 0 (a zero value is the feature mask: it adds nothing to the embedding bag);
- ``label_ids`` int32 [N, M] and ``label_mask`` float32 [N, M]: the row's labels, padded;
- ``point_mask`` float32 [N]: 0 for the padding points of the last, partial batch.

Rows wider than the cap K (or M) are cut once, before batching, by ``cap_row_width``.
``Prefetcher`` builds and transfers batches on a background thread, ahead of the step.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.errors import DataFormatError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """Fixed batch geometry: N points, K feature slots, M label slots."""

    batch_size: int
    max_nnz: int
    max_labels: int


def cap_row_width(matrix: CsrMatrix, cap: int, overflow: str, *, keep_largest: bool, source: str,
                  what: str) -> CsrMatrix:
    """Cuts every row to at most ``cap`` entries, or refuses rows past it.

    Args:
      matrix: [N, cols] CSR.
      cap: the most entries a row may keep.
      overflow: "truncate" to cut, "error" to raise DataFormatError naming the first wide row.
      keep_largest: keep the ``cap`` entries of largest |value| (else the first ``cap``); kept
        entries stay in file order.
      source: the data's file name, for the error.
      what: "features" or "labels", for the error.

    Returns:
      The capped [N, cols] CSR (the same object when no row is past the cap).
    """
    counts = matrix.row_nnz()
    wide = np.flatnonzero(counts > cap)
    if wide.size == 0:
        return matrix
    if overflow == "error":
        row = int(wide[0])
        raise DataFormatError(source, row + 2, f"point {row} has {counts[row]} {what}, more than the "
                              f"cap of {cap} (raise the cap or use overflow='truncate')")
    row_ids = np.repeat(np.arange(matrix.num_rows), counts)
    order = np.arange(len(matrix.indices))
    if keep_largest:
        order = np.lexsort((-np.abs(matrix.values), row_ids))
    rank_in_row = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], counts)
    kept = np.sort(order[rank_in_row < cap])
    indptr = np.zeros_like(matrix.indptr)
    np.cumsum(np.minimum(counts, cap), out=indptr[1:])
    return CsrMatrix(indptr, matrix.indices[kept], matrix.values[kept], matrix.num_cols)


def pad_rows(matrix: CsrMatrix, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Gathers CSR rows into dense padded arrays; a row id of -1 gives an empty row.

    Args:
      matrix: [num_rows, cols] CSR whose rows are at most ``width`` wide.
      rows: int [n] row ids, or -1 for padding.
      width: the padded width.

    Returns:
      ``(ids, values)``: int32 [n, width] and float32 [n, width], padded with 0.
    """
    valid = rows >= 0
    safe_rows = np.where(valid, rows, 0)
    starts = matrix.indptr[safe_rows]
    counts = np.where(valid, matrix.indptr[safe_rows + 1] - starts, 0)
    if counts.size and counts.max() > width:
        raise ValueError(f"a row has {counts.max()} entries, wider than the padded width {width}")
    out_rows = np.repeat(np.arange(len(rows)), counts)
    out_starts = np.cumsum(counts) - counts
    positions = np.arange(counts.sum()) - np.repeat(out_starts, counts)
    sources = np.repeat(starts, counts) + positions
    ids = np.zeros((len(rows), width), dtype=np.int32)
    values = np.zeros((len(rows), width), dtype=np.float32)
    ids[out_rows, positions] = matrix.indices[sources]
    values[out_rows, positions] = matrix.values[sources]
    return ids, values


def make_batch(dataset: XCDataset, rows: np.ndarray, shape: BatchShape) -> Batch:
    """Builds one fixed-shape batch from row ids (-1 rows are padding points)."""
    if len(rows) < shape.batch_size:
        rows = np.concatenate([rows, np.full(shape.batch_size - len(rows), -1, dtype=rows.dtype)])
    feat_ids, feat_vals = pad_rows(dataset.features, rows, shape.max_nnz)
    label_ids, label_mask = pad_rows(dataset.labels, rows, shape.max_labels)
    return {
        "feat_ids": feat_ids,
        "feat_vals": feat_vals,
        "label_ids": label_ids,
        "label_mask": (label_mask != 0).astype(np.float32),
        "point_mask": (rows >= 0).astype(np.float32),
    }


def num_batches(num_points: int, batch_size: int) -> int:
    return -(-num_points // batch_size)


def epoch_order(num_points: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled point order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_points)


def train_batches(dataset: XCDataset, shape: BatchShape, seed: int, epoch: int,
                  start_batch: int = 0) -> Iterator[Batch]:
    """The batches of one shuffled epoch, from batch ``start_batch`` on (for resuming)."""
    order = epoch_order(dataset.num_points, seed, epoch)
    for index in range(start_batch, num_batches(dataset.num_points, shape.batch_size)):
        yield make_batch(dataset, order[index * shape.batch_size:(index + 1) * shape.batch_size], shape)


def eval_batches(dataset: XCDataset, shape: BatchShape) -> Iterator[Batch]:
    """The batches of a dataset in file order; the last one padded with masked points."""
    for start in range(0, dataset.num_points, shape.batch_size):
        yield make_batch(dataset, np.arange(start, min(start + shape.batch_size, dataset.num_points)), shape)


def widest_row(matrix: CsrMatrix) -> int:
    return int(matrix.row_nnz().max(initial=0))


def next_power_of_two(width: int) -> int:
    """The smallest power of 2 >= ``width`` (1 for 0): evaluation rows are padded to it, so inputs
    of similar width reuse one compilation."""
    return 1 << max(int(width) - 1, 0).bit_length()


class Prefetcher:
    """Builds batches on a background thread and transfers them ahead of the step.

    Up to ``depth`` batches wait on the device while the current step runs (double buffering for
    depth 2), so host batch assembly and the host-to-device copy overlap device compute. An error
    in the producer is raised in the consumer; closing (or leaving a ``with`` block) stops it.

    Args:
      batches: an iterator of host items (e.g. ``(epoch, batch)`` pairs).
      place: applied on the background thread to each item, e.g. a ``jax.device_put`` with the
        mesh's batch sharding.
      depth: how many placed items may wait.
    """

    _DONE = object()

    def __init__(self, batches: Iterator, place, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(batches, place), daemon=True,
                                        name="mach_jax-prefetch")
        self._thread.start()

    def _produce(self, batches: Iterator, place) -> None:
        try:
            for item in batches:
                if self._stop.is_set():
                    return
                self._put(place(item))
            self._put(self._DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
