"""Orbax as mach_jax uses it: managers that are always closed, failed writes turned into one
``WorkdirError``, and Orbax's own noise kept off the user's screen where we report the problem.

Three kinds of noise: the notices a read-only manager logs about what it is asked to do; the
tracebacks Orbax's background threads log when a save fails (the same failure reaches us and is
reported once, as one line); and ``RuntimeError: Event loop is closed``, printed at exit when a
restore fails part-way: Orbax closes its event loop while TensorStore still completes the reads
it had started, and their callbacks find the loop closed. We report the failed restore itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import orbax.checkpoint as ocp

from mach_jax.errors import WorkdirError
from mach_jax.storage.workdir import WRITE_ERRNOS

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# Notices of a read-only manager, and of a damaged step we report ourselves.
_NOTICES = ("Given directory is read only", "Metadata file does not exist",
            "was found in the checkpoint, but could not be restored")


def manager(directory: Path, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """Orbax manager of ``directory``.

    A training manager removes the leftovers of an interrupted save; a ``read_only`` one (for
    evaluation) touches nothing, so it is safe while another process still trains there.
    """
    quiet_orbax()
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
    with write_errors(directory, "opening the checkpoints"):
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


def storage_failure(error: BaseException | None) -> str | None:
    """The OS's words for a failed write behind ``error`` (or its causes), else None."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.strerror or os.strerror(error.errno)
        match = _OS_ERROR_CODE.search(str(error))
        if match and int(match.group(1)) in WRITE_ERRNOS:
            return os.strerror(int(match.group(1)))
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class _OrbaxNoise(logging.Filter):
    """Drops the notices above and the background threads' logs of a failed write."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(notice in message for notice in _NOTICES):
            return False
        failure = record.exc_info[1] if record.exc_info else None
        return storage_failure(failure) is None and not _OS_ERROR_CODE.search(message)


class _LeftoverReads(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for the reads a failed restore leaves
    running (TensorStore's errors: the restore has already been reported as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.exc_info[1] if record.exc_info else getattr(record, "exception", None)
        if not record.getMessage().startswith("Task exception was never retrieved"):
            return True
        text = str(failure) if failure is not None else record.getMessage()
        return not any(mark in text for mark in ("Error reading", "OCDBT", "FAILED_PRECONDITION"))


class _DropClosedLoop:
    """``sys.unraisablehook`` that drops what a failed Orbax restore leaves behind ("Event loop
    is closed", its read coroutines' errors) and passes the rest on."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        self.previous(unraisable)


def quiet_orbax() -> None:
    """Installs the filters (once; again if a test harness put its own hook back)."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxNoise) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxNoise())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _LeftoverReads) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_LeftoverReads())
    if not isinstance(sys.unraisablehook, _DropClosedLoop):
        sys.unraisablehook = _DropClosedLoop(sys.unraisablehook)
