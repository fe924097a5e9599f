"""Grain for the host input path (``data.host_loader = "grain"``): the trainer's batches built by
Grain's thread pool instead of our own prefetch thread.

The items are exactly those of ``training.updates.host_batches``: ``(epoch, batch)`` for every global
step from the start step to the end of the last epoch, the batch from ``batches.make_batch`` over
the rows ``batches.epoch_order(N, seed, epoch)[index * n:(index + 1) * n]`` (n = batch size). A
``grain.MapDataset`` over the global step ids maps each to its item, and Grain's ``ReadOptions``
threads build several batches at once, in order, ahead of the consumer.

Grain's own shuffling (``MapDataset.shuffle``, index samplers) is not used: its permutation is not
ours, so the same seed would give other batches and other results than the "thread" loader and
than runs trained before. Resuming stays exact because a step's item is a pure function of
(seed, epoch, batch index): a run restarts at the checkpoint's step. The iterator's
``get_state()`` is ``{"next_index": i}``, i items past the start step; ``set_state`` moves it.
"""

from __future__ import annotations

import functools

from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.errors import ConfigError

# Threads building batches, and how many built batches may wait (at least the threads, else
# some threads idle). Measured on 2 CPU cores: docs/host_loader.md.
NUM_THREADS = 2
PREFETCH_BATCHES = 4


def _import_grain():
    try:
        import grain
    except ImportError as error:
        raise ConfigError('data.host_loader="grain" needs Grain: pip install grain',
                          field="data.host_loader") from error
    return grain


def grain_batches(data: XCDataset, shape: batches.BatchShape, seed: int, start_step: int,
                  steps_per_epoch: int, epochs: int, num_threads: int = NUM_THREADS,
                  prefetch_batches: int = PREFETCH_BATCHES):
    """A Grain iterator of ``(epoch, batch)`` from global step ``start_step`` to the last epoch's end.

    Args:
      data: the training points, features [N, D] and labels [N, L] (already capped to the shape).
      shape: the fixed batch geometry (n points, K feature slots, M label slots).
      seed: the run's seed (``train.seed``): epoch e's order is ``batches.epoch_order(N, seed, e)``.
      start_step: the first global step (0, or the checkpoint's step when resuming).
      steps_per_epoch: ceil(N / n).
      epochs: the number of epochs; the last step is ``epochs * steps_per_epoch - 1``.
      num_threads: Grain threads building batches (0: built one by one on the consumer's thread).
      prefetch_batches: built batches that may wait (Grain's ``prefetch_buffer_size``).

    Returns:
      A ``grain.DatasetIterator`` of ``(epoch, batch)``: feat_ids int32 [n, K], feat_vals float32
      [n, K], label_ids int32 [n, M], label_mask float32 [n, M], point_mask float32 [n]; it has
      ``get_state``/``set_state`` and ``close`` (which stops its threads).

    Raises:
      ConfigError: Grain is not installed.
    """
    grain = _import_grain()
    # One permutation of N per epoch, not per batch (O(N) each); two: the threads may straddle an
    # epoch's end. A concurrent miss computes the same pure order twice, which is harmless.
    order_of = functools.lru_cache(maxsize=2)(functools.partial(batches.epoch_order, data.num_points, seed))

    def build(step: int) -> tuple[int, batches.Batch]:
        epoch, index = divmod(step, steps_per_epoch)
        rows = order_of(epoch)[index * shape.batch_size:(index + 1) * shape.batch_size]
        return epoch, batches.make_batch(data, rows, shape)

    steps = grain.MapDataset.range(start_step, epochs * steps_per_epoch).map(build)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(steps.to_iter_dataset(options))
