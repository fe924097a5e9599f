"""The capped sizes of the gathering steps: U touched rows and T entries per batch.

Gathers and scatters cost about as much per padded slot as per real one, so the lazy (row-sparse)
step, and the gathered embedding bag of any step, are compiled for caps measured on the training
data (``batch_caps``); a batch past a cap goes to a step compiled without caps. Which batches
fit is checked per epoch over its whole order (``epoch_fits``), an epoch ahead on a background
thread (``CapRouter``), not per batch on the hot path; so the device-resident path, which has no
host batch, routes exactly as the host path does.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from mach_jax.data.batches import epoch_order, num_batches
from mach_jax.data.csr import CsrMatrix


def batch_caps(features: CsrMatrix, batch_size: int, seed: int, max_batches: int = 64,
               margin: float = 1.15, multiple: int = 256) -> tuple[int, int]:
    """Caps (U, T) on the distinct rows and the nonzero entries of a training batch.

    Measured on up to ``max_batches`` batches of epoch 0, times ``margin``, rounded up to a
    multiple of ``multiple``: a pure function of the data and seed, so a resumed run compiles
    the same step. A batch past a cap is still trained exactly (see ``sparse_update``).

    Returns:
      ``(max_rows, max_entries)``.
    """
    order = epoch_order(features.num_rows, seed, 0)
    count = num_batches(features.num_rows, batch_size)
    most_rows = most_entries = 0
    for index in np.linspace(0, count - 1, min(count, max_batches)).astype(int):
        rows = features.take(order[index * batch_size:(index + 1) * batch_size])
        touched = rows.indices[rows.values != 0]
        most_rows = max(most_rows, len(np.unique(touched)))
        most_entries = max(most_entries, len(touched))

    def rounded(value: int) -> int:
        return max(multiple, -(-int(np.ceil(value * margin)) // multiple) * multiple)

    return rounded(most_rows), rounded(most_entries)


def epoch_fits(features: CsrMatrix, order: np.ndarray, batch_size: int, caps: tuple[int, int]) -> np.ndarray:
    """Whether each batch ``batches.train_batches`` builds from ``order`` touches at most
    ``caps = (U, T)`` distinct rows and nonzero entries: bool [num_batches].

    The epoch's rows are gathered once; a batch's distinct rows are counted without a sort: each
    entry stamps its position on its row id, and exactly one entry per distinct id finds its own
    position there (whichever of the writes numpy keeps).

    Args:
      features: the training features [P, D], rows already capped to the padded width K.
      order: the epoch's point order, int [P] (``epoch_order``).
    """
    rows = features.take(order)
    count = num_batches(features.num_rows, batch_size)
    ends = rows.indptr[np.minimum(np.arange(count + 1) * batch_size, features.num_rows)]
    stamp = np.zeros(features.num_cols, np.int64)
    fits = np.zeros(count, bool)
    for index in range(count):
        values = rows.values[ends[index]:ends[index + 1]]
        ids = rows.indices[ends[index]:ends[index + 1]][values != 0]
        positions = np.arange(len(ids))
        stamp[ids] = positions
        fits[index] = len(ids) <= caps[1] and np.count_nonzero(stamp[ids] == positions) <= caps[0]
    return fits


class CapRouter:
    """Whether the batch of a global step fits the caps, from one ``epoch_fits`` per epoch,
    computed on a background thread an epoch ahead (so the step never waits for it but once).

    Args: the training ``features`` [P, D], the batch size N, ``train.seed``, the caps (U, T)
    and the run's number of epochs. ``close`` stops the thread.
    """

    def __init__(self, features: CsrMatrix, batch_size: int, seed: int, caps: tuple[int, int], epochs: int):
        self.features, self.batch_size, self.seed, self.caps, self.epochs = features, batch_size, seed, caps, epochs
        self.steps_per_epoch = num_batches(features.num_rows, batch_size)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mach_jax-caps")
        self._epochs: dict[int, concurrent.futures.Future] = {}

    def _epoch_fits(self, epoch: int) -> np.ndarray:
        order = epoch_order(self.features.num_rows, self.seed, epoch)
        return epoch_fits(self.features, order, self.batch_size, self.caps)

    def fits(self, step: int) -> bool:
        epoch, index = divmod(step, self.steps_per_epoch)
        for ahead in (epoch, epoch + 1):
            if ahead < self.epochs and ahead not in self._epochs:
                self._epochs[ahead] = self._pool.submit(self._epoch_fits, ahead)
        for done in [e for e in self._epochs if e < epoch]:
            del self._epochs[done]
        return bool(self._epochs[epoch].result()[index])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
