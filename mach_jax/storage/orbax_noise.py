"""Orbax's own noise kept off the user's screen where we report the problem ourselves, for the
command line only: ``quieted()`` installs the filters for a ``with`` block and restores what was
there before, so a library call (a notebook) never changes the process's logging or hooks.

Three kinds of noise: the notices a read-only manager logs about what it is asked to do (and
the wait for a save we asked to wait for); the
tracebacks Orbax's background threads log when a save fails (the same failure reaches us and is
reported once, as one line); and ``RuntimeError: Event loop is closed``, printed at exit when a
restore fails part-way: Orbax closes its event loop while TensorStore still completes the reads
it had started, and their callbacks find the loop closed. We report the failed restore itself.
Importing this module loads neither Orbax nor JAX (``--help`` stays instant).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator

OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# Notices of a read-only manager, of a damaged step we report ourselves, and of the wait for a
# save that the re-ranker's loop asks for after each epoch.
_NOTICES = ("Given directory is read only", "Metadata file does not exist",
            "was found in the checkpoint, but could not be restored", "Waiting for previous save to complete")


def storage_failure(error: BaseException | None) -> str | None:
    """The OS's words for a failed write behind ``error`` (or its causes), else None."""
    from mach_jax.storage.workdir import WRITE_ERRNOS  # loaded by then: a failure came from a save

    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.strerror or os.strerror(error.errno)
        match = OS_ERROR_CODE.search(str(error))
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
        return storage_failure(failure) is None and not OS_ERROR_CODE.search(message)


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


class _ReadOnlyNotice(logging.Filter):
    """Drops the notice a read-only manager logs when it is made (evaluation asked for that)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def read_only_notice_dropped() -> Iterator[None]:
    """For the ``with`` block alone (a manager's construction): the filter is gone after it."""
    notice, absl_logger = _ReadOnlyNotice(), logging.getLogger("absl")
    absl_logger.addFilter(notice)
    try:
        yield
    finally:
        absl_logger.removeFilter(notice)


@contextlib.contextmanager
def quieted(hook_until_exit: bool = False) -> Iterator[None]:
    """The filters and the hook for the ``with`` block; the previous ones are back after it, but
    with ``hook_until_exit`` the hook stays for the rest of the process (a command's process ends
    right after the block, and a failed restore's leftover reads finish during its shutdown)."""
    filters = [(logging.getLogger("absl"), _OrbaxNoise()), (logging.getLogger("asyncio"), _LeftoverReads())]
    previous_hook = sys.unraisablehook
    for logger, noise in filters:
        logger.addFilter(noise)
    if not isinstance(previous_hook, _DropClosedLoop):  # once: a command left it for its shutdown
        sys.unraisablehook = _DropClosedLoop(previous_hook)
    try:
        yield
    finally:
        for logger, noise in filters:
            logger.removeFilter(noise)
        if isinstance(sys.unraisablehook, _DropClosedLoop) and not hook_until_exit:
            sys.unraisablehook = previous_hook
