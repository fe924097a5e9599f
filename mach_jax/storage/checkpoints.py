"""Orbax checkpoints of the training state under ``FOLDER/checkpoints/<step>/``, checked on load.

Written by Orbax's CheckpointManager, atomically (a step folder appears only once it is
complete) and, on an accelerator, asynchronously, each with a record in Orbax's step metadata:
the checksums of its arrays (``integrity.check_tree``, computed once per save, on device), the
run's identity (``workdir.identity``: config, data shape, data fingerprint) and the run's final
step.

Restoring takes the newest checkpoint that is intact: one that cannot be read, whose step
metadata is gone, or whose arrays do not match their checksums or hold NaN or infinite values, is
damaged; the next older one is used, with a warning naming the damaged one (a checkpoint saved
before records is checked for finite values only). A checkpoint of another run (its record's identity differs) is refused, never skipped.
Restoring touches nothing, so evaluation is safe while another process still trains there.

Saves hold no second copy of the state on a CPU host (``orbax_io.manager``): Orbax writes from the
state's own buffers there, so a save returns only once its write is done (``save_state``); a
training step could not otherwise donate those buffers, and XLA would allocate a second state
beside them (measured: +2.4 GiB of peak RSS for a 2.4 GiB state). A checkpoint of the
parameters alone (``params_only``, ``readout.export.export_params``) is refused for resuming. An
older step is deleted only once the newer one is complete, even with ``train.keep_checkpoints`` 1.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mach_jax.core import agreement
from mach_jax.errors import TrainingDivergedError, WorkdirError
from mach_jax.storage import host_memory, integrity, orbax_io, run_file, workdir as wd
from mach_jax.storage.checkpoint_records import (CHECKPOINT_DIR, PARAMS_ONLY_KEY, RECORD_KEY, Progress,  # noqa: F401
                                                 _record, _steps, misnamed, training_progress)

DAMAGED_DIR = "damaged_checkpoints"

log = logging.getLogger("mach_jax")


def opened(folder: Path, keep: int = 2):
    """The training manager of ``folder/checkpoints`` for a ``with`` block (``orbax_io.opened``):
    a save in flight completes before the block is left, and the manager is closed."""
    return orbax_io.opened(Path(folder) / CHECKPOINT_DIR, keep)


@dataclasses.dataclass(frozen=True)
class Restored:
    """The newest intact checkpoint: its step, the restored tree, and the newer damaged ones as
    ``(step, why)``."""

    step: int
    state: Any
    damaged: tuple[tuple[int, str], ...] = ()


def save_state(manager: ocp.CheckpointManager, step: int, state: Any, identity: dict | None = None,
               final_step: int | None = None, params_only: bool = False) -> None:
    """Saves unless this step is already saved, with its record (``params_only``: it says the state
    is ``{"params": ...}`` alone, without the optimiser's moments). Asynchronously where the state
    is in an accelerator's memory (Orbax writes from a host copy); on the CPU the write is done
    before this returns (``writes_in_place``).

    Raises:
      TrainingDivergedError: the state holds NaN or infinite values (it is not saved).
      WorkdirError: the disk is full or the folder not writable (this save or the one before).
    """
    if manager.latest_step() == step:
        return
    with agreement.failing_together(f"checking the state of step {step}"):
        checks = integrity.check_tree(state)  # a sync point: the state's checksums, once per save
        non_finite = [name for name, check in checks.items() if not check.finite]
        if non_finite:
            raise TrainingDivergedError(f"{', '.join(non_finite[:3])} hold NaN or infinite values at step "
                                        f"{step}: not saved; the newest checkpoint predates it")
    record = {"digests": {name: check.digest for name, check in checks.items()}, "identity": identity,
              "final_step": final_step, "step": step}
    if params_only:
        record[PARAMS_ONLY_KEY] = True
    # Each phase fails on every process if it fails on one (``agreement``): none is left at the
    # next barrier. The save in flight fails as its own step's, not as this one's.
    with agreement.failing_together(f"saving the checkpoint of step {manager.latest_step()}"):
        wait_until_saved(manager)
    with agreement.failing_together(f"saving the checkpoint of step {step}"), orbax_io.write_errors(
            manager.directory, f"saving checkpoints (the checkpoint of step {step})"):
        manager.save(step, args=ocp.args.PyTreeSave(state), custom_metadata={RECORD_KEY: record})
    if writes_in_place(state):
        with agreement.failing_together(f"saving the checkpoint of step {step}"):
            wait_until_saved(manager)


def writes_in_place(state: Any) -> bool:
    """Whether Orbax writes ``state`` from its own buffers: every array is on a CPU device. Its
    write then holds views of them until it is done, and a step that donated them meanwhile would
    get a fresh copy of the whole state from XLA instead of updating it in place."""
    leaves = [leaf for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array)]
    return bool(leaves) and all(device.platform == "cpu" for leaf in leaves for device in leaf.devices())


def wait_until_saved(manager: ocp.CheckpointManager) -> None:
    """Blocks until the save in flight is on disk (a failed one: WorkdirError naming its step)."""
    with orbax_io.write_errors(manager.directory, f"saving checkpoints (the checkpoint of step "
                                                  f"{manager.latest_step()})"):
        manager.wait_until_finished()


def restore_latest(folder: Path, abstract_state: Any, identity: dict | None = None) -> Restored | None:
    """Restores the newest intact checkpoint of ``folder`` onto the shardings in ``abstract_state``.

    Args:
      folder: the folder holding ``checkpoints/`` (a workdir, a group, ``rerank/``).
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings for the current mesh.
      identity: what the checkpoint's record must match (``workdir.identity`` of this run), or None.

    Returns:
      The restored checkpoint, or None when the folder has no checkpoint yet. Damaged newer
      steps are set aside (``set_aside``) so that training can save those steps again.

    Raises:
      WorkdirError: the checkpoint was written by another run (naming the difference), does not
        fit this config, or every checkpoint is damaged.
    """
    _refuse_params_only(Path(folder))

    def refuse(step: int, saved: dict) -> str | None:
        return wd.describe_difference(f"{folder / CHECKPOINT_DIR / str(step)}", saved, identity)

    restored = _restore_newest(Path(folder), abstract_state, ocp.args.StandardRestore(abstract_state),
                               refuse if identity is not None else None)
    if restored is not None:
        set_aside(folder, restored.damaged)
        host_memory.release_free_memory()  # what the reading threads freed, before the steps allocate
    return restored


def restore_params(folder: Path, abstract_params: Any, abstract_table: Any = None) -> tuple[int, Any, Any]:
    """``(step, parameters, label table)`` of a folder's newest intact checkpoint (no optimizer
    state), as host arrays; checked against the folder's own ``config.json`` where it has one.

    Args:
      folder: the workdir (or group folder, or ``rerank/``) holding ``checkpoints/``.
      abstract_params: the parameters' shapes and dtypes (``jax.eval_shape`` of the init).
      abstract_table: the learned class -> bucket table's shape and dtype (the state's
        ``"label_table"``), or None: none is read (hashed buckets) and None is returned.
    """
    folder = Path(folder)
    abstract = {"params": abstract_params}
    if abstract_table is not None:
        abstract["label_table"] = abstract_table
    args = ocp.args.PyTreeRestore(
        item=abstract, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract))
    refuse = None
    if (folder / run_file.CONFIG_FILE).exists():
        saved = run_file.read_run_file(folder)
        expected = wd.identity(saved.config, saved.info, saved.data_fingerprint)

        def refuse(step: int, recorded: dict) -> str | None:
            difference = wd.identity_difference(recorded, expected)
            if difference is None:
                return None
            key, trained, written = difference
            return (f"{folder / CHECKPOINT_DIR / str(step)}: the checkpoint cannot be restored for this config: "
                    f"{folder / run_file.CONFIG_FILE} has {key}={written!r}, the checkpoint was trained with "
                    f"{trained!r}; was config.json edited or replaced? put back the run's own config.json")

    restored = _restore_newest(folder, abstract, args, refuse)
    if restored is None:
        raise WorkdirError(f"{folder}: no checkpoint found under {CHECKPOINT_DIR}/")
    return restored.step, restored.state["params"], restored.state.get("label_table")


def _refuse_params_only(folder: Path) -> None:
    """A checkpoint of the parameters alone has no optimiser state to resume training from."""
    steps = _steps(folder / CHECKPOINT_DIR)
    record = _record(folder / CHECKPOINT_DIR, steps[0]) if steps else None
    if isinstance(record, dict) and record.get(PARAMS_ONLY_KEY):
        raise WorkdirError(f"{folder / CHECKPOINT_DIR / str(steps[0])}: holds the parameters alone, without "
                           "the optimiser's moments (an export for serving): training cannot resume from it; "
                           "train in the run's own workdir, or in a new one")


def set_aside(folder: Path, damaged: tuple[tuple[int, str], ...]) -> None:
    """Moves damaged step folders to ``FOLDER/damaged_checkpoints/`` (kept, never deleted), so
    that training can save those steps again (process 0 of a multi-host run)."""
    for step, _ in damaged if jax.process_index() == 0 else ():
        target = Path(folder) / DAMAGED_DIR / str(step)
        suffix = 1
        while target.exists():
            target, suffix = Path(folder) / DAMAGED_DIR / f"{step}.{suffix}", suffix + 1
        with wd.storage_errors(Path(folder), "setting a damaged checkpoint aside"):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(folder) / CHECKPOINT_DIR / str(step)), str(target))
        log.warning("warning: the damaged checkpoint of step %d is kept in %s", step, target)


def _restore_newest(folder: Path, abstract: Any, args: Any,
                    refuse: Callable[[int, dict], str | None] | None) -> Restored | None:
    directory = folder / CHECKPOINT_DIR
    steps = _steps(directory)
    if not steps:
        return None
    damaged: list[tuple[int, str]] = []
    with orbax_io.opened(directory, read_only=True) as manager:
        for step in steps:
            record = _record(directory, step)  # None: saved before records, nothing to check against
            if isinstance(record, str):
                damaged.append((step, record))
                continue
            if record is not None and misnamed(directory, step, record):
                raise WorkdirError(misnamed(directory, step, record))
            if record is not None and refuse is not None and record.get("identity"):
                message = refuse(step, record["identity"])
                if message:
                    raise WorkdirError(message)
            _refuse_other_shapes(directory, step, abstract)
            try:
                tree = manager.restore(step, args=args)
            except Exception as error:  # Orbax raises many types; the user needs one clear message.
                damaged.append((step, f"it cannot be read: {_read_failure(error)}"))
                continue
            problem = _verify(directory, step, tree, abstract, record)
            if problem:
                damaged.append((step, problem))
                continue
            for bad_step, why in damaged:
                log.warning("warning: %s/%d is damaged (%s); using the checkpoint of step %d instead",
                            directory, bad_step, why, step)
            return Restored(step, tree, tuple(damaged))
    raise WorkdirError(f"{directory}: every checkpoint is damaged (" + "; ".join(
        f"step {step}: {why}" for step, why in damaged) + f"); move {directory} away to train from scratch")


def _verify(directory: Path, step: int, tree: Any, abstract: Any, record: dict | None) -> str | None:
    """Why a restored tree is not what was saved (None: it is)."""
    expected = jax.tree.map(lambda leaf: tuple(leaf.shape), abstract)
    found = jax.tree.map(lambda leaf: tuple(leaf.shape), tree)
    if found != expected:
        raise WorkdirError(f"{directory}/{step}: the checkpoint cannot be restored for this config: its "
                           f"shapes {found} differ from {expected}; was config.json edited?")
    checks = integrity.check_tree(tree)
    if record is not None:
        for name, check in checks.items():
            if record["digests"].get(name) != check.digest:
                return f"the content of {name} does not match its checksum"
    non_finite = [name for name, check in checks.items() if not check.finite]
    if non_finite:
        return f"{', '.join(non_finite[:3])} hold NaN or infinite values"
    return None


def _refuse_other_shapes(directory: Path, step: int, abstract: Any) -> None:
    """A checkpoint saved with other shapes is not damaged: it belongs to another config (a
    WorkdirError), found from Orbax's tree metadata before any array is read."""
    stored = _stored_shapes(directory / str(step))
    wanted = {integrity.leaf_name(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    differing = sorted((not name.startswith("params"), name) for name, shape in wanted.items()
                       if name in stored and stored[name] != shape)
    if differing:
        name = differing[0][1]
        raise WorkdirError(
            f"{directory}/{step}: the checkpoint cannot be restored for this config: it holds {name} of "
            f"shape {stored[name]}, this config needs {wanted[name]}; was config.json edited, or the "
            "checkpoint written by another run?")


def _stored_shapes(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """The global shape of each array as Orbax's metadata records it (empty when it cannot be read:
    the restore then says what is wrong)."""
    handler = ocp.StandardCheckpointHandler()
    try:
        metadata = handler.metadata(step_dir.absolute() / "default")
        tree = getattr(metadata, "tree", metadata)
        return {integrity.leaf_name(path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}
    except Exception:  # a damaged checkpoint: unknown shapes, reported by the restore that follows
        return {}
    finally:
        handler.close()


def _read_failure(error: BaseException) -> str:
    """What a failed restore says, in one short line: TensorStore's status message (``NOT_FOUND:
    Error reading ...``) where it is in the chain of causes, else the error's first line."""
    first = error
    for _ in range(8):
        if error is None:
            break
        text = str(error).strip()
        if re.match(r"[A-Z_]+: ", text):
            return text.splitlines()[0][:240]
        error = error.__cause__ or error.__context__
    text = str(first).strip().split(" See full TensorStore details")[0]
    return f"{type(first).__name__}: {text.splitlines()[0][:240] if text else ''}"
