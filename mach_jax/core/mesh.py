"""Device mesh and shardings: members split over a ``reps`` axis, batches over a ``data`` axis.

Every array with a leading R axis (parameters, optimizer moments, hash seeds) is sharded as
``P("reps")``; a batch is split over ``data`` (and so replicated over ``reps``); scalars are
replicated. Since nothing in a member's step reads another member's arrays, a step on a
``reps``-only mesh has no collective at all (tested on the compiled HLO). The same code runs on
one CPU, one GPU, a multi-GPU node or a pod: only the mesh changes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mach_jax.errors import ConfigError

REPS_AXIS = "reps"
DATA_AXIS = "data"


def make_mesh(num_members: int, rep_devices: int = 0, data_devices: int = 1,
              devices: list | None = None) -> Mesh:
    """A (reps, data) mesh; checked before anything is compiled.

    Args:
      num_members: R of this run (the members this process group trains or evaluates).
      rep_devices: devices along ``reps``; 0 picks the most that divide R evenly.
      data_devices: devices along ``data``.
      devices: the devices to use (default: all of ``jax.devices()``, every process's).

    Returns:
      A mesh of shape [rep_devices, data_devices].

    Raises:
      ConfigError: naming ``parallel.rep_devices`` / ``parallel.data_devices`` when the mesh
        cannot be built (R not divisible, more devices asked for than exist).
    """
    devices = list(devices if devices is not None else jax.devices())
    if data_devices < 1 or data_devices > len(devices):
        raise ConfigError(f"parallel.data_devices={data_devices}: need 1 to {len(devices)} "
                          f"(the devices available)", field="parallel.data_devices")
    if rep_devices == 0:
        fitting = len(devices) // data_devices
        rep_devices = max(d for d in range(1, fitting + 1) if num_members % d == 0)
    if num_members % rep_devices:
        raise ConfigError(f"parallel.rep_devices={rep_devices}: the {num_members} members cannot be "
                          "split evenly over it", field="parallel.rep_devices")
    if rep_devices * data_devices > len(devices):
        raise ConfigError(f"parallel.rep_devices={rep_devices} x parallel.data_devices={data_devices} "
                          f"needs {rep_devices * data_devices} devices, only {len(devices)} are "
                          "available", field="parallel.rep_devices")
    chosen = devices[:rep_devices * data_devices]
    missing = {d.process_index for d in devices} - {d.process_index for d in chosen}
    if missing:
        raise ConfigError(f"parallel.rep_devices={rep_devices} x parallel.data_devices={data_devices} "
                          f"uses {len(chosen)} of {len(devices)} devices and leaves process(es) "
                          f"{sorted(missing)} without members; choose R and the mesh so that every "
                          "process holds some", field="parallel.rep_devices")
    return Mesh(np.array(chosen).reshape(rep_devices, data_devices), (REPS_AXIS, DATA_AXIS))


def stacked(mesh: Mesh) -> NamedSharding:
    """Sharding of an array whose leading axis is R."""
    return NamedSharding(mesh, P(REPS_AXIS))


def batched(mesh: Mesh) -> NamedSharding:
    """Sharding of an array whose leading axis is the batch N."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for a state pytree: leaves with a leading R axis are split, scalars replicated."""
    return jax.tree.map(lambda leaf: stacked(mesh) if np.ndim(leaf) >= 1 else replicated(mesh), tree)


def put(tree: Any, sharding: Any) -> Any:
    """Places host arrays (identical on every process) onto a possibly multi-process sharding.

    Each process transfers only the shards its own devices hold.
    """
    shardings = jax.tree.map(lambda _: sharding, tree) if isinstance(sharding, NamedSharding) else sharding
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(lambda value, where: jax.make_array_from_callback(
        np.shape(value), where, lambda index: np.asarray(value)[index]), tree, shardings)


def local_rows(array: jax.Array) -> dict[int, np.ndarray]:
    """The rows of a leading-axis-sharded array that live on this process: {row index: values}.

    Reading only addressable shards needs no communication between processes.
    """
    rows = {}
    for shard in array.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        for offset, values in enumerate(np.asarray(shard.data)):
            rows[start + offset] = values
    return dict(sorted(rows.items()))


def fetch_replicated(tree: Any) -> Any:
    """Host copy of replicated arrays, read from a local device (no cross-process gather)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
