"""Device-resident training data: the whole padded training set put on the device once, each
step's batch gathered there by point ids (``data.device_data``).

The resident arrays are exactly ``batches.pad_rows`` of every point (P points): feat_ids int32
[P, K], feat_vals float32 [P, K], label_ids int32 [P, M], label_mask float32 [P, M], placed like a
batch (split over the mesh's ``data`` axis, replicated over ``reps``). A step's batch is named by
its point ids, int32 [N] in epoch order with -1 for the padding points of the last, partial batch
(``step_rows``, from ``batches.epoch_order``), and ``gather_batch`` builds on device the very
arrays ``batches.make_batch`` builds on the host, so training on either gives the same bits.

"auto" (``resolve``) keeps the data on the device when the device reports its memory (GPU,
TPU) and the padded arrays take at most ``DEVICE_SHARE`` of what is free there once the training
state is on it; the CPU reports none, and there the host path costs no transfer anyway.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.core import mesh as mesh_lib
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.training import resource_check
from mach_jax.training.resources import format_bytes

log = logging.getLogger("mach_jax")

# Of the device memory free once the state is on it, the most the resident data may take: the
# rest is for the step's gradients, optimizer updates and activations (a dense step's gradients
# alone are as large as the parameters). Chosen, not measured: generous to the step.
DEVICE_SHARE = 0.25

Resident = dict[str, jax.Array]


def resident_bytes(num_points: int, shape: batches.BatchShape) -> int:
    """Bytes of the padded arrays of ``num_points`` points: 8 per feature slot and label slot
    (an int32 id and a float32 value or mask)."""
    return 8 * num_points * (shape.max_nnz + shape.max_labels)


def resolve(setting: str, num_points: int, shape: batches.BatchShape, data_devices: int,
            budget: resource_check.Budget | None = None) -> tuple[bool, str]:
    """``data.device_data`` resolved: ``(on, why)``, the reason for the start-up log line.

    Args:
      setting: "on", "off" or "auto".
      num_points: P, the training points.
      shape: the batch geometry (K, M).
      data_devices: devices along the mesh's ``data`` axis (each holds 1/data_devices of the rows).
      budget: the memory free now, with the state already placed (default: measured now).
    """
    if setting != "auto":
        return setting == "on", f"data.device_data={setting}"
    need = -(-resident_bytes(num_points, shape) // data_devices)
    budget = budget or resource_check.memory_budget()
    if budget.device is None:
        return False, "data.device_data=auto: the host path on a device without its own memory (CPU)"
    fits = need <= DEVICE_SHARE * budget.device
    return fits, (f"data.device_data=auto: {format_bytes(need)} per device "
                  f"{'<=' if fits else '>'} {DEVICE_SHARE:.0%} of the {format_bytes(budget.device)} free")


def padded_arrays(dataset: XCDataset, shape: batches.BatchShape, multiple: int = 1) -> dict[str, np.ndarray]:
    """The host arrays of every point, padded as a batch pads them (``batches.make_batch`` of all
    rows, without its point mask): ``[P', K]`` and ``[P', M]``, with P' = P rounded up to
    ``multiple`` by empty rows that no step names."""
    rows = np.arange(-(-dataset.num_points // multiple) * multiple)
    rows[dataset.num_points:] = -1
    arrays = batches.make_batch(dataset, rows, dataclasses.replace(shape, batch_size=len(rows)))
    del arrays["point_mask"]  # gather_batch makes each step's own
    return arrays


def put_resident(dataset: XCDataset, shape: batches.BatchShape, mesh) -> Resident:
    """The padded training set on the mesh, split over ``data`` like a batch (``padded_arrays``)."""
    data_devices = mesh.shape[mesh_lib.DATA_AXIS]
    return mesh_lib.put(padded_arrays(dataset, shape, data_devices), mesh_lib.batched(mesh))


def gather_batch(resident: Resident, rows: jax.Array) -> dict[str, jax.Array]:
    """On device, the batch of points ``rows`` (int32 [N], -1: a padding point): the arrays
    ``batches.make_batch`` builds on the host, each [N, K] or [N, M], and point_mask [N]."""
    valid = rows >= 0
    safe = jnp.where(valid, rows, 0)
    batch = {name: jnp.where(valid[:, None], jnp.take(array, safe, axis=0), jnp.zeros((), array.dtype))
             for name, array in resident.items()}
    batch["point_mask"] = valid.astype(jnp.float32)
    return batch


class StepRows:
    """The point ids of each global step's batch, int32 [N] with -1 padding, as the host path's
    ``batches.train_batches`` takes them: epoch ``step // steps_per_epoch`` of
    ``batches.epoch_order(P, seed, epoch)``, batch ``step % steps_per_epoch`` of it.

    One epoch's order is kept (computed once per epoch: O(P)).
    """

    def __init__(self, num_points: int, batch_size: int, seed: int):
        self.num_points, self.batch_size, self.seed = num_points, batch_size, seed
        self.steps_per_epoch = batches.num_batches(num_points, batch_size)
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s point order, int [P]."""
        if epoch != self._epoch:
            self._epoch, self._order = epoch, batches.epoch_order(self.num_points, self.seed, epoch)
        return self._order

    def __call__(self, steps: range, length: int) -> np.ndarray:
        """int32 [length, N]: the rows of ``steps`` (at most ``length``), then rows of -1."""
        out = np.full((length, self.batch_size), -1, np.int32)
        for slot, step in enumerate(steps):
            epoch, index = divmod(step, self.steps_per_epoch)
            ids = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
            out[slot, :len(ids)] = ids
        return out
