"""Files on disk, in one place: the gzip sniff and the atomic writer.

Every file mach_jax writes goes through ``atomic_output`` (or its two shorthands): the bytes go
to a temporary file beside the target, which replaces the target only once complete, so a reader
never sees half a file and a failed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(prefix: bytes) -> bool:
    """Whether data starting with ``prefix`` is gzip (by its magic bytes, not the file name)."""
    return prefix[:2] == GZIP_MAGIC


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """The file's bytes, gunzipped when it is gzip."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if is_gzip(magic) else open(path, "rb")


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
