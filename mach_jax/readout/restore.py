"""Reading trained members back: the parameters [R, ...] and, with learned partitions, the class
-> bucket table [R, L] of one workdir's newest checkpoint or of groups trained apart, as host
arrays (the optimiser's moments are never read)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from mach_jax.config import Config
from mach_jax.core import hashing, model
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import WorkdirError
from mach_jax.storage import checkpoints, workdir as wd


@dataclasses.dataclass(frozen=True)
class RestoredMembers:
    """What ``restore_members`` reads: the run's config and data shape, its groups, the members'
    parameters [R, ...] and learned class -> bucket table [R, L] (None: hashed buckets) as host
    arrays, and the step they were saved at."""

    config: Config
    info: RunInfo
    groups: list
    params: model.Params
    label_table: np.ndarray | None
    step: int


def restore_members(*workdirs: str | Path) -> RestoredMembers:
    """The members of the newest checkpoints of one workdir, or of groups trained apart
    (``workdir.find_groups``), concatenated over R; the optimiser's moments are never read.

    Raises:
      WorkdirError: the groups stopped at different steps (or as ``find_groups``).
    """
    config, info, groups = wd.find_groups([Path(w) for w in workdirs])
    learned = config.partition.learned
    abstract = [model.param_shapes(config.model, info.num_features, tuple(group.rep_ids)) for group in groups]
    tables = [label_table_shape(config, len(group.rep_ids), info.num_labels) for group in groups]
    restored = [checkpoints.restore_params(group.path, shapes, table)
                for group, shapes, table in zip(groups, abstract, tables)]
    # An export for serving may store the tables in 16 bits (``export.export_params``): read as trained.
    restored = [(step, jax.tree.map(lambda leaf, want: np.asarray(leaf).astype(want.dtype, copy=False), params,
                                    shapes), table) for (step, params, table), shapes in zip(restored, abstract)]
    steps_done = {group.path: step for group, (step, _, _) in zip(groups, restored)}
    if len(set(steps_done.values())) > 1:
        raise WorkdirError(f"the groups stopped at different steps {steps_done}: one is still "
                           "training or was interrupted; finish it (re-run its command) first")
    parts = [params for _, params, _ in restored]
    params = parts[0] if len(parts) == 1 else jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
    table = np.concatenate([np.asarray(table) for _, _, table in restored]) if learned else None
    return RestoredMembers(config, info, groups, params, table, restored[0][0])


def label_table_shape(config: Config, num_members: int, num_labels: int) -> jax.ShapeDtypeStruct | None:
    """The shape of ``num_members`` members' learned class -> bucket table (None: hashed)."""
    if not config.partition.learned:
        return None
    return jax.ShapeDtypeStruct((num_members, num_labels), hashing.table_dtype(config.model.num_buckets))
