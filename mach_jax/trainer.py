"""The training loop: data, mesh, state (created sharded or restored), one jitted step, checkpoints.

``train_and_evaluate(config, workdir)`` is what ``python -m mach_jax.train`` and notebooks call.
Re-running it on the same workdir resumes from the newest checkpoint: the data order is a pure
function of (seed, epoch), so the resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mach_jax import input_pipeline, mesh as mesh_lib, model, steps, workdir as wd
from mach_jax.config import Config, DataConfig
from mach_jax.ensemble import MachEnsemble, hash_tables
from mach_jax.synthetic import make_synthetic
from mach_jax.dataset import DataFormatError, XCDataset
from mach_jax.xc_format import read_xc

log = logging.getLogger("mach_jax")

TRAIN_LOG_FILE = "train_log.jsonl"


class TrainingDivergedError(FloatingPointError):
    """A member's loss became NaN or infinite; the newest checkpoint predates it."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int, step: int, workdir: Path):
        self.signum, self.step, self.workdir = signum, step, workdir
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in "
                         f"{workdir}; run the same command again to resume")


class _StopOnSignals:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary.

    Only the first signal is caught: the previous handlers are back in place at once, so a
    second Ctrl-C stops the process the usual way. Outside the main thread it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()


def load_datasets(config: DataConfig) -> tuple[XCDataset, XCDataset]:
    """The (train, test) pair: the two files, or the embedded synthetic data."""
    if config.train_path is None:
        train, test = make_synthetic(config.synthetic)
        log.info("data: %s (synthetic, generated in code; pass --train/--test for real files)",
                 train.source.removesuffix(" [train]"))
        return train, test
    train = read_xc(config.train_path, cache_dir=config.cache_dir)
    test = read_xc(config.test_path, cache_dir=config.cache_dir)
    for name, train_size, test_size in (("features D", train.num_features, test.num_features),
                                        ("labels L", train.num_labels, test.num_labels)):
        if train_size != test_size:
            raise DataFormatError(test.source, 1, f"header gives {name} = {test_size}, but the "
                                  f"training file {train.source} gives {train_size}")
    log.info("data: %s (%d points) and %s (%d points), D=%d, L=%d", train.source, train.num_points,
             test.source, test.num_points, train.num_features, train.num_labels)
    return train, test


def label_counts(dataset: XCDataset) -> np.ndarray:
    """How many points carry each label: int64 [L]."""
    return np.bincount(dataset.labels.indices, minlength=dataset.num_labels)


def prepare_train_data(config: Config, train: XCDataset) -> tuple[XCDataset, wd.RunInfo]:
    """Caps row widths (K features, M labels) once and records what the data fixed."""
    data = config.data
    max_nnz = data.max_nnz or max(input_pipeline.widest_row(train.features), 1)
    max_labels = data.max_labels or max(input_pipeline.widest_row(train.labels), 1)
    features = input_pipeline.cap_row_width(train.features, max_nnz, data.overflow, keep_largest=True,
                                            source=train.source, what="features")
    labels = input_pipeline.cap_row_width(train.labels, max_labels, data.overflow, keep_largest=False,
                                          source=train.source, what="labels")
    info = wd.RunInfo(num_features=train.num_features, num_labels=train.num_labels,
                      num_train_points=train.num_points, max_nnz=max_nnz, max_labels=max_labels,
                      train_source=train.source)
    return XCDataset(features, labels, train.source), info


class _LossLog:
    """Keeps step metrics on device and fetches them only every ``log_every_steps``."""

    def __init__(self, path: Path, batch_size: int, bar):
        self.path, self.batch_size, self.bar = path, batch_size, bar
        self.pending: list[tuple[int, jax.Array]] = []
        self.window_start = time.perf_counter()

    def add(self, step: int, member_loss: jax.Array) -> None:
        self.pending.append((step, member_loss))

    def flush(self, epoch: int) -> None:
        if not self.pending:
            return
        steps_done = [step for step, _ in self.pending]
        losses = np.asarray(jax.device_get([loss for _, loss in self.pending]))  # a host sync point
        for step, member_loss in zip(steps_done, losses):
            bad = np.flatnonzero(~np.isfinite(member_loss))
            if bad.size:
                raise TrainingDivergedError(
                    f"non-finite loss at step {step} in member(s) {bad.tolist()}: {member_loss[bad]}; "
                    "lower --learning-rate; the last checkpoint predates this step")
        elapsed = time.perf_counter() - self.window_start
        rate = len(self.pending) * self.batch_size / max(elapsed, 1e-9)
        record = {"step": steps_done[-1], "epoch": epoch, "loss": float(losses[-1].mean()),
                  "member_loss": losses[-1].tolist(), "examples_per_sec": rate}
        with open(self.path, "a") as log_file:
            log_file.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", ex_per_s=f"{rate:,.0f}")
        self.pending.clear()
        self.window_start = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    """Everything a training loop (or a benchmark) needs, built once per config and data.

    Attributes:
      mesh: the device mesh, R split over its ``reps`` axis.
      abstract_state: the state's shapes, dtypes and shardings (for restoring checkpoints).
      create_state: () -> a freshly initialised state, created directly with its shardings.
      train_step: the jitted, donating ``steps.train_step``: (state, batch, tables) -> (state, metrics).
      tables: device hash tables, ``labels`` [R, L] (and ``features`` [R, D] when hashing).
    """

    mesh: Any
    abstract_state: Any
    create_state: Callable[[], steps.State]
    train_step: Callable
    tables: dict[str, jax.Array]


