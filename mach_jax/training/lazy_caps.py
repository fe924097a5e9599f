"""The capped sizes of the lazy (row-sparse) step: U touched rows and T entries per batch.

Gathers and scatters cost about as much per padded slot as per real one, so the lazy step is
compiled for caps measured on the training data (``batch_caps``); the prefetch thread checks
each host batch (``batch_fits``) and sends one past a cap to a step compiled without caps.
"""

from __future__ import annotations

import numpy as np

from mach_jax.data.batches import Batch, epoch_order, num_batches
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


def batch_fits(batch: Batch, caps: tuple[int, int]) -> bool:
    """Whether a host batch touches at most ``caps = (U, T)`` distinct rows and nonzero entries."""
    touched = batch["feat_ids"][batch["feat_vals"] != 0]
    return touched.size <= caps[1] and len(np.unique(touched)) <= caps[0]
