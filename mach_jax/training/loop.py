"""The training loop, start to end: the run accepted by its workdir, the state restored or
created sharded, then ``run_loop``: for each update, log, non-finite check, evaluation,
checkpoint, stop signal. The members and the re-ranker (``rerank_loop``) both train through
``run_loop``, under one policy.

Re-running on the same workdir resumes from the newest intact checkpoint: the data order is a
pure function of (seed, epoch), so the resumed run sees exactly the batches it would have seen.
One run at a time holds a workdir (``storage.lock``), and a run is checked against what the
workdir recorded (config, data shape and content, the checkpoint's own record) before it writes
anything there. Evaluations are the caller's (``mach_jax.experiment``): training never imports
the read-out.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from mach_jax.config import Config
from mach_jax.core import agreement, model
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import TrainingInterrupted
from mach_jax.storage import checkpoints, lock, workdir as wd
from mach_jax.training import multi_step
from mach_jax.training.metric_log import MetricLog
from mach_jax.training.monitoring import LossLog, StopOnSignals
from mach_jax.training.optimizer import State
from mach_jax.training.program import TrainingProgram, build_program
from mach_jax.training.repartition import Repartitioner
from mach_jax.training.resolve import ResolvedRun, resolve_run
from mach_jax.training.updates import Update, member_updates

log = logging.getLogger("mach_jax")

# (params [R, ...], learned class -> bucket table [R, L] or None, progress) -> metrics, for the
# members trained here.
Evaluate = Callable[[model.Params, jax.Array | None, bool], dict]
# (what the data fixed, training label counts [L], the members' repetition ids, the training
# features' idf [D] or None) -> Evaluate.
EvaluatorFactory = Callable[[RunInfo, np.ndarray, tuple[int, ...], np.ndarray | None], Evaluate]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When ``run_loop`` looks at the state, in global steps (0: never): a log (with the
    non-finite check) every ``log_every``, an evaluation every ``eval_every`` (the last step's is
    the caller's), a checkpoint every ``checkpoint_every`` and at the last step; the learned
    partitions' re-assignments where ``reassign_every`` (an epoch's steps) divides the step,
    before the next update."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int = 0
    reassign_every: int = 0

    @property
    def boundaries(self) -> multi_step.Boundaries:
        """The steps an update must not run past."""
        return multi_step.Boundaries(self.total_steps, (self.log_every, self.checkpoint_every, self.eval_every,
                                                        self.reassign_every))


def run_loop(state: State, step: int, updates: Iterable[tuple[int, Update]], schedule: Schedule, *,
             loss_log: LossLog, save: Callable[[int, State], int], workdir: Path,
             evaluate: Callable[[int, State], None] | None = None,
             reassign: Callable[[int, State], State | None] | None = None) -> State:
    """Runs ``updates`` from global step ``step`` to ``schedule.total_steps``, in the order every
    trainer here follows.

    Args:
      state: the state at ``step`` (donated to the first update).
      updates: ``(count, update)``; ``update(state) -> (state, losses)`` runs ``count`` steps and
        never past one of ``schedule.boundaries``.
      loss_log: keeps the losses on device until its ``flush`` (the host sync), which logs them
        and raises ``TrainingDivergedError`` on a non-finite one.
      save: ``save(step, state)`` checkpoints (asynchronously on an accelerator) and returns the
        step a resume starts from (``step``, or an earlier one where the trainer resumes only at
        epoch ends).
      evaluate: ``evaluate(step, state)`` at the evaluation steps before the last; it ends (its
        sums fetched) before the next update donates the state.
      reassign: ``reassign(step, state)`` before the update that follows step ``step`` where
        ``schedule.reassign_every`` divides it: the state with its learned class -> bucket
        table re-assigned, or None where none is due. A run resumed from that step's checkpoint
        (saved before it) does the same re-assignment, so it goes on exactly as the run would have.

    Raises:
      TrainingInterrupted: SIGINT or SIGTERM arrived; the current step was saved first.
    """
    with StopOnSignals() as stop:
        for count, update in updates:
            if reassign and schedule.reassign_every and step % schedule.reassign_every == 0:
                state = reassign(step, state) or state  # before the update: a resumed run does it too
                loss_log.restart_clock()  # the re-assignment's time is not training throughput
            state, losses = update(state)  # count steps, asynchronously dispatched
            step += count
            loss_log.add(step, losses, count)
            if schedule.log_every and step % schedule.log_every == 0:
                loss_log.flush()  # log; raises on a non-finite loss
            if evaluate and schedule.eval_every and step % schedule.eval_every == 0 and step < schedule.total_steps:
                loss_log.flush()
                evaluate(step, state)
                loss_log.restart_clock()  # the evaluation's time is not training throughput
            signum = stop.signum  # SIGINT/SIGTERM, agreed by every process of a multi-process run
            if step % schedule.checkpoint_every == 0 or step == schedule.total_steps or signum:
                loss_log.flush()  # never checkpoint a state whose loss went non-finite
                saved_step = save(step, state)
            if signum:
                raise TrainingInterrupted(signum, saved_step, workdir)
    return state


def train(config: Config, workdir: str | Path, train_data: XCDataset,
          progress: bool = True) -> tuple[model.Params, RunInfo]:
    """Trains (or resumes training of) the ensemble, or of the group ``parallel.rep_range``.

    A group's files go to ``workdir/reps-START-STOP`` (see ``workdir.group_dir``), so groups
    trained by independent processes can share one workdir. The loss is logged to
    ``metrics.jsonl`` and ``tensorboard/`` there (see ``mach_jax.training.metric_log``).

    Returns:
      ``(params, info)``: stacked parameters [R, ...] after the last step, and the RunInfo.
    """
    run = resolve_run(config, train_data, workdir)
    params, _ = run_training(run, workdir, progress)
    return params, run.info


# Long: one function shows a run's sections in order (accept, set up, loop, final evaluation).
def run_training(run: ResolvedRun, workdir: str | Path, progress: bool = True,
                 evaluator: EvaluatorFactory | None = None,
                 final_fields: dict | None = None) -> tuple[model.Params, dict]:
    """Trains the resolved ``run``; with an ``evaluator``, evaluates every
    ``train.eval_every_epochs`` epochs and at the end, logged beside the loss.

    Returns:
      ``(params [R, ...], metrics)``: the final evaluation (if any) with ``final_fields`` and
      ``train_seconds``, the time spent training over every session of the run.
    """
    start = time.perf_counter()
    config, train = run.config, run.config.train
    workdir = wd.group_dir(Path(workdir), config.parallel.rep_range)
    info = run.info
    steps_per_epoch = batches.num_batches(info.num_train_points, train.batch_size)
    schedule = Schedule(total_steps=train.epochs * steps_per_epoch, log_every=train.log_every_steps,
                        checkpoint_every=train.checkpoint_every_steps or steps_per_epoch,
                        eval_every=train.eval_every_epochs * steps_per_epoch if evaluator else 0,
                        reassign_every=steps_per_epoch if config.partition.learned else 0)
    shape = batches.BatchShape(train.batch_size, info.max_nnz, info.max_labels)
    # ---- Accept: one run per workdir; nothing is written until its settings and data match
    # config.json and the newest intact checkpoint's own record.
    with lock.hold(workdir, enabled=jax.process_index() == 0):
        identity = wd.identity(config, info, run.fingerprint)
        program, state = start_or_resume(run, workdir, identity)
        evaluate_params = evaluator and evaluator(info, run.label_counts, program.rep_ids, run.idf)
        step = int(state["step"])
        # ---- Set up: logs, checkpoints, the updates' route (host or device, capped or not).
        bar = tqdm(total=schedule.total_steps, initial=step, disable=not progress, desc="train", unit="step")
        with MetricLog(workdir, step, jax.process_index(), steps_per_epoch) as metric_log:
            seconds = lambda: metric_log.train_seconds_before + time.perf_counter() - start  # noqa: E731

            def write_loss(kind: str, at_step: int, **fields) -> None:  # the logged step's step size
                rate = train.learning_rate * float(program.spec.schedule(at_step - 1))
                metric_log.write(kind, at_step, learning_rate=rate, train_seconds=round(seconds(), 2), **fields)

            def evaluate(at_step: int, state: State) -> None:
                result = evaluate_params(state["params"], state.get("label_table"), False)
                metric_log.write("eval", at_step, final=False, **result)
                if progress:  # P@k for k <= L
                    bar.write(f"epoch {at_step // steps_per_epoch}: " + "  ".join(
                        f"P@{k} {100 * result[f'P@{k}']:.2f}" for k in (1, 3, 5) if f"P@{k}" in result),
                        file=sys.stderr)

            loss_log = LossLog(program.rep_ids, train.batch_size, bar, write_loss)
            reassign = None
            if config.partition.learned:
                repartitioner = Repartitioner(config, program, run.train_data)

                def reassign(at_step: int, state: State) -> State | None:  # at epoch ends (Schedule)
                    if not repartitioner.due(at_step // steps_per_epoch, train.epochs):
                        return None
                    return repartitioner(at_step, state)

            with checkpoints.opened(workdir, train.keep_checkpoints) as manager, \
                    member_updates(config, program, run.train_data, shape, step, schedule.boundaries) as updates:
                def save(at_step: int, state: State) -> int:
                    checkpoints.save_state(manager, at_step, state, identity=identity,
                                           final_step=schedule.total_steps)
                    return at_step

                try:  # ---- The loop.
                    state = run_loop(state, step, updates, schedule, loss_log=loss_log, save=save,
                                     workdir=workdir, evaluate=evaluate if evaluate_params else None,
                                     reassign=reassign)
                finally:
                    bar.close()
                with agreement.failing_together("saving the final checkpoint"):  # every process, or none
                    checkpoints.wait_until_saved(manager)
            # ---- The final evaluation. The training time is the last step's log record's (a
            # session that ran no step, the run being complete, adds none).
            metrics = {**(final_fields or {}), "train_seconds": metric_log.train_seconds}
            if evaluate_params:
                metrics = {**evaluate_params(state["params"], state.get("label_table"), progress), **metrics}
                metric_log.write("eval", int(state["step"]), final=True, **metrics)
            return state["params"], metrics


# A state this large takes long enough to create and compile that the phase is announced.
_ANNOUNCED_STATE_BYTES = 1 << 30


def start_or_resume(run: ResolvedRun, workdir: Path, identity: dict) -> tuple[TrainingProgram, State]:
    """Checks the run against the workdir (config.json, then the newest intact checkpoint's own
    record), and only then writes the run's files: ``(program, state)`` to start from."""
    config, info = run.config, run.info
    wd.check_run(workdir, config, info, run.label_counts, run.idf, run.fingerprint)
    if config.model.num_buckets >= info.num_labels:
        log.warning("B=%d buckets >= L=%d labels: hashing compresses nothing; use B < L",
                    config.model.num_buckets, info.num_labels)
    program = build_program(config, info, run.train_data)
    restored = checkpoints.restore_latest(workdir, program.abstract_state, identity)
    wd.write_run(workdir, config, info, run.label_counts, run.idf, run.fingerprint)  # accepted: files, then state
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(program.abstract_state))
    if state_bytes >= _ANNOUNCED_STATE_BYTES:  # minutes for a large state: never a silent phase
        log.info("%s the training state (%.1f GiB), then compiling the train step",
                 "creating" if restored is None else "restored", state_bytes / 2**30)
    if restored is None:
        return program, program.create_state()
    log.info("resuming from the checkpoint at step %d in %s", restored.step, workdir)
    return program, restored.state
