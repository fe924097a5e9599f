"""Vowpal Wabbit multiclass files -> Extreme Classification Repository (XC) files.

The MACH paper's ODP and ImageNet data come as VW multiclass lines: ``label | id:value ...``,
also ``label |namespace id:value`` and a trailing ``'tag`` on the label, which is dropped.
Features must be integer indices (a bare index means value 1); named features, which VW would
hash, are refused, and all namespaces share one index space. VW multiclass labels are 1-based,
so label k becomes XC label k - 1 (``label_base=0`` keeps 0-based files as they are). D and L
default to the largest index + 1. ``python -m mach_jax.datasets convert-vw`` is the command line.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

from mach_jax.errors import DataFormatError
from mach_jax.data.files import MAX_LINE_BYTES, atomic_output, open_binary, read_lines, require_regular_target
from mach_jax.data.xc_header import parse_count
from mach_jax.data.xc_tokenize import VALUE_RE

_HINTS = ("; if it is one, pass a larger max_line_bytes", "")

_FLOAT32_MAX = 3.4028234663852886e38


def _vw_line(line: bytes, path: str, lineno: int, label_base: int,
             num_features: int | None, num_labels: int | None) -> tuple[int, list[int], bytes]:
    """(XC label, feature ids, XC line) of one VW line, or DataFormatError."""
    def fail(problem):
        raise DataFormatError(path, lineno, problem)

    label_part, bar, rest = line.partition(b"|")
    tokens = label_part.split()
    if tokens and tokens[-1].startswith(b"'"):
        tokens.pop()  # a tag: not needed
    if not bar:
        fail("no '|' between the class id and the features")
    if len(tokens) != 1:
        fail(f"expected one class id before '|' (importance weights and label lists are not "
             f"supported), got {label_part.decode('latin-1').strip()!r}")
    if not tokens[0].isdigit():
        fail(f"class id {tokens[0].decode('latin-1')!r} is not a non-negative integer")
    label = parse_count(tokens[0], path, lineno, "class id") - label_base
    if label < 0:
        fail(f"class id {int(tokens[0])} is below {label_base} (VW multiclass ids are 1-based; "
             "use --label-base 0 for 0-based files)")
    if num_labels is not None and label >= num_labels:
        fail(f"class id {int(tokens[0])} is outside [{label_base}, {num_labels + label_base})")
    ids, out = [], []
    for segment in rest.split(b"|"):
        if segment[:1] not in (b"", b" ", b"\t"):  # a namespace name starts the segment
            name, *segment = segment.split(None, 1)
            segment = segment[0] if segment else b""
            if b":" in name:
                fail(f"namespace weights ({name.decode('latin-1')!r}) are not supported")
        for token in segment.split():
            fid, colon, value = token.partition(b":")
            if not fid.isdigit():
                fail(f"feature {token.decode('latin-1')!r} is not an integer index (named "
                     "features would need hashing, which convert-vw does not do)")
            if colon and not (VALUE_RE.fullmatch(value) and abs(float(value)) <= _FLOAT32_MAX):
                fail(f"feature value {value.decode('latin-1')!r} is not a finite number")
            ids.append(parse_count(fid, path, lineno, "feature id"))
            out.append(b"%d:%s" % (ids[-1], value if colon else b"1"))
    if len(set(ids)) != len(ids):
        fail(f"duplicate feature id {next(i for i in ids if ids.count(i) > 1)}")
    limit = num_features if num_features is not None else 2**31 - 1
    if ids and max(ids) >= limit:
        fail(f"feature id {max(ids)} is outside [0, {limit})")
    return label, ids, b" ".join([b"%d" % label, *out])


def convert_vw(input_path, output_path, *, num_features: int | None = None,
               num_labels: int | None = None, label_base: int = 1,
               max_line_bytes: int = MAX_LINE_BYTES) -> tuple[int, int, int]:
    """Converts a VW multiclass file (plain or gzip) to an XC file, streamed.

    Args:
      input_path: VW lines ``label | id:value ...``; blank lines are skipped.
      output_path: XC file to write (gzip when it ends with .gz), replaced atomically.
      num_features: D; default the largest feature id + 1.
      num_labels: L; default the largest (0-based) label + 1.
      label_base: 1 for VW's 1-based class ids, 0 for files that are already 0-based.
      max_line_bytes: the longest line taken (a longer one is refused, naming it).

    Returns:
      (N, D, L) as written in the header.

    Raises:
      DataFormatError: unreadable input or a malformed line (file and 1-based line named).
    """
    path, output_path = os.fspath(input_path), Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    require_regular_target(output_path)  # before reading: a device or link there is refused at once
    try:
        source = open_binary(path)
    except OSError as e:
        raise DataFormatError(path, None, f"cannot read file ({e.strerror or e})") from None
    count, max_id, max_label = 0, -1, -1
    with source, tempfile.TemporaryFile(dir=output_path.parent.resolve()) as body:
        try:
            for lineno, raw in read_lines(source, path, max_line_bytes, float("inf"), _HINTS):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                label, ids, text = _vw_line(line, path, lineno, label_base, num_features,
                                            num_labels)
                max_label, max_id = max(max_label, label), max(max_id, *ids, -1)
                body.write(text + b"\n")
                count += 1
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(path, None, f"cannot read file ({e})") from None
        if not count:
            raise DataFormatError(path, None, "no examples")
        shape = (count, max_id + 1 if num_features is None else num_features,
                 max_label + 1 if num_labels is None else num_labels)
        body.seek(0)
        with atomic_output(output_path) as file:  # no temporary file is left when it fails
            with (gzip.GzipFile(fileobj=file, mode="wb", mtime=0) if output_path.name.endswith(".gz")
                  else contextlib.nullcontext(file)) as out:
                out.write(b"%d %d %d\n" % shape)
                shutil.copyfileobj(body, out)
    return shape
