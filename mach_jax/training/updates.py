"""The members' updates, one route hidden behind one iterator: ``member_updates`` yields
``(count, update)``, where ``update(state) -> (state, member losses)`` runs ``count`` steps.

Routes (chosen once per run, the loop never sees which):
- host batches, one step per update, built and placed ahead on a thread (``batches.Prefetcher``;
  with Grain its threads build them, ``grain_batches``);
- device-resident data (``device_data``), up to S steps per update (``multi_step.MultiStep``).
Either way a batch past the lazy step's caps goes to the uncapped step (``lazy_caps.CapRouter``).
The losses are [R] for one step, [S, R] for a multi-step update (its first ``count`` rows).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import logging
from collections.abc import Callable, Iterator

import jax

from mach_jax.config import Config
from mach_jax.core import backend, mesh as mesh_lib
from mach_jax.data import batches, grain_batches
from mach_jax.data.csr import XCDataset
from mach_jax.training import device_data, lazy_caps, multi_step
from mach_jax.training.optimizer import State
from mach_jax.training.program import TrainingProgram

log = logging.getLogger("mach_jax")

# (state) -> (state, member losses [R] or [S, R]): ``count`` steps.
Update = Callable[[State], tuple[State, jax.Array]]


def uses_grain(host_loader: str) -> bool:
    """``data.host_loader`` resolved: "grain", or "auto" where Grain is installed and pays off
    (``backend.grain_pays_off``: on an accelerator, not on the CPU, whose cores the step uses)."""
    if host_loader == "auto":
        return backend.grain_pays_off() and importlib.util.find_spec("grain") is not None
    return host_loader == "grain"


@contextlib.contextmanager
def member_updates(config: Config, program: TrainingProgram, train_data: XCDataset, shape: batches.BatchShape,
                   start_step: int, boundaries: multi_step.Boundaries) -> Iterator[Iterator[tuple[int, Update]]]:
    """``(count, update)`` from ``start_step`` to the last step, for a ``with`` block (its threads
    and Grain's stop when the block is left). An update never runs past a boundary."""
    train, caps = config.train, program.batch_caps
    router = caps and lazy_caps.CapRouter(train_data.features, train.batch_size, train.seed, caps, train.epochs)
    on_device, why = device_data.resolve(config.data.device_data, train_data.num_points, shape,
                                         program.mesh.shape[mesh_lib.DATA_AXIS])
    with contextlib.closing(router) if router else contextlib.nullcontext():
        if on_device:
            length = multi_step.steps_per_call(config)
            log.info("training data on the device (%s), %d steps per call", why, length)
            resident = device_data.put_resident(train_data, shape, program.mesh)
            rows = device_data.StepRows(train_data.num_points, shape.batch_size, train.seed)
            yield multi_step.MultiStep(program, resident, rows, boundaries, length, router).calls(start_step)
            return
        log.info("training data from the host (%s), one step per call", why)
        make_host_batches = grain_batches.grain_batches if uses_grain(config.data.host_loader) else host_batches
        items = make_host_batches(train_data, shape, train.seed, start_step,
                                  batches.num_batches(train_data.num_points, shape.batch_size), train.epochs)
        on_device = functools.partial(_batch_on_device, program=program, router=router,
                                      steps=itertools.count(start_step))
        with contextlib.closing(items), batches.Prefetcher(items, on_device) as prefetched:
            yield ((1, functools.partial(_host_update, train_step, batch, program.seeds))
                   for _, batch, train_step in prefetched)


def host_batches(data: XCDataset, shape: batches.BatchShape, seed: int, start_step: int,
                 steps_per_epoch: int, epochs: int):
    """Yields ``(epoch, batch)`` from global step ``start_step`` to the end of the last epoch."""
    for epoch in range(start_step // steps_per_epoch, epochs):
        skip = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for batch in batches.train_batches(data, shape, seed, epoch, start_batch=skip):
            yield epoch, batch


def _batch_on_device(item: tuple[int, batches.Batch], program: TrainingProgram, router: lazy_caps.CapRouter | None,
           steps: Iterator[int]) -> tuple[int, dict, Callable]:
    """On the prefetch thread: the batch on device, and the step to run it with."""
    epoch, batch = item
    fits = router is None or router.fits(next(steps))
    return epoch, mesh_lib.put(batch, program.batch_sharding), (
        program.train_step if fits else program.uncapped_train_step)


def _host_update(train_step: Callable, batch: dict, seeds: dict, state: State) -> tuple[State, jax.Array]:
    state, metrics = train_step(state, batch, seeds)
    return state, metrics["member_loss"]
