"""Files on disk, in one place: the gzip sniff, block-wise hashing, the bounded line reader and
the atomic writer.

Every file mach_jax writes goes through ``atomic_output`` (or its two shorthands): the bytes go
to a temporary file beside the target, which replaces the target only once complete, so a reader
never sees half a file and a failed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from mach_jax.errors import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 20


def is_gzip(prefix: bytes) -> bool:
    """Whether data starting with ``prefix`` is gzip (by its magic bytes, not the file name)."""
    return prefix[:2] == GZIP_MAGIC


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """The file's bytes, gunzipped when it is gzip."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if is_gzip(magic) else open(path, "rb")


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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to; it replaces ``path`` when the block
    ends without an error, and is removed otherwise."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            yield file
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