def build_program(config: Config, info: wd.RunInfo) -> TrainingProgram:
    """Builds the mesh, shardings, hash tables and the one jitted step for all R members."""
    mesh = mesh_lib.make_mesh(config.model.num_repetitions)
    graphdef = model.member_graphdef(config.model, info.num_features, info.max_nnz)
    optimizer = steps.make_optimizer(config.train.learning_rate)
    init_state = functools.partial(_init_state, config, info.num_features, optimizer)
    abstract_state = jax.eval_shape(init_state)
    state_shardings = mesh_lib.tree_shardings(abstract_state, mesh)
    tables = hash_tables(config, info, config.model.num_repetitions, mesh)
    train_step = jax.jit(
        functools.partial(steps.train_step, graphdef=graphdef, optimizer=optimizer,
                          loss_name=config.train.loss),
        in_shardings=(state_shardings, mesh_lib.replicated(mesh), mesh_lib.tree_shardings(tables, mesh)),
        out_shardings=(state_shardings, {"member_loss": mesh_lib.stacked(mesh)}),
        donate_argnums=0)
    return TrainingProgram(
        mesh=mesh,
        abstract_state=jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, state_shardings),
        create_state=jax.jit(init_state, out_shardings=state_shardings),
        train_step=train_step,
        tables=tables)


def train(config: Config, workdir: str | Path, train_data: XCDataset,
          progress: bool = True) -> tuple[model.Params, wd.RunInfo]:
    """Trains (or resumes training of) the ensemble in ``workdir``.

    Returns:
      ``(params, info)``: stacked parameters [R, ...] after the last step, and the RunInfo.
    """
    config.validate()
    workdir = Path(workdir)
    train_data, info = prepare_train_data(config, train_data)
    wd.write_run(workdir, config, info, label_counts(train_data))
    if config.model.num_buckets >= info.num_labels:
        log.warning("B=%d buckets >= L=%d labels: hashing compresses nothing; use B < L",
                    config.model.num_buckets, info.num_labels)
    program = build_program(config, info)
    manager = wd.checkpoint_manager(workdir, config.train.keep_checkpoints)
    state = wd.restore_latest(manager, program.abstract_state)
    if state is None:
        state = program.create_state()
    else:
        log.info("resuming from the checkpoint at step %d in %s", int(state["step"]), workdir)

    shape = input_pipeline.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
    steps_per_epoch = input_pipeline.num_batches(train_data.num_points, shape.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    checkpoint_every = config.train.checkpoint_every_steps or steps_per_epoch
    step = int(state["step"])
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step")
    loss_log = _LossLog(workdir / TRAIN_LOG_FILE, shape.batch_size, bar)
    try:
        with _StopOnSignals() as stop:
            for epoch, batch in _batches_from(train_data, shape, config.train.seed, step,
                                              config.train.epochs):
                state, step_metrics = program.train_step(state, batch, program.tables)
                step += 1
                bar.update()
                loss_log.add(step, step_metrics["member_loss"])
                if step % config.train.log_every_steps == 0:
                    loss_log.flush(epoch)
                if step % checkpoint_every == 0 or step == total_steps or stop.signum:
                    loss_log.flush(epoch)  # never checkpoint a state whose loss went non-finite
                    wd.save_state(manager, step, state)
                if stop.signum:
                    raise TrainingInterrupted(stop.signum, step, workdir)
        loss_log.flush(step // max(steps_per_epoch, 1))
    finally:
        bar.close()
        manager.wait_until_finished()  # an async save in flight completes before we leave
    return state["params"], info


def _batches_from(data: XCDataset, shape: input_pipeline.BatchShape, seed: int, start_step: int,
                  epochs: int):
    """Yields ``(epoch, batch)`` from global step ``start_step`` to the end of the last epoch."""
    steps_per_epoch = input_pipeline.num_batches(data.num_points, shape.batch_size)
    for epoch in range(start_step // steps_per_epoch, epochs):
        skip = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for batch in input_pipeline.train_batches(data, shape, seed, epoch, start_batch=skip):
            yield epoch, batch


def _init_state(config: Config, num_features: int, optimizer) -> steps.State:
    rep_ids = jnp.arange(config.model.num_repetitions, dtype=jnp.int32)
    params = model.init_params(config.model, num_features, rep_ids, config.train.seed)
    return steps.create_state(params, optimizer)


def train_and_evaluate(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    """Trains on the configured data, evaluates on its test split, writes ``metrics.json``.

    Returns:
      The metrics dict (P@k, nDCG@k, PSP@k for k = 1, 3, 5, and the run's settings).
    """
    config.validate()
    train_data, test_data = load_datasets(config.data)
    start = time.perf_counter()
    params, info = train(config, workdir, train_data, progress)
    train_seconds = time.perf_counter() - start
    ensemble = MachEnsemble(config, info, params, label_counts(train_data))
    metrics = ensemble.evaluate(test_data, progress=progress)
    metrics.update(test_source=test_data.source, train_seconds=round(train_seconds, 2))
    wd.write_metrics(workdir, metrics)
    return metrics
