"""Streaming reader of the XC text format: a file of any size in chunks of rows.

``iter_xc_chunks`` validates exactly like ``xc_format.parse_xc_bytes`` (it parses each chunk
with it) and reports errors with the line number in the whole file; memory is bounded by the
chunk size and the line cap, not the file size. The input is opened and read once, so a FIFO, a
pipe or ``-`` (stdin) works; a line past the cap, or a line past the points the header declares,
is refused as soon as it is read (``/dev/zero`` ends after one capped line, not in the OOM killer).
"""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
from typing import Iterator

from mach_jax.data.csr import XCDataset
from mach_jax.errors import DataFormatError
from mach_jax.data.files import MAX_LINE_BYTES, open_binary, read_lines
from mach_jax.data.xc_format import parse_xc_bytes
from mach_jax.data.xc_header import parse_header

_HINTS = ("; if it is one, pass a larger --max-line-bytes", "")


def iter_xc_chunks(path: str | os.PathLike, rows_per_chunk: int = 65_536,
                   max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[XCDataset]:
    """Yields the file's points in order, ``rows_per_chunk`` at a time.

    Args:
      path: an XC file, plain or gzip; a FIFO, a pipe or ``-`` (stdin) too.
      rows_per_chunk: points per chunk, >= 1 (the last one may be shorter).
      max_line_bytes: the longest line taken, in bytes (its newline left out).

    Yields:
      XCDatasets with features [<= rows_per_chunk, D] and labels [<= rows_per_chunk, L].

    Raises:
      DataFormatError: naming the file and the line in the whole file.
      ValueError: ``rows_per_chunk`` < 1.
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk={rows_per_chunk}: must be >= 1")
    path = os.fspath(path)
    try:
        handle = open_binary(path)
    except OSError as error:
        raise DataFormatError(path, None, f"cannot read file ({error.strerror or error})") from None
    with handle:
        try:
            yield from _chunks(handle, path, rows_per_chunk, max_line_bytes)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DataFormatError(path, None, f"corrupt or truncated gzip data ({error})") from None
        except OSError as error:
            raise DataFormatError(path, None, f"cannot read file ({error.strerror or error})") from None


def _chunks(handle, path: str, rows_per_chunk: int, max_line_bytes: int) -> Iterator[XCDataset]:
    lines = read_lines(handle, path, max_line_bytes, float("inf"), _HINTS)
    _, header = next(lines, (1, b""))
    if not header.strip():
        raise DataFormatError(path, None, "file is empty")
    num_points, num_features, num_labels = parse_header(header, path)
    rows_done = 0
    while True:
        # At most the points still declared, plus one: a line past them is refused unparsed.
        wanted = min(rows_per_chunk, num_points - rows_done + 1)
        chunk_lines = [line for _, line in itertools.islice(lines, wanted)]
        if rows_done + len(chunk_lines) > num_points:
            raise DataFormatError(path, num_points + 2, f"header declares {num_points} points but the file "
                                  "has more lines")
        if not chunk_lines:
            break
        chunk_header = f"{len(chunk_lines)} {num_features} {num_labels}\n".encode()
        try:
            chunk = parse_xc_bytes(chunk_header + b"".join(chunk_lines), path)
        except DataFormatError as error:
            line = None if error.line is None else error.line - 1 + rows_done + 1
            raise DataFormatError(path, line, error.problem) from None
        rows_done += len(chunk_lines)
        yield chunk
    if rows_done != num_points:
        raise DataFormatError(path, 1, f"header declares {num_points} points but the file has "
                              f"{rows_done} data lines")
