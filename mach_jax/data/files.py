"""Files on disk, in one place: the gzip sniff, inputs opened once, block-wise hashing, the
bounded line reader and the atomic writer.

Every file mach_jax writes goes through ``atomic_output`` (or its two shorthands): the bytes go
to a temporary file beside the target, which replaces the target only once complete, so a reader
never sees half a file and a failed write leaves the old file as it was. Only a regular file or a
new path is ever replaced: a device, FIFO, socket or symbolic link there is refused
(``require_regular_target``), so ``--output /dev/null`` run as root cannot replace the device.

Inputs are opened once (``open_input``) and sniffed for gzip by peeking at the buffer, so a FIFO,
a pipe or ``-`` (stdin) is read in one pass.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from mach_jax.errors import DataFormatError, UnsafePathError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 20
# The longest line a reader takes (the downloader's cap too): a file without newlines
# (``/dev/zero``) is refused after this many bytes instead of read whole.
MAX_LINE_BYTES = 64 << 20
STDIN = "-"


def is_gzip(prefix: bytes) -> bool:
    """Whether data starting with ``prefix`` is gzip (by its magic bytes, not the file name)."""
    return prefix[:2] == GZIP_MAGIC


def open_input(path: str | os.PathLike) -> io.BufferedReader:
    """The input opened once, buffered: ``-`` is stdin (a duplicate of it: closing the stream
    leaves stdin open), anything else is opened by name (a FIFO or ``/dev/stdin`` too)."""
    if os.fspath(path) == STDIN:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    return open(path, "rb")


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """The input's bytes, gunzipped when it is gzip; opened once (``open_input``) and sniffed
    by peeking at its buffer, so that a pipe loses nothing."""
    raw = open_input(path)
    try:
        return gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(raw.peek(2)[:2]) else raw
    except BaseException:
        raw.close()
        raise


def is_regular_input(stream) -> bool:
    """Whether an open stream is a regular file (finite, and safe to read twice to hash it)."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False


def describe_kind(mode: int) -> str:
    """What a non-regular file is, from its ``st_mode``: "symbolic link", "FIFO", ..."""
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def require_regular_target(path: str | os.PathLike, what: str = "") -> None:
    """Refuses to write ``path`` unless it is a regular file or does not exist yet (a folder is
    left to the write, which fails with the OS's own error).

    Args:
      path: the output path (its last part is not followed if it is a link).
      what: the flag that named it, for the message ("--output"), or "".

    Raises:
      UnsafePathError: naming the path and what is there.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a folder: the rename fails by itself (OSError)
        return
    kind = describe_kind(mode)
    raise UnsafePathError(f"{what + ' ' if what else ''}{path}: is a {kind}, not a regular file; refused "
                          f"(an output only ever replaces a regular file: give a new path or a file's)")


def hash_stream(stream: BinaryIO, *digests) -> None:
    """Feeds the stream's remaining bytes to each ``hashlib`` digest, 1 MiB at a time."""
    while block := stream.read(BLOCK_BYTES):
        for digest in digests:
            digest.update(block)


def file_digests(path: str | os.PathLike, names: Sequence[str]) -> dict[str, str]:
    """``{name: hex digest}`` of the file for each ``hashlib`` algorithm name, read once."""
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in names}
    with open(path, "rb") as f:
        hash_stream(f, *digests.values())
    return {name: digest.hexdigest() for name, digest in digests.items()}


def read_lines(stream: BinaryIO, where: str, max_line: int, max_total: int,
               hints: tuple[str, str] = ("", "")) -> Iterator[tuple[int, bytes]]:
    """The stream's lines, checked against size limits while they stream: a file without a
    newline is refused after ``max_line`` bytes, never read whole.

    Args:
      stream: a binary stream whose ``readline`` takes a size limit.
      where: the file, as messages name it.
      max_line: the longest line allowed, in bytes, its newline left out.
      max_total: the most bytes the stream may hold.
      hints: what to do, appended to the message about a line and about the stream.

    Yields:
      (1-based line number, the line with its newline).

    Raises:
      DataFormatError: a longer line (naming it) or a longer stream.
    """
    total = 0
    for number in itertools.count(1):
        line = stream.readline(max_line + 1)
        if not line:
            return
        total += len(line)
        if len(line) > max_line and not line.endswith(b"\n"):
            raise DataFormatError(where, number, f"line longer than {_size(max_line)}: not a "
                                  f"text file of one record per line{hints[0]}")
        if total > max_total:
            raise DataFormatError(where, None, f"longer than {_size(max_total)}, refused while "
                                  f"reading it{hints[1]}")
        yield number, line


def _size(count: int) -> str:
    """``67,108,864 bytes (64 MiB)``: the binary unit only where it is exact."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count:,} bytes ({count >> shift} {unit})"
    return f"{count:,} bytes"


def open_state_file(path: str | os.PathLike, text: bool = True, exclusive: bool = False):
    """A log or state file opened for appending (created if missing; ``exclusive``: it must be
    new, ``O_EXCL``), never through a link (``O_NOFOLLOW``) and only if it is a regular file.

    Raises:
      UnsafePathError: a link, device, FIFO or socket is at ``path``.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_EXCL if exclusive else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        fd = None
    mode = os.lstat(path).st_mode if fd is None else os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        if fd is not None:
            os.close(fd)
        raise UnsafePathError(f"{path}: is a {describe_kind(mode)}, not a regular file; refused (never "
                              "written through): remove it, then run again")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a" if text else "ab")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to; it replaces ``path`` when the block
    ends without an error, and is removed otherwise.

    Raises:
      UnsafePathError: ``path`` is not a regular file (a device, FIFO, socket or symbolic link),
        checked before writing and again before the rename.
    """
    path = Path(path)
    require_regular_target(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            yield file
        require_regular_target(path)  # again: it may have been put there while we wrote
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through ``atomic_output``."""
    with atomic_output(path) as file:
        file.write(data)


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    """Writes ``payload`` as indented, key-sorted JSON (one final newline), atomically."""
    write_bytes_atomically(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
