"""The values of command-line flags: integers within int64, sizes with units, comma lists, the
member range; each refused with an ``argparse.ArgumentTypeError`` naming what was expected."""

from __future__ import annotations

import argparse
from typing import Any, Callable

# An int flag outside int64 cannot reach numpy or JAX: refused where it is parsed.
_INT64 = (-2**63, 2**63)


def parse_int(text: str) -> int:
    """An integer flag value; one outside int64 is refused (it could reach no array)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not _INT64[0] <= value < _INT64[1]:
        raise argparse.ArgumentTypeError(f"{text} is out of range (|value| < 2**63)")
    return value


def positive_int(text: str) -> int:
    """An integer flag value >= 1."""
    value = parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def byte_count(text: str) -> int:
    """A size flag: ``65536``, ``64K``, ``64M``, ``64G`` or ``1T`` (binary units) -> an int >= 1."""
    number, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if not number.isdecimal() or len(number) > 15 or unit not in ("", "K", "M", "G", "T") or int(number) == 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 65536 or 64M, got {text!r}")
    return int(number) << 10 * " KMGT".index(unit or " ")


def _parse_int_tuple(text: str) -> tuple[int, ...]:
    """'512,256' -> (512, 256); an empty part ('32,,16', '32,') is refused, not skipped."""
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r} (an empty item)")
    try:
        return tuple(parse_int(part) for part in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parse_rep_range(text: str) -> tuple[int, ...]:
    """'START:STOP' -> (START, STOP); '' or 'all' -> () (every member)."""
    if text.strip().lower() in ("", "all"):
        return ()
    try:
        start, stop = (parse_int(part) for part in text.split(":"))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected START:STOP (e.g. 0:8), got {text!r}") from None
    return start, stop


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        return None if text.lower() == "none" else convert(text)
    return parse


def converter(path: str, annotation: str) -> Callable[[str], Any]:
    if path == "parallel.rep_range":
        return _parse_rep_range
    base = annotation.replace(" | None", "")
    convert = {"int": parse_int, "float": float, "str": str, "tuple[int, ...]": _parse_int_tuple}[base]
    if base == "int" and path.endswith("_bytes"):  # sizes: 65536, 64K, 64M, 64G
        convert = byte_count
    return _optional(convert) if "None" in annotation else convert
