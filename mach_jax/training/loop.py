"""The training loop, start to end: data made ready, the program, the state (restored or
created sharded), the steps with their logs, checkpoints and evaluations.

Re-running it on the same workdir resumes from the newest intact checkpoint: the data order is a
pure function of (seed, epoch), so the resumed run sees exactly the batches it would have seen.
One run at a time holds a workdir (``storage.lock``), and a run is checked against what the
workdir recorded (config, data shape and content, the checkpoint's own record) before it writes
anything there.
Evaluations are the caller's: ``run_training`` takes an ``EvaluatorFactory`` (see
``mach_jax.experiment``), so training never imports the read-out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from mach_jax.config import Config
from mach_jax.core import backend, mesh as mesh_lib, model
from mach_jax.data import batches, grain_batches
from mach_jax.data.csr import XCDataset
from mach_jax.data.prepare import (RunInfo, check_enough_labels, feature_idf, label_counts, prepare_train_data,
                                   sized_for)
from mach_jax.errors import TrainingInterrupted
from mach_jax.storage import checkpoints, integrity, lock, workdir as wd
from mach_jax.training import device_data, lazy_caps, multi_step
from mach_jax.training.metric_log import MetricLog
from mach_jax.training.monitoring import LossLog, StopOnSignals
from mach_jax.training.optimizer import State
from mach_jax.training.program import TrainingProgram, build_program

log = logging.getLogger("mach_jax")

# (params [R, ...], progress) -> metrics, for the members trained here.
Evaluate = Callable[[model.Params, bool], dict]
# (what the data fixed, training label counts [L], the members' repetition ids, the training
# features' idf [D] or None) -> Evaluate.
EvaluatorFactory = Callable[[RunInfo, np.ndarray, tuple[int, ...], np.ndarray | None], Evaluate]


def train(config: Config, workdir: str | Path, train_data: XCDataset,
          progress: bool = True) -> tuple[model.Params, RunInfo]:
    """Trains (or resumes training of) the ensemble, or of the group ``parallel.rep_range``.

    A group's files go to ``workdir/reps-START-STOP`` (see ``workdir.group_dir``), so groups
    trained by independent processes can share one workdir. The loss is logged to
    ``metrics.jsonl`` and ``tensorboard/`` there (see ``mach_jax.training.metric_log``).

    Returns:
      ``(params, info)``: stacked parameters [R, ...] after the last step, and the RunInfo.
    """
    params, info, _ = run_training(config, workdir, train_data, progress)
    return params, info


def run_training(config: Config, workdir: str | Path, train_data: XCDataset, progress: bool = True,
                 evaluator: EvaluatorFactory | None = None,
                 final_fields: dict | None = None) -> tuple[model.Params, RunInfo, dict | None]:
    """``train``, plus with an ``evaluator`` the evaluations: every ``train.eval_every_epochs``
    epochs and at the end, logged beside the loss (the final one with ``final_fields`` and the
    training time); returns the final metrics too (else None).

    The evaluator comes from the caller (``mach_jax.experiment``): training knows nothing of
    the read-out.
    """
    start = time.perf_counter()
    config.validate()
    workdir = wd.group_dir(Path(workdir), config.parallel.rep_range)
    train_data.require_points("train on")
    config = sized_for(config, train_data)
    check_enough_labels(train_data.num_labels)
    counts = label_counts(train_data)  # before any --max-labels cut: PSP@k uses the true counts
    idf = feature_idf(config, train_data)
    fingerprint = integrity.data_fingerprint(train_data)
    train_data, info = prepare_train_data(config, train_data, idf)
    info = wd.as_recorded(workdir, info)
    # One run per workdir; nothing is written until the run is accepted: its settings and data
    # match config.json and the newest intact checkpoint's own record.
    with lock.hold(workdir, enabled=jax.process_index() == 0):
        identity = wd.identity(config, info, fingerprint)  # what the checkpoints' records must match
        program, state = _accept(config, workdir, train_data, info, counts, idf, fingerprint, identity)
        evaluate = None if evaluator is None else evaluator(info, counts, program.rep_ids, idf)
        steps_per_epoch = batches.num_batches(train_data.num_points, config.train.batch_size)
        total_steps = config.train.epochs * steps_per_epoch
        shape = batches.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
        with MetricLog(workdir, int(state["step"]), jax.process_index(), steps_per_epoch) as metric_log:
            with checkpoints.opened(workdir, config.train.keep_checkpoints) as manager:
                save = functools.partial(checkpoints.save_state, manager, final_step=total_steps,
                                         identity=identity)
                state = _loop(config, program, state, train_data, shape, workdir, save, metric_log, evaluate,
                              progress)
            if evaluate is None:
                return state["params"], info, None
            train_seconds = time.perf_counter() - start
            result = evaluate(state["params"], progress=progress)
            result.update(final_fields or {}, train_seconds=round(train_seconds, 2))
            metric_log.write("eval", int(state["step"]), final=True, **result)
            return state["params"], info, result


# A state this large takes long enough to create and compile that the phase is announced.
_ANNOUNCED_STATE_BYTES = 1 << 30


def _accept(config: Config, workdir: Path, train_data: XCDataset, info: RunInfo, counts: np.ndarray,
            idf: np.ndarray | None, fingerprint: str, identity: dict) -> tuple[TrainingProgram, State]:
    """Checks the run against the workdir (config.json, then the newest intact checkpoint's own
    record), and only then writes the run's files: ``(program, state)`` to start from."""
    wd.check_run(workdir, config, info, counts, idf, fingerprint)
    if config.model.num_buckets >= info.num_labels:
        log.warning("B=%d buckets >= L=%d labels: hashing compresses nothing; use B < L",
                    config.model.num_buckets, info.num_labels)
    program = build_program(config, info, train_data)
    restored = checkpoints.restore_latest(workdir, program.abstract_state, identity)
    wd.write_run(workdir, config, info, counts, idf, fingerprint)  # accepted: the run's files, then its state
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(program.abstract_state))
    if state_bytes >= _ANNOUNCED_STATE_BYTES:  # minutes for a large state: never a silent phase
        log.info("%s the training state (%.1f GiB), then compiling the train step",
                 "creating" if restored is None else "restored", state_bytes / 2**30)
    if restored is None:
        return program, program.create_state()
    log.info("resuming from the checkpoint at step %d in %s", restored.step, workdir)
    return program, restored.state


