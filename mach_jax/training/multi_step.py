"""Several train steps per jitted call, on device-resident data (``train.steps_per_call``).

A call runs up to S steps of the very ``step.train_step`` the host path runs: ``lax.scan`` over
S batches named by point ids int32 [S, N] (``device_data.StepRows``), each gathered on device
(``device_data.gather_batch``). It returns every step's member losses, [S, R], so the loss log
is the same per step. The host sends only the point ids; nothing is fetched back.

A call never runs past a step after which the loop must see the state (``Boundaries``: a log,
checkpoint or evaluation step, the last step; a stop signal is seen after the call), nor runs a
batch past the lazy step's caps (``lazy_caps.CapRouter``, checked per epoch on the host). So at
most two programs are compiled beyond the host path's own, each on first use: S steps by
``lax.scan`` (the usual call) and fewer than S by a ``lax.fori_loop`` whose trip count is an
argument (one program for every shorter call before a boundary). A single step (S = 1, or a
batch past the lazy caps, which runs alone on the uncapped step) runs the host path's compiled
step on a batch gathered on device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mach_jax.config import Config
from mach_jax.core import backend
from mach_jax.core import mesh as mesh_lib
from mach_jax.core.compiled import shared_jit
from mach_jax.training import device_data, step
from mach_jax.training.lazy_caps import CapRouter
from mach_jax.training.optimizer import State
from mach_jax.training.program import TrainingProgram
from mach_jax.training.spec import StepSpec

# (state) -> (state, member losses [S, R]): one call of ``count`` steps (rows past it: unused).
Call = Callable[[State], tuple[State, jax.Array]]


def steps_per_call(config: Config) -> int:
    """S: ``train.steps_per_call``, 0 taking the backend's default
    (``backend.default_steps_per_call``), at most ``train.log_every_steps``: a call never runs past a
    log step, so a longer call would never run whole."""
    wanted = config.train.steps_per_call or backend.default_steps_per_call()
    return max(1, min(wanted, config.train.log_every_steps))


@dataclasses.dataclass(frozen=True)
class Boundaries:
    """The steps after which the training loop must see the state: multiples of each nonzero
    period (log, checkpoint, evaluation) and the last step."""

    total_steps: int
    periods: tuple[int, ...]

    def next_after(self, step: int) -> int:
        """The first boundary after global step ``step`` (the steps done so far)."""
        return min([(step // period + 1) * period for period in self.periods if period] + [self.total_steps])


def _run_steps(state: State, resident: device_data.Resident, rows: jax.Array, count: jax.Array,
               seeds: dict, *, spec: StepSpec, batch_sharding, dynamic: bool) -> tuple[State, jax.Array]:
    """Steps on the batches ``rows`` int32 [S, N]: all S (by ``lax.scan``), or with ``dynamic`` the
    first ``count`` (a traced int32, <= S; the losses of the others are left 0).

    Returns:
      ``(state, member_loss float32 [S, R])``.
    """
    def one(state, step_rows):
        batch = jax.lax.with_sharding_constraint(device_data.gather_batch(resident, step_rows), batch_sharding)
        state, metrics = step.train_step(state, batch, seeds, spec=spec)
        return state, metrics["member_loss"]

    if not dynamic:
        return jax.lax.scan(one, state, rows)

    def body(index, carry):
        state, losses = carry
        state, loss = one(state, rows[index])
        return state, losses.at[index].set(loss)

    losses = jnp.zeros((rows.shape[0], seeds["labels"].shape[0]), jnp.float32)
    return jax.lax.fori_loop(0, count, body, (state, losses))


def _compile(program: TrainingProgram, spec: StepSpec, dynamic: bool) -> Callable:
    """``_run_steps`` jitted with donation and explicit shardings (compiled on first call)."""
    mesh = program.mesh
    state_shardings = jax.tree.map(lambda leaf: leaf.sharding, program.abstract_state)
    bound = {"spec": spec, "batch_sharding": program.batch_sharding, "dynamic": dynamic}
    return shared_jit(_run_steps, bound, donate_argnums=0, in_shardings=(
        state_shardings, program.batch_sharding, NamedSharding(mesh, P(None, mesh_lib.DATA_AXIS)),
        mesh_lib.replicated(mesh), mesh_lib.tree_shardings(program.seeds, mesh)),
        out_shardings=(state_shardings, NamedSharding(mesh, P(None, mesh_lib.REPS_AXIS))))


class MultiStep:
    """The calls of a device-resident run: ``calls(start_step)`` yields ``(count, call)``.

    Args:
      program: the run's ``TrainingProgram`` (its spec carries the lazy caps, if any).
      resident: the training set on device (``device_data.put_resident``).
      step_rows: each step's point ids (``device_data.StepRows``).
      boundaries: the steps the loop must see (``Boundaries``).
      length: S, the steps of a full call (``steps_per_call``).
      router: which batches fit the lazy caps (None: no caps).
    """

    def __init__(self, program: TrainingProgram, resident: device_data.Resident,
                 step_rows: device_data.StepRows, boundaries: Boundaries, length: int,
                 router: CapRouter | None = None):
        self.program, self.resident, self.step_rows = program, resident, step_rows
        self.boundaries, self.length, self.router = boundaries, length, router
        self.rows_sharding = NamedSharding(program.mesh, P(None, mesh_lib.DATA_AXIS))
        # One step (S = 1, or a batch past the lazy caps) runs the host path's own compiled step.
        self._gather = shared_jit(device_data.gather_batch, {}, out_shardings=program.batch_sharding)
        self._full = _compile(program, program.spec, dynamic=False) if length > 1 else program.train_step
        self._short = _compile(program, program.spec, dynamic=True) if length > 1 else None

    def plan(self, step: int) -> tuple[int, Callable, int]:
        """``(count, compiled, width)`` of the call from global step ``step``."""
        if self.router is not None and not self.router.fits(step):
            return 1, self.program.uncapped_train_step, 1  # one step, as the host path runs it
        end = min(self.boundaries.next_after(step), step + self.length)
        if self.router is not None:
            end = next((s for s in range(step + 1, end) if not self.router.fits(s)), end)
        count = end - step
        return count, (self._full if count == self.length else self._short), self.length

    def calls(self, start_step: int) -> Iterator[tuple[int, Call]]:
        """``(count, call)`` from ``start_step`` to the last step; ``call(state)`` runs ``count``
        steps and returns ``(state, member losses)``: [R] for one step run alone, else [S, R]
        (the first ``count`` rows)."""
        step = start_step
        while step < self.boundaries.total_steps:
            count, compiled, width = self.plan(step)
            rows = self.step_rows(range(step, step + count), width)
            if width == 1:  # rows [N] of one batch, for the host path's step
                rows = mesh_lib.put(rows[0], self.program.batch_sharding)
            else:
                rows = mesh_lib.put(rows, self.rows_sharding)
            yield count, functools.partial(self._call, compiled, rows, np.int32(count))
            step += count

    def _call(self, compiled: Callable, rows: jax.Array, count: np.ndarray, state: State):
        if rows.ndim == 2:
            return compiled(state, self.resident, rows, count, self.program.seeds)
        state, metrics = compiled(state, self._gather(self.resident, rows), self.program.seeds)
        return state, metrics["member_loss"]
