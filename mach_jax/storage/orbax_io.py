"""Orbax as mach_jax uses it: managers that are always closed, and failed writes turned into one
``WorkdirError``. (Orbax's own noise is kept off the screen by the command line alone:
``orbax_noise.quieted``.)
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import orbax.checkpoint as ocp

from mach_jax.errors import WorkdirError
from mach_jax.storage import orbax_noise
from mach_jax.storage.orbax_noise import storage_failure

def manager(directory: Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """Orbax manager of ``directory``.

    A training manager removes the leftovers of an interrupted save; a ``read_only`` one (for
    evaluation) touches nothing, so it is safe while another process still trains there.
    """
    if not read_only:  # Orbax's own cleanup runs in the background: not done when a short run ends
        for leftover in Path(directory).glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only)
    # Uncompressed: zstd saved some 8% of a trained state's bytes (float32 weights and moments
    # compress poorly) but held a host buffer as large as the state while writing, and took twice
    # as long. Readers need no option: each array's codecs are in its own metadata.
    handler = None if read_only else ocp.PyTreeCheckpointHandler(use_compression=False)
    with write_errors(directory, "opening the checkpoints"), orbax_noise.read_only_notice_dropped():
        return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_handlers=handler)


@contextlib.contextmanager
def opened(directory: Path, keep: int = 2, read_only: bool = False) -> Iterator[ocp.CheckpointManager]:
    """A manager for the ``with`` block; a save in flight completes (or fails, as a
    WorkdirError) before the block is left, however it is left, and the manager is closed."""
    opened_manager = manager(directory, keep, read_only)
    try:
        yield opened_manager
    finally:
        try:
            with write_errors(directory, "saving checkpoints"):
                opened_manager.wait_until_finished()
        finally:
            with contextlib.suppress(Exception):  # it raises a failed save's error once more
                opened_manager.close()


@contextlib.contextmanager
def write_errors(directory: Path, doing: str) -> Iterator[None]:
    """Turns a failed write (a full disk, no permission, a read-only disk), as Orbax or
    TensorStore raise it, into one WorkdirError naming the folder and what to do."""
    try:
        yield
    except Exception as error:  # Orbax raises ValueError or OSError for the same disk error
        reason = storage_failure(error)
        if reason is None:
            raise
        raise WorkdirError(f"{directory}: {reason} while {doing}; free space or make the folder "
                           "writable, then run the same command again (it resumes from the newest "
                           "checkpoint)") from None
