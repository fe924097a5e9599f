"""Every user-facing error of mach_jax, in one place.

Each is an expected failure with a message a user can act on: the command-line entry points
(``cli.run_cli``) print it as one line and exit with status 2 (``TrainingInterrupted``: 128 +
the signal), as they do any ``OSError`` (a path that cannot be read or written, a full disk).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the value.

    Attributes:
      field: the dotted config path (``model.num_buckets``), or None when no single field is at fault.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ResourceError(ConfigError):
    """The run would not fit in the memory that is free; the message gives the estimate, what is
    free and settings that would fit (``training.resource_check``)."""


class DataFormatError(ValueError):
    """Malformed XC input; `line` is 1-based (header = 1) or None for whole-file problems."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.problem)


class DatasetError(RuntimeError):
    """A dataset could not be fetched, unpacked or verified; the message is one clear line."""


class UnsafePathError(ValueError):
    """A path to write is a device, FIFO, socket or symbolic link (or a lock or state file
    there is): never written through; the message names the path and what it is."""


class WorkdirError(ValueError):
    """The workdir is missing, incomplete, or was written by an incompatible run."""


class TrainingDivergedError(FloatingPointError):
    """A member's loss became NaN or infinite; the newest checkpoint predates it."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int, step: int, workdir: Path):
        self.signum, self.step, self.workdir = signum, step, workdir
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved in "
                         f"{workdir}; run the same command again to resume")


# What the command line reports as one line with exit status 2.
USER_ERRORS = (ConfigError, DataFormatError, DatasetError, WorkdirError, TrainingDivergedError,
               UnsafePathError, FileNotFoundError)