def _loop(config: Config, program: TrainingProgram, state: State, train_data: XCDataset,
          shape: batches.BatchShape, workdir: Path, save: Callable[[int, State], None], metric_log: MetricLog,
          evaluate: Callable | None, progress: bool) -> State:
    """Runs the steps from ``state["step"]`` to the end: logs, checkpoints (``save(step, state)``),
    per-epoch evaluations."""
    steps_per_epoch = batches.num_batches(train_data.num_points, shape.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    checkpoint_every = config.train.checkpoint_every_steps or steps_per_epoch
    eval_every = config.train.eval_every_epochs * steps_per_epoch if evaluate else 0
    step = int(state["step"])
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step")
    def write_train(kind: str, at_step: int, **fields) -> None:  # with the step size of the logged step
        scheduled = config.train.learning_rate * float(program.spec.schedule(at_step - 1))
        metric_log.write(kind, at_step, learning_rate=scheduled, **fields)

    loss_log = LossLog(program.rep_ids, shape.batch_size, bar, write_train)
    boundaries = multi_step.Boundaries(total_steps, (config.train.log_every_steps, checkpoint_every, eval_every))
    try:  # closed once the prefetcher's thread has stopped (Grain's threads stop with it)
        with StopOnSignals() as stop, _calls(config, program, train_data, shape, step, boundaries) as calls:
            for count, call in calls:  # a call never runs past a boundary: the checks below see each
                state, member_loss = call(state)
                step += count
                bar.update(count)
                loss_log.add(step, member_loss, count)
                if step % config.train.log_every_steps == 0:
                    loss_log.flush()
                if eval_every and step % eval_every == 0 and step < total_steps:  # the last: final
                    loss_log.flush()
                    # It ends (its sums are fetched) before the next step donates the params.
                    result = evaluate(state["params"], progress=False)
                    metric_log.write("eval", step, final=False, **result)
                    loss_log.restart_clock()
                    if progress:
                        bar.write(f"epoch {step // steps_per_epoch}: " + "  ".join(  # P@k for k <= L
                            f"P@{k} {100 * result[f'P@{k}']:.2f}" for k in (1, 3, 5) if f"P@{k}" in result),
                            file=sys.stderr)
                if step % checkpoint_every == 0 or step == total_steps or stop.signum:
                    loss_log.flush()  # never checkpoint a state whose loss went non-finite
                    save(step, state)
                if stop.signum:
                    raise TrainingInterrupted(stop.signum, step, workdir)
    finally:
        bar.close()
    return state


def uses_grain(host_loader: str) -> bool:
    """``data.host_loader`` resolved: "grain", or "auto" where Grain is installed and pays off
    (``backend.grain_pays_off``: on an accelerator, not on the CPU, whose cores the step uses)."""
    if host_loader == "auto":
        return backend.grain_pays_off() and importlib.util.find_spec("grain") is not None
    return host_loader == "grain"


@contextlib.contextmanager
def _calls(config: Config, program: TrainingProgram, train_data: XCDataset, shape: batches.BatchShape,
           start_step: int, boundaries: multi_step.Boundaries):
    """``(count, call)`` from ``start_step`` to the end: ``call(state) -> (state, member losses)``
    runs ``count`` steps, on device-resident data (``multi_step``, up to S steps a call) or on host
    batches (one step a call). Either way a batch past the step's caps goes to the uncapped step
    (``lazy_caps.CapRouter``, checked per epoch, an epoch ahead)."""
    train, caps = config.train, program.batch_caps
    router = lazy_caps.CapRouter(train_data.features, train.batch_size, train.seed, caps, train.epochs) if caps else None
    on_device, why = device_data.resolve(config.data.device_data, train_data.num_points, shape,
                                         program.mesh.shape[mesh_lib.DATA_AXIS])
    with contextlib.closing(router) if router else contextlib.nullcontext():
        if not on_device:
            log.info("training data from the host (%s), one step per call", why)
            with _host_calls(config, program, train_data, shape, start_step, router) as calls:
                yield calls
            return
        length = multi_step.steps_per_call(config)
        log.info("training data on the device (%s), %d steps per call", why, length)
        resident = device_data.put_resident(train_data, shape, program.mesh)
        rows = device_data.StepRows(train_data.num_points, shape.batch_size, train.seed)
        yield multi_step.MultiStep(program, resident, rows, boundaries, length, router).calls(start_step)


@contextlib.contextmanager
def _host_calls(config: Config, program: TrainingProgram, train_data: XCDataset, shape: batches.BatchShape,
                start_step: int, router: lazy_caps.CapRouter | None):
    """One step per host batch, built and placed ahead by ``batches.Prefetcher``."""
    # The same items either way; with Grain its threads build them and ours only places them.
    make_host_batches = grain_batches.grain_batches if uses_grain(config.data.host_loader) else _batches_from
    host_batches = make_host_batches(train_data, shape, config.train.seed, start_step,
                                     batches.num_batches(train_data.num_points, shape.batch_size),
                                     config.train.epochs)
    place = functools.partial(_place, program=program, router=router, steps=itertools.count(start_step))
    with contextlib.closing(host_batches), batches.Prefetcher(host_batches, place) as prefetched:
        yield ((1, functools.partial(_host_call, train_step, batch, program.seeds))
               for _, batch, train_step in prefetched)


def _place(item: tuple[int, batches.Batch], program: TrainingProgram, router: lazy_caps.CapRouter | None,
           steps: Iterator[int]) -> tuple[int, dict, Callable]:
    """On the prefetch thread: the batch on device, and the step to run it with."""
    epoch, batch = item
    fits = router is None or router.fits(next(steps))
    return epoch, mesh_lib.put(batch, program.batch_sharding), (
        program.train_step if fits else program.uncapped_train_step)


def _host_call(train_step: Callable, batch: dict, seeds: dict, state: State) -> tuple[State, jax.Array]:
    state, metrics = train_step(state, batch, seeds)
    return state, metrics["member_loss"]


def _batches_from(data: XCDataset, shape: batches.BatchShape, seed: int, start_step: int,
                  steps_per_epoch: int, epochs: int):
    """Yields ``(epoch, batch)`` from global step ``start_step`` to the end of the last epoch."""
    for epoch in range(start_step // steps_per_epoch, epochs):
        skip = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for batch in batches.train_batches(data, shape, seed, epoch, start_batch=skip):
            yield epoch, batch
