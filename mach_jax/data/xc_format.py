"""Reader and writer for the Extreme Classification Repository sparse text format.

    num_points num_features num_labels          <- header, line 1
    l1,l2,...,lk f1:v1 f2:v2 ...                <- one line per point, ids 0-based
     f1:v1 f2:v2 ...                            <- a point with no labels starts with a space

Files may be plain or gzip (detected by the magic bytes 1f 8b, not the name). The parser is
strict: every problem raises `DataFormatError` naming the file, the 1-based line (header = line
1) and the problem; nothing is skipped. Accepted leniencies: CRLF endings, one final newline,
a UTF-8 byte order mark, trailing spaces, a tab wherever a space may be (between labels and
features too), runs of spaces/tabs between features, leading zeros. Values follow Python's
`float` grammar without underscores, nan or inf. Ids keep their file order within a row (rows
are not sorted), so a round trip through `write_xc` is exact.

Parsing is vectorised, in chunks of about 4 MB of text: lines are split and joined into one
label blob and one feature blob with C-level bytes methods, then tokenised and converted with
numpy (digits by SWAR arithmetic on uint64 words). Range, finiteness and duplicate errors are
located with searchsorted; when a structural check fails, a slow line-by-line validator over
that chunk finds the first bad line. `read_xc` caches parsed arrays in `.npz` files keyed by a
hash of the file's bytes (`parse_cache`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from itertools import repeat
from pathlib import Path

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset  # noqa: F401 (re-exported)
from mach_jax.errors import DataFormatError
from mach_jax.data import parse_cache
from mach_jax.data.files import MAX_LINE_BYTES, is_gzip, is_regular_input, open_input, write_bytes_atomically
from mach_jax.data.xc_header import parse_header, show, too_long
from mach_jax.data.xc_read import read_xc_text
from mach_jax.data.xc_tokenize import VALUE_RE, parse_features, parse_labels, to_float32

_INT32_MAX = 2**31 - 1
_CHUNK_BYTES = 1 << 22
_PRINTABLE = bytes(range(32, 127)) + b"\t"


def _line_problem(line: bytes, num_features: int, num_labels: int) -> str | None:
    """Slow, obviously-correct check of one data line; returns the first problem or None."""
    if not line:
        return "blank line (a point with no labels and no features is a single space)"
    bad = line.translate(None, _PRINTABLE)
    if bad:
        return (f"unexpected byte 0x{bad[0]:02x} at column {line.index(bad[:1]) + 1} "
                "(binary, control or non-ASCII data)")
    label_part, _, feature_part = line.partition(b" ")
    seen = set()
    for item in label_part.split(b",") if label_part else []:
        if not item.isdigit():
            hint = " (a point with no labels must start with a space)" if b":" in item else ""
            return (f"empty label id in {show(label_part)}" if not item else
                    f"label id {show(item)} is not a non-negative integer{hint}")
        if too_long(item.lstrip(b"0")):
            return f"label id {show(item, 20)} ({len(item):,} digits) is outside [0, {num_labels})"
        if int(item) >= num_labels:
            return f"label id {int(item)} is outside [0, {num_labels})"
        if int(item) in seen:
            return f"duplicate label id {int(item)}"
        seen.add(int(item))
    seen = set()
    for token in feature_part.split():
        fid, colon, value = token.partition(b":")
        if not (colon and fid and value) or b":" in value:
            return f"feature {show(token)} is not of the form id:value"
        if not fid.isdigit():
            return f"feature id {show(fid)} is not a non-negative integer"
        if too_long(fid.lstrip(b"0")):
            return f"feature id {show(fid, 20)} ({len(fid):,} digits) is outside [0, {num_features})"
        if int(fid) >= num_features:
            return f"feature id {int(fid)} is outside [0, {num_features})"
        try:
            finite = np.isfinite(to_float32(float(value)))
        except ValueError:
            finite = None
        if not finite:
            return f"feature value {show(value)} is not a " + ("number" if finite is None
                                                               else "finite float32")
        if not VALUE_RE.fullmatch(value):  # float() also takes underscores and spaces
            return f"feature value {show(value)} is not a plain decimal number"
        if int(fid) in seen:
            return f"duplicate feature id {int(fid)}"
        seen.add(int(fid))
    return None


def _first_row(bad: np.ndarray, indptr: np.ndarray) -> int | None:
    """Row of the first True entry of bad [nnz], or None."""
    if not bad.any():
        return None
    return int(np.searchsorted(indptr, np.argmax(bad), side="right") - 1)


def _first_duplicate_row(indices: np.ndarray, indptr: np.ndarray, num_cols: int) -> int | None:
    """First row holding a repeated id, or None. Rows already increasing skip the sort.

    Out-of-range ids are clipped to num_cols; a duplicate that creates lies in a row that
    already has a range error, so the first bad row is unchanged.
    """
    increasing = np.diff(indices) > 0
    boundaries = indptr[1:-1]
    increasing[boundaries[(boundaries > 0) & (boundaries < len(indices))] - 1] = True
    if increasing.all():
        return None
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    width = num_cols + 1
    keys = np.sort(rows * width + np.minimum(indices, num_cols))
    dup = keys[1:] == keys[:-1]
    return int(keys[1:][dup].min() // width) if dup.any() else None


def _parse_chunk(lines: list[bytes], num_features: int, num_labels: int, path: str,
                 first_line: int) -> tuple[np.ndarray, ...]:
    """Parses data lines numbered from first_line or raises DataFormatError.

    Returns:
      label counts [n], label ids [labels], feature counts [n], feature ids and values
      [features], for the n lines.
    """
    n = len(lines)
    parsed = None
    if all(lines):
        label_parts, _, feature_parts = zip(*map(bytes.partition, lines, repeat(b" ")))
        label_ids = parse_labels(b",".join(filter(None, label_parts)))
        features = parse_features(b" ".join(filter(None, feature_parts)))
        if label_ids is not None and features is not None:
            parsed = label_ids, *features
    if parsed is None:  # malformed structure somewhere: the slow path finds the first bad line
        for row, line in enumerate(lines):
            problem = _line_problem(line, num_features, num_labels)
            if problem:
                raise DataFormatError(path, first_line + row, problem)
        raise DataFormatError(path, None, "malformed data (could not locate the bad line)")
    label_ids, feature_ids, values = parsed
    label_counts = (np.fromiter(map(bytes.count, label_parts, repeat(b",")), np.int64, n)
                    + np.fromiter(map(len, label_parts), np.int64, n).astype(bool))
    feature_counts = np.fromiter(map(bytes.count, feature_parts, repeat(b":")), np.int64, n)
    label_ptr = np.concatenate([[0], np.cumsum(label_counts)])
    feature_ptr = np.concatenate([[0], np.cumsum(feature_counts)])
    bad_rows = [_first_row(label_ids >= num_labels, label_ptr),
                _first_row(feature_ids >= num_features, feature_ptr),
                _first_row(~np.isfinite(values), feature_ptr),
                _first_duplicate_row(label_ids, label_ptr, num_labels),
                _first_duplicate_row(feature_ids, feature_ptr, num_features)]
    bad = min((r for r in bad_rows if r is not None), default=None)
    if bad is not None:
        # Earlier rows passed the vectorised checks, so the slow check only needs lines[bad].
        problem = _line_problem(lines[bad], num_features, num_labels) or "malformed data"
        raise DataFormatError(path, first_line + bad, problem)
    return (label_counts, label_ids.astype(np.int32), feature_counts,
            feature_ids.astype(np.int32), values)


def _parse_body(lines: list[bytes], num_features: int, num_labels: int, path: str):
    """Parses data lines into (features [N, D], labels [N, L]) or raises DataFormatError."""
    # Chunks of about _CHUNK_BYTES bound the temporary arrays (several times the text size)
    # and the slow search for a bad line; the first bad chunk holds the first bad line.
    ends = np.cumsum(np.fromiter(map(len, lines), np.int64, len(lines)))
    cuts = np.searchsorted(ends, np.arange(_CHUNK_BYTES, ends[-1] if len(ends) else 0,
                                           _CHUNK_BYTES))
    cuts = np.unique(np.concatenate([[0], cuts, [len(lines)]])).tolist()
    chunks = [_parse_chunk(lines[a:b], num_features, num_labels, path, a + 2)
              for a, b in zip(cuts[:-1], cuts[1:])]
    label_counts, label_ids, feature_counts, feature_ids, values = (
        np.concatenate([np.zeros(0, dtype)] + [c[i] for c in chunks])
        for i, dtype in enumerate([np.int64, np.int32, np.int64, np.int32, np.float32]))
    features = CsrMatrix(np.concatenate([[0], np.cumsum(feature_counts)]), feature_ids,
                         values, num_features)
    labels = CsrMatrix(np.concatenate([[0], np.cumsum(label_counts)]), label_ids,
                       np.ones(len(label_ids), np.float32), num_labels)
    return features, labels


def parse_xc_bytes(data: bytes, path: str = "<bytes>") -> XCDataset:
    """Parses the bytes of an XC file (plain or gzip).

    Args:
      data: raw file contents.
      path: name used in error messages and as `source`.

    Returns:
      The dataset with features [N, D] and labels [N, L].

    Raises:
      DataFormatError: on any malformed input.
    """
    data = bytes(data)
    if is_gzip(data):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(path, None, f"corrupt or truncated gzip data ({e})") from None
    if not data or data.isspace():
        raise DataFormatError(path, None, "file is empty")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if b"\t" in data:  # a tab is only ever whitespace in XC: between labels and features too
        data = data.replace(b"\t", b" ")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    num_points, num_features, num_labels = parse_header(lines[0], path)
    if max(num_features, num_labels) > _INT32_MAX:
        raise DataFormatError(path, 1, "num_features and num_labels must be below 2**31")
    body = lines[1:num_points + 1]
    features, labels = _parse_body(body, num_features, num_labels, path)
    if len(lines) - 1 > num_points:
        extra = lines[num_points + 1]
        kind = "blank line" if not extra else "data line"
        raise DataFormatError(path, num_points + 2, f"{kind} after the {num_points} points "
                              f"declared in the header (the file has {len(lines) - 1} lines)")
    if len(body) < num_points:
        raise DataFormatError(path, 1, f"header declares {num_points} points but the file has "
                              f"{len(body)} data lines")
    return XCDataset(features, labels, path)


def read_xc(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
            use_cache: bool = True, max_line_bytes: int = MAX_LINE_BYTES, as_scipy: bool = False) -> XCDataset:
    """Reads an XC file (plain or gzip), using a parsed-array cache when allowed.

    ``as_scipy=True`` returns ``(features [N, D], labels [N, L])`` as scipy.sparse CSR matrices
    (``XCDataset.to_scipy``) instead of the dataset.

    The cache is keyed by a hash of the file's bytes (`parse_cache`), so the file is read even
    on a cache hit: an edited file is parsed again, an unreadable one is an error. Anything but a
    regular file (a FIFO, a pipe, ``-`` for stdin, a device) is read once and not cached; every
    input is read bounded (``xc_read``: the line cap, the points the header declares).

    Args:
      path: the file; never written to, nor its directory.
      cache_dir: where `.npz` caches live; default `parse_cache.default_cache_dir()`.
      use_cache: False neither reads nor writes the cache (nor does a pipe).
      max_line_bytes: the longest line taken (``files.MAX_LINE_BYTES``: 64 MiB).

    Returns:
      The dataset with features [N, D] and labels [N, L], source = str(path).

    Raises:
      DataFormatError: the file is missing, unreadable or malformed.
    """
    if as_scipy:
        return read_xc(path, cache_dir=cache_dir, use_cache=use_cache, max_line_bytes=max_line_bytes).to_scipy()
    path = os.fspath(path)
    cache_dir = Path(cache_dir or parse_cache.default_cache_dir()) if use_cache else None
    try:
        with open_input(path) as f:
            if not is_regular_input(f):  # read once, nothing to cache
                cache_dir = None
            if cache_dir is not None:
                key = parse_cache.content_key(f)
                cached = parse_cache.load_cache(parse_cache.cache_path(cache_dir, path, key), path,
                                                key)
                if cached is not None:
                    return cached
                f.seek(0)
            digest = parse_cache.new_digest() if cache_dir is not None else None
            data, excess = read_xc_text(f, path, max_line_bytes, digest)
    except FileNotFoundError:
        raise DataFormatError(path, None, "no such file") from None
    except OSError as e:
        raise DataFormatError(path, None, f"cannot read file ({e.strerror or e})") from None
    dataset = parse_xc_bytes(data, path)
    if excess is not None:
        raise excess
    if cache_dir is not None:  # keyed by the bytes parsed, even if the file changed meanwhile
        key = parse_cache.key_of(digest)
        parse_cache.save_cache(parse_cache.cache_path(cache_dir, path, key), dataset, key)
    return dataset


def _format_values(values: np.ndarray) -> np.ndarray:
    """Shortest text bytes [nnz] of each float32 value that reads back to the same float32."""
    # Unique by bit pattern, not by value: 0.0 and -0.0 compare equal but must both survive.
    bits, inverse = np.unique(values.view(np.uint32), return_inverse=True)
    uniq = bits.view(np.float32)
    texts = uniq.astype(bytes)  # numpy's shortest float32 repr, e.g. b"0.1", b"1e-06"
    whole = np.strings.endswith(texts, b".0")
    texts[whole] = np.strings.slice(texts[whole], 0, -2)
    # Reading goes through float64, so a rare double rounding can miss the shortest float32
    # text; the float64 repr of the value is always exact.
    for i in np.flatnonzero(to_float32(texts.astype(np.float64)) != uniq).tolist():
        texts[i] = repr(float(uniq[i])).encode()
    return texts[inverse.reshape(-1)]


def write_xc(path: str | os.PathLike, dataset: XCDataset, labels=None) -> None:
    """Writes the XC text format, gzip-compressed when path ends with `.gz`.

    Args:
      path: output file.
      dataset: features [N, D] with finite values, labels [N, L]; or scipy.sparse features
        [N, D], with ``labels`` a scipy.sparse 0/1 indicator [N, L].
    """
    if not isinstance(dataset, XCDataset):
        dataset = XCDataset.from_scipy(dataset, labels)
    features, labels = dataset.features, dataset.labels
    if not np.all(np.isfinite(features.values)):
        raise ValueError("feature values must be finite to be written")
    tokens = np.strings.add(np.strings.add(features.indices.astype(bytes), b":"),
                            _format_values(features.values)).tolist()
    label_tokens = labels.indices.astype(bytes).tolist()
    fp, lp = features.indptr.tolist(), labels.indptr.tolist()
    lines = [f"{dataset.num_points} {dataset.num_features} {dataset.num_labels}".encode()]
    for i in range(dataset.num_points):
        lab = b",".join(label_tokens[lp[i]:lp[i + 1]])
        feat = b" ".join(tokens[fp[i]:fp[i + 1]])
        lines.append(lab + b" " + feat if feat else lab or b" ")
    data = b"\n".join(lines) + b"\n"
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes_atomically(path, data)  # a failed write never leaves half a file
