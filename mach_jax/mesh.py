"""Device mesh and shardings: the ensemble's R axis is split over a ``reps`` mesh axis.

Every array with a leading R axis (parameters, optimizer moments, hash tables) is sharded as
``P("reps")``; batches and scalars are replicated. The same code runs on one CPU, one GPU or many
devices: only the mesh changes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

REPS_AXIS = "reps"


def make_mesh(num_repetitions: int, devices: list | None = None) -> Mesh:
    """A 1-D mesh over the most devices (at most all of them) that divide R evenly."""
    devices = list(devices if devices is not None else jax.devices())
    size = max(d for d in range(1, len(devices) + 1) if num_repetitions % d == 0)
    return Mesh(np.array(devices[:size]), (REPS_AXIS,))


def stacked(mesh: Mesh) -> NamedSharding:
    """Sharding of an array whose leading axis is R."""
    return NamedSharding(mesh, P(REPS_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for a state pytree: leaves with a leading R axis are split, scalars replicated."""
    return jax.tree.map(lambda leaf: stacked(mesh) if np.ndim(leaf) >= 1 else replicated(mesh), tree)
