"""Reading an XC file's text whole, once and bounded: the bytes ``xc_format.parse_xc_bytes`` parses.

The input is read in blocks, gunzipped as it streams (gzip found by its magic bytes, peeked),
and checked while it streams: a line longer than the cap (``files.MAX_LINE_BYTES`` unless told)
and a line past the points the header declares end the read at once, naming the line. So
``/dev/zero``, a FIFO that never ends or a gzip bomb costs at most the cap, not the machine's
memory. The raw bytes read can be fed to a digest (the parse cache's key) on the way.
"""

from __future__ import annotations

import gzip
import io
import zlib

from mach_jax.data.files import BLOCK_BYTES, is_gzip
from mach_jax.data.xc_header import parse_header
from mach_jax.errors import DataFormatError


class _Digesting(io.RawIOBase):
    """A raw stream that feeds every byte read from ``source`` to ``digest`` (None: to nothing)."""

    def __init__(self, source, digest):
        self.source, self.digest = source, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.source.readinto(buffer)
        if count and self.digest is not None:
            self.digest.update(memoryview(buffer)[:count])
        return count or 0


def read_xc_text(stream, path: str, max_line: int, digest=None) -> tuple[bytes, DataFormatError | None]:
    """The text of an XC file (gunzipped), read once from ``stream``, bounded.

    Args:
      stream: the opened input (binary, readable; a FIFO or stdin too).
      path: the file, as messages name it.
      max_line: the longest line taken, in bytes, its newline left out.
      digest: a ``hashlib`` digest fed the raw bytes read (before gunzipping), or None.

    Returns:
      ``(text, excess)``: the text (the header, at most the declared points' lines, their
      newlines) and, where a line follows the declared points, the error naming it (raised by the
      caller once the text before it has parsed: an error there comes first), else None.

    Raises:
      DataFormatError: a line over ``max_line`` (naming it), corrupt gzip data.
    """
    raw = io.BufferedReader(_Digesting(stream, digest))
    try:
        source = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(raw.peek(2)[:2]) else raw
        return _read_bounded(source, path, max_line)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataFormatError(path, None, f"corrupt or truncated gzip data ({error})") from None


def _read_bounded(source, path: str, max_line: int) -> tuple[bytes, DataFormatError | None]:
    # Blocks of at most max_line + 1 bytes: a line inside one block is never over the cap, so
    # only the line running across block ends needs counting.
    size = min(BLOCK_BYTES, max_line + 1)
    blocks, newlines, open_line, limit = [], 0, 0, None
    while block := source.read(size):
        blocks.append(block)
        count = block.count(b"\n")
        if count:
            if open_line + block.index(b"\n") > max_line:
                _refuse_long_line(path, newlines + 1, max_line)
            open_line = len(block) - block.rindex(b"\n") - 1
        else:
            open_line += len(block)
        newlines += count
        if open_line > max_line:
            _refuse_long_line(path, newlines + 1, max_line)
        if limit is None and newlines:
            blocks = [b"".join(blocks)]
            limit = _line_limit(blocks[0], path)
            if limit == 0:  # a header parse_xc_bytes refuses: it names the problem
                break
        if limit == -1 and not block.isspace():
            break  # blank so far, then text: no header (parse_xc_bytes says so)
        if limit is not None and 0 < limit < newlines:
            return _cut_at_extra_line(b"".join(blocks), path, limit)
    return b"".join(blocks), None


def _line_limit(data: bytes, path: str) -> int:
    """The lines the file may have (header + declared points), from its complete first line; -1
    while every line so far is blank (all blank: an empty file), 0 for a bad header."""
    header = data[:data.index(b"\n")]
    try:
        return parse_header(header, path)[0] + 1
    except DataFormatError:
        return -1 if data.isspace() else 0


def _refuse_long_line(path: str, line: int, max_line: int):
    raise DataFormatError(path, line, f"line longer than {max_line:,} bytes: not a text file of one point "
                          "per line (if it is one, pass a larger --max-line-bytes)")


def _cut_at_extra_line(data: bytes, path: str, limit: int) -> tuple[bytes, DataFormatError]:
    """Line ``limit + 1`` is past the declared points: the lines before it, to be parsed first
    (an error there comes first), and the error for the extra line, unread past it."""
    cut = -1
    for _ in range(limit):
        cut = data.index(b"\n", cut + 1)
    extra = data[cut + 1:].split(b"\n", 1)[0].rstrip(b"\r")
    kind = "blank line" if not extra else "data line"
    return data[:cut + 1], DataFormatError(path, limit + 1, f"{kind} after the {limit - 1} points declared in "
                                           "the header (reading stopped there)")
