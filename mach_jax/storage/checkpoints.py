"""Orbax checkpoints of the training state under ``workdir/checkpoints/<step>/``.

Written by Orbax's CheckpointManager, asynchronously and atomically (a step folder appears only
once it is complete); a read-only manager (evaluation) touches nothing, so it is safe while
another process still trains there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mach_jax.errors import WorkdirError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """Orbax manager of ``workdir/checkpoints``.

    A training manager removes the leftovers of an interrupted save; a ``read_only`` one (for
    evaluation) touches nothing, so it is safe while another process still trains there.
    """
    if read_only:
        _silence_read_only_notice()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only)
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's "Given directory is read only" warning: read-only is what we asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


def _silence_read_only_notice() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _ReadOnlyNotice) for f in absl_logger.filters):
        absl_logger.addFilter(_ReadOnlyNotice())


def save_state(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Saves (asynchronously) unless this step is already saved."""
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(state))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, args: Any) -> Any:
    """Restores one step; a checkpoint that does not fit the config is a WorkdirError."""
    try:
        return manager.restore(step, args=args)
    except Exception as error:  # Orbax raises many types; the user needs one clear message.
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WorkdirError(
            f"{manager.directory}/{step}: the checkpoint cannot be restored for this config "
            f"({type(error).__name__}: {detail[:300]}); was config.json edited, or the checkpoint "
            "written by another run?") from error


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
    """Restores the newest complete checkpoint onto the shardings in ``abstract_state``.

    Args:
      manager: from ``checkpoint_manager``.
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings for the current mesh.

    Returns:
      The state, or None when the workdir has no checkpoint yet.
    """
    step = manager.latest_step()
    if step is None:
        return None
    return restore_checkpoint(manager, step, ocp.args.StandardRestore(abstract_state))


def restore_params(folder: Path, abstract_params: Any) -> tuple[int, Any]:
    """``(step, parameters)`` of a workdir's newest checkpoint (no optimizer state), as host arrays.

    Args:
      folder: the workdir (or group folder) holding ``checkpoints/``.
      abstract_params: the parameters' shapes and dtypes (``jax.eval_shape`` of the init).
    """
    manager = checkpoint_manager(folder, read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            raise WorkdirError(f"{folder}: no checkpoint found under {CHECKPOINT_DIR}/")
        abstract = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(
            item=abstract, partial_restore=True,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract))
        params = restore_checkpoint(manager, step, args)["params"]
    finally:
        manager.close()
    expected = jax.tree.map(lambda leaf: leaf.shape, abstract_params)
    found = jax.tree.map(lambda leaf: leaf.shape, params)
    if found != expected:
        raise WorkdirError(
            f"{manager.directory}/{step}: the checkpoint cannot be restored for this config: its "
            f"parameter shapes {found} differ from {expected}; was config.json edited?")
    return step, params
