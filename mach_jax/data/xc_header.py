"""The header line of an Extreme Classification Repository file: ``num_points num_features
num_labels``, the one parser every reader (whole-file, streaming, downloader) uses, and the one
check of a number's length before ``int()`` (``parse_count``): Python refuses to convert more
than 4,300 digits with a traceback, and no id or count of mach_jax needs more than 19."""

from __future__ import annotations

from mach_jax.errors import DataFormatError

UTF8_BOM = b"\xef\xbb\xbf"
# Digits of the largest number any id or count may have (int64: 9,223,372,036,854,775,807).
MAX_DIGITS = 19


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
    num_points, num_features, num_labels = (parse_count(field, source, 1, name) for field, name in
                                            zip(fields, ("num_points", "num_features", "num_labels")))
    return num_points, num_features, num_labels


def too_long(digits: bytes) -> bool:
    """Whether a string of digits is longer than any id or count may be (``MAX_DIGITS``)."""
    return len(digits) > MAX_DIGITS


def parse_count(digits: bytes, source: str, line: int | None, what: str) -> int:
    """The value of a non-negative integer's ``digits`` (already checked to be digits), its
    length checked before ``int()``.

    Raises:
      DataFormatError: naming ``source:line``, ``what`` and the number's length.
    """
    if too_long(digits):
        raise DataFormatError(source, line, f"{what} {show(digits, 20)} has {len(digits):,} digits: more "
                              f"than any id or count may have (D and L must be below 2**31)")
    return int(digits)
