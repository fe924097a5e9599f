"""The header line of an Extreme Classification Repository file: ``num_points num_features
num_labels``, the one parser every reader (whole-file, streaming, downloader) uses."""

from __future__ import annotations

from mach_jax.errors import DataFormatError

UTF8_BOM = b"\xef\xbb\xbf"


def show(text: bytes, limit: int = 40) -> str:
    """Quoted, escaped, shortened text for messages, e.g. '\\xef1 2'."""
    s = text.decode("latin-1")
    return ascii(s if len(s) <= limit else s[:limit] + "...")


def parse_header(line: bytes, source: str) -> tuple[int, int, int]:
    """``(N, D, L)`` from line 1 of an XC file.

    Only spaces and tabs separate the three fields (as on data lines): no VT, FF or lone CR. A
    UTF-8 byte order mark before it (a file saved by a Windows editor) is skipped.

    Raises:
      DataFormatError: naming ``source``, line 1 and what was found.
    """
    text = line.rstrip(b"\r\n").removeprefix(UTF8_BOM)
    fields = text.split() if not text.translate(None, b"0123456789 \t") else []
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        raise DataFormatError(source, 1, "header must be three non-negative integers 'num_points "
                              f"num_features num_labels', got {show(text)}")
    num_points, num_features, num_labels = map(int, fields)
    return num_points, num_features, num_labels
