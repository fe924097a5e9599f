"""Streaming reader of the XC text format: a file of any size in chunks of rows.

``iter_xc_chunks`` validates exactly like ``xc_format.parse_xc_bytes`` (it parses each chunk
with it) and reports errors with the line number in the whole file; memory is bounded by the
chunk size, not the file size.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Iterator

from mach_jax.data.csr import XCDataset
from mach_jax.errors import DataFormatError
from mach_jax.data.files import open_binary
from mach_jax.data.xc_format import parse_xc_bytes
from mach_jax.data.xc_header import parse_header


def iter_xc_chunks(path: str | os.PathLike, rows_per_chunk: int = 65_536) -> Iterator[XCDataset]:
    """Yields the file's points in order, ``rows_per_chunk`` at a time.

    Args:
      path: an XC file, plain or gzip.
      rows_per_chunk: points per chunk, >= 1 (the last one may be shorter).

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
            header = handle.readline()
            if not header.strip():
                raise DataFormatError(path, None, "file is empty")
            num_points, num_features, num_labels = parse_header(header, path)
            rows_done = 0
            while True:
                lines = [line for _, line in zip(range(rows_per_chunk), handle)]
                if not lines:
                    break
                chunk_header = f"{len(lines)} {num_features} {num_labels}\n".encode()
                try:
                    chunk = parse_xc_bytes(chunk_header + b"".join(lines), path)
                except DataFormatError as error:
                    line = None if error.line is None else error.line - 1 + rows_done + 1
                    raise DataFormatError(path, line, error.problem) from None
                rows_done += len(lines)
                if rows_done > num_points:
                    raise DataFormatError(path, num_points + 2, f"header declares {num_points} points "
                                          "but the file has more lines")
                yield chunk
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DataFormatError(path, None, f"corrupt or truncated gzip data ({error})") from None
    if rows_done != num_points:
        raise DataFormatError(path, 1, f"header declares {num_points} points but the file has "
                              f"{rows_done} data lines")
