"""Stop decisions agreed by every process of a multi-process run.

A run that spans processes stops only when all of them stop at the same step: one process that
stops alone (a non-finite loss in its members, a SIGTERM sent to it, a save that failed on its
disk) leaves the others waiting forever at the next collective. So each decision that can stop a
run is one small all-reduce (a max over the processes of an int): ``agreed_max``. On one process
it is the value itself, with no communication and no cost.

Every process must reach each agreement in the same order; the loop's control flow guarantees
it, since every branch it takes depends only on agreed values and the step count. Used by the
loop's stop signals and loss check (``training.monitoring``) and by each save
(``storage.checkpoints.save_state``), hence here, below both.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import numpy as np

from mach_jax.errors import WorkdirError


def agreed_max(value: int) -> int:
    """The largest ``value`` any process passed (each process calls it at the same point); the
    value itself on one process."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def agreed_any(flag: bool) -> bool:
    """Whether any process passed True."""
    return agreed_max(int(bool(flag))) > 0


@contextlib.contextmanager
def failing_together(doing: str) -> Iterator[None]:
    """Runs the block on every process; if it fails on any, it fails on all: the process whose
    block raised re-raises its error, the others raise a WorkdirError saying another process
    failed while ``doing``. On one process: the block, as it is.

    Raises:
      WorkdirError: the block failed on another process.
    """
    if jax.process_count() == 1:
        yield
        return
    try:
        yield
    except Exception:
        agreed_any(True)  # the others learn of it at their own agreement, then raise too
        raise
    if agreed_any(False):
        raise WorkdirError(f"another process of this run failed while {doing} (its own error line says "
                           "why); every process stopped there: fix it, then run the same command again")
