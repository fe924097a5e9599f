"""Watching a training run: the loss log (fetched every few steps), divergence, stop signals.

Step metrics stay on device until ``LossLog.flush``; only this process's members are read, so
logging needs no communication between processes but one small all-reduce of a stop flag. A non-finite member loss raises
``TrainingDivergedError`` before the next checkpoint; SIGINT/SIGTERM ask the loop to save and stop.
With several processes both decisions are agreed (``core.agreement``): every process stops at the
same step, none is left waiting at a collective.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from mach_jax.core import agreement, mesh as mesh_lib
from mach_jax.errors import TrainingDivergedError


class StopOnSignals:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary.

    Only the first signal is caught: the previous handlers are back in place at once, so a
    second Ctrl-C stops the process the usual way. Outside the main thread it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._local: int | None = None  # the signal this process received
        self._agreed: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        """The signal to stop for, agreed by every process (``agreement.agreed_max``: a
        signal any process received stops all of them at the same step); on one process, this
        process's own, with no communication. Every process must read it at the same points
        (the loop's reads depend only on the step and on agreed values); once set it stays set."""
        if self._agreed is None:
            self._agreed = agreement.agreed_max(self._local or 0) or None
        return self._agreed

    @signum.setter
    def signum(self, value: int | None) -> None:
        self._local = value

    def _handle(self, signum, frame) -> None:
        self._local = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()


class LossLog:
    """Keeps step metrics on device and fetches them only at ``flush`` (a host sync point).

    Args:
      rep_ids: the repetition id of each member of this run, [R].
      batch_size: points per step, for examples/s.
      bar: the tqdm progress bar to annotate.
      write: called at each flush as ``write("train", step, loss=..., member_loss=...,
        examples_per_sec=...)``, e.g. ``MetricLog.write``; the losses are the means over the
        steps since the previous flush.
      remedy: what the error on a non-finite loss advises.
    """

    def __init__(self, rep_ids: tuple[int, ...], batch_size: int, bar,
                 write: Callable[..., Any], remedy: str = "lower --learning-rate"):
        self.rep_ids, self.batch_size, self.bar, self.write = rep_ids, batch_size, bar, write
        self.remedy = remedy
        self.pending: list[tuple[int, jax.Array, int]] = []
        self.window_start = time.perf_counter()

    def add(self, step: int, member_loss: jax.Array, count: int = 1) -> None:
        """Step ``step``'s member losses [R]; or, from [S, R] (a multi-step call's), those of the
        ``count`` steps up to ``step``: its first ``count`` rows."""
        self.pending.append((step, member_loss, count))

    def _local_steps(self):
        """``(step, {member index: loss})`` of each pending step, this process's members only."""
        for step, member_loss, count in self.pending:
            if member_loss.ndim == 1:
                yield step, mesh_lib.local_rows(member_loss)
                continue
            columns = _local_columns(member_loss)
            for offset in range(count):
                yield step - count + 1 + offset, {i: values[offset] for i, values in columns.items()}

    def restart_clock(self) -> None:
        """Leaves the time since the last flush (an evaluation, say) out of examples/s."""
        self.window_start = time.perf_counter()

    def flush(self) -> None:
        if not self.pending:
            return
        rows, first_bad = [], None
        for step, local in self._local_steps():
            bad = [self.rep_ids[i] for i, value in local.items() if not np.isfinite(value)]
            if bad and first_bad is None:
                first_bad = step, bad
            rows.append([float(value) for value in local.values()])
        # Agreed: a non-finite loss in any process's members stops every process, here.
        if agreement.agreed_any(first_bad is not None):
            where = (f"at step {first_bad[0]} in member(s) {first_bad[1]}" if first_bad else
                     f"in another process's members (by step {step})")
            raise TrainingDivergedError(f"non-finite loss {where}; {self.remedy}; the last checkpoint "
                                        "predates this step")
        elapsed = time.perf_counter() - self.window_start
        rate = len(rows) * self.batch_size / max(elapsed, 1e-9)
        means = np.mean(rows, axis=0)
        losses = {self.rep_ids[i]: float(value) for i, value in zip(local, means)}
        loss = float(np.mean(means))
        self.write("train", step, loss=loss, member_loss=losses, examples_per_sec=rate)
        self.bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{rate:,.0f}")
        self.pending.clear()
        self.window_start = time.perf_counter()


def _local_columns(array: jax.Array) -> dict[int, np.ndarray]:
    """The columns of an [S, R] array split over R that live on this process: {member index: [S]}."""
    columns = {}
    for shard in array.addressable_shards:
        start = shard.index[1].start or 0
        for offset, values in enumerate(np.asarray(shard.data).T):
            columns[start + offset] = values
    return dict(sorted(columns.items()))
