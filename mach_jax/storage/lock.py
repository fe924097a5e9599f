"""One training run per folder at a time: an exclusive lock on ``FOLDER/train.lock``.

Two runs writing one workdir would delete each other's half-written checkpoints and interleave
their steps. The lock is ``flock`` on a file that names its holder (pid, host, start time): the
kernel drops it when the holder dies however it dies (SIGKILL included), so a lock left by a dead
process is simply taken over. The file is removed when the run ends, and a folder the run created
is removed again when the run is refused, so that a refused run leaves nothing behind. The lock
file is opened with ``O_NOFOLLOW`` and must be a regular file: a link planted there by anyone who
can write a shared workdir is refused, never followed to clobber its target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from mach_jax.data.files import describe_kind
from mach_jax.errors import WorkdirError

LOCK_FILE = "train.lock"

log = logging.getLogger("mach_jax")


def require_folder(folder: Path) -> None:
    """Refuses a ``folder`` that is a file, or lies under one (nothing is created)."""
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                what = (f"a symbolic link to {os.readlink(path)}, which does not exist" if not path.exists()
                        else "a file")
                where = f"is {what}" if path == folder else f"lies under {path}, which is {what}"
                raise WorkdirError(f"{folder}: {where}, not a folder; give --workdir a folder (a new "
                                   "one, or a workdir trained before)")
            return


@contextlib.contextmanager
def hold(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Holds the training lock of ``folder`` (created if missing) for the ``with`` block.

    Args:
      folder: the run's folder (a workdir, a group ``reps-START-STOP`` or ``rerank/``).
      enabled: False on the processes of a multi-host run other than process 0 (one holder).

    Raises:
      WorkdirError: another live process holds the lock (naming its pid), or the folder cannot be
        created or written.
    """
    folder = Path(folder)
    require_folder(folder)
    if not enabled:
        yield
        return
    created = not folder.exists()
    accepted = False
    try:
        handle = _acquire(folder)
        try:
            yield
            accepted = True
        finally:
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()  # before unlocking: a run that waits locks a new file
            os.close(handle)
    finally:
        if created and not accepted:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty: a refused first run leaves no folder behind


def _acquire(folder: Path) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"{folder}: cannot create the folder ({error.strerror or error}); give "
                           "--workdir a folder you can write to") from None
    path = folder / LOCK_FILE
    while True:
        try:  # never through a link, nor blocking on a FIFO put there: a regular file only
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise WorkdirError(f"{path}: is a symbolic link ({os.readlink(path)}); refused (the lock file "
                                   "is never written through a link): remove it, then run again") from None
            raise WorkdirError(f"{folder}: cannot write there ({error.strerror or error}); training "
                               "writes its checkpoints, config.json and metrics there: give --workdir "
                               "a folder you can write to") from None
        mode = os.fstat(handle).st_mode
        if not stat.S_ISREG(mode):
            os.close(handle)
            raise WorkdirError(f"{path}: is a {describe_kind(mode)}, not a regular file; refused: remove it, "
                               "then run again")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            if holder == "pid unknown":  # locked a moment ago: its holder is writing its pid
                time.sleep(0.2)
                holder = _read_holder(handle)
            os.close(handle)
            raise WorkdirError(f"{folder} is in use by another training run ({holder}); wait for it to "
                               f"end or stop it, then run again (two runs there would overwrite each "
                               f"other's checkpoints)") from None
        if _same_file(handle, path):
            break
        os.close(handle)  # the holder removed it between our open and lock: lock the new one
    previous = _read_holder(handle)
    if previous != "pid unknown":
        log.info("%s: taking over the lock of a run that ended without releasing it (%s)", folder, previous)
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return handle


def _read_holder(handle: int) -> str:
    text = os.pread(handle, 200, 0).decode(errors="replace").strip()
    return text if text.startswith("pid ") else "pid unknown"


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.fstat(handle).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
