"""Property-based tests (hypothesis) for mach_jax.data.xc_format: round trips and corruptions.

Valid datasets are generated, written with `write_xc` and read back exactly: plain and gzip,
and with the accepted leniencies (CRLF, trailing spaces, no final newline). Each corruption
changes a valid file in one place whose line is known; parsing must then raise
`DataFormatError` (never another exception, never a silent skip) naming that path and line.
Runs are derandomized so CI is deterministic; settings are local to this module.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mach_jax.data import xc_format as xc
from mach_jax.errors import DataFormatError
from support import from_rows

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=75)  # gzip damage: the dataset matters less
PER_KIND = settings(SETTINGS, max_examples=12)  # tests parametrized by kind of corruption
PATH = "some dir/bad data.txt"
# Chunk sizes for the vectorised parser: the default, and tiny ones that put nearly every
# line in a chunk of its own, so the first bad chunk and its first bad line are exercised.
CHUNKS = st.sampled_from([1 << 22, 1, 16, 64])

_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def _f32(x: float) -> float:
    return float(np.float32(x))


# Finite float32 values. st.floats(width=32) already favours nasty values (subnormals, the
# extremes, -0.0); the other branches make whole numbers, powers of ten and other tiny and
# large magnitudes, of both signs, frequent.
_SPECIAL = sorted({sign * v for sign in (1.0, -1.0) for v in [
    0.1, 0.5, 1.0, _f32(1 / 3), 16777216.0, _F32_TINY, float(np.finfo(np.float32).tiny),
    _F32_MAX, _f32(1e-30), _f32(1e30), _f32(1.5e-40), _f32(2.5e37),
    *(_f32(10.0**k) for k in range(-12, 13, 3))]})
FLOAT32 = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-2**24, 2**24).map(float),
    st.sampled_from(_SPECIAL),
)


@st.composite
def datasets(draw, min_points=0, max_points=30):
    """Valid datasets: N in [min_points, 30], D in [1, 50], L in [1, 40], ids unsorted."""
    n = draw(st.integers(min_points, max_points))
    d = draw(st.integers(1, 50))
    l = draw(st.integers(1, 40))
    feature_rows, label_rows = [], []
    for _ in range(n):
        kind = draw(st.integers(0, 3))  # both, labels only, features only, neither
        labels, feature_ids, values = [], [], []
        if kind in (0, 1):
            labels = draw(st.lists(st.integers(0, l - 1), min_size=1, max_size=min(l, 6),
                                   unique=True))
        if kind in (0, 2):
            feature_ids = draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=min(d, 8),
                                        unique=True))
            values = draw(st.lists(FLOAT32, min_size=len(feature_ids),
                                   max_size=len(feature_ids)))
        label_rows.append(labels)
        feature_rows.append(dict(zip(feature_ids, values)))
    return from_rows(feature_rows, label_rows, d, l)


def _xc_text(ds) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.txt"
        xc.write_xc(path, ds)
        return path.read_bytes()


def _assert_same_bits(got, want):
    """Exact float32 bits; zeros are left to `==` (see test_round_trip_keeps_sign_of_zero)."""
    nonzero = want.features.values != 0
    np.testing.assert_array_equal(got.features.values[nonzero].view(np.uint32),
                                  want.features.values[nonzero].view(np.uint32))


def _assert_error(text: bytes, path: str, line: int | None, problem: str | None):
    """Parsing raises exactly DataFormatError(path, line); any other exception escapes."""
    with pytest.raises(DataFormatError) as info:
        xc.parse_xc_bytes(text, path)
    e = info.value
    assert type(e) is DataFormatError
    assert (e.path, e.line) == (path, line), (text, str(e))
    where = path if line is None else f"{path}:{line}"
    assert str(e) == f"{where}: {e.problem}"
    if problem is not None:
        assert problem in e.problem, (text, str(e))
    return e


# ---------------------------------------------------------------------------------- round trip

@SETTINGS
@given(ds=datasets(), data=st.data())
def test_round_trip_plain_gzip_and_lenient_variants(ds, data):
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("d.txt", "d.txt.gz"):
            path = Path(tmp) / name
            xc.write_xc(path, ds)
            back = xc.read_xc(path, use_cache=False)
            assert back == ds and back.source == str(path)
            _assert_same_bits(back, ds)
        text = (Path(tmp) / "d.txt").read_bytes()
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["d.txt", "d.txt.gz"]
    # The same text with CRLF and/or trailing spaces on any lines and/or no final newline.
    lines = text.split(b"\n")[:-1]
    spaces = data.draw(st.lists(st.integers(0, 3), min_size=len(lines), max_size=len(lines)))
    eol = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    final = data.draw(st.booleans())
    variant = eol.join(line + b" " * k for line, k in zip(lines, spaces)) + (eol if final
                                                                            else b"")
    with mock.patch.object(xc, "_CHUNK_BYTES", data.draw(CHUNKS)):
        for blob in (variant, gzip.compress(variant)):
            back = xc.parse_xc_bytes(blob, "variant.txt")
            assert back == ds and back.source == "variant.txt"
            _assert_same_bits(back, ds)


def test_round_trip_keeps_sign_of_zero(tmp_path):
    ds = from_rows([{0: 0.0, 1: -0.0}, {0: -0.0}], [[0], []], 2, 1)
    xc.write_xc(tmp_path / "z.txt", ds)
    back = xc.read_xc(tmp_path / "z.txt", use_cache=False)
    assert back == ds
    np.testing.assert_array_equal(back.features.values.view(np.uint32),
                                  ds.features.values.view(np.uint32))


# ------------------------------------------------------------------ corruptions of one data line

def _split_row(line: bytes):
    label_part, _, feature_part = line.partition(b" ")
    return (label_part.split(b",") if label_part else []), feature_part.split()


def _join_row(labels, tokens) -> bytes:
    return b",".join(labels) + b" " + b" ".join(tokens)


def _insert(data, items, *new):
    pos = data.draw(st.integers(0, len(items)), label="position")
    return items[:pos] + list(new) + items[pos:]


def _num(x) -> bytes:
    return str(x).encode()


BAD_VALUES = [b"nan", b"NaN", b"-nan", b"inf", b"-inf", b"Infinity", b"abc", b"1e99999",
              b"3.5e38", b"-1e39", b"1.2.3", b"1_0", b"0x10", b"1e", b"e5", b".", b"+-1",
              b"--1", b"1,5", b"1e+", b""]
BAD_LABELS = [b"x", b"1.0", b"+1", b"1e3", b"0x1", b"-", b"a1", b"1a"]
# Bytes that may never appear in a data line (tab is a separator, CR only before LF).
BAD_BYTES = [bytes([b]) for b in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 256)]]
BAD_BYTES += ["\u00e9".encode(), "\u00a0".encode(), "\ufeff".encode()]


def _label_eq_l(data, labels, tokens, d, l):
    return _join_row(_insert(data, labels, _num(l)), tokens), f"label id {l} is outside [0, {l})"


def _label_gt_l(data, labels, tokens, d, l):
    big = data.draw(st.one_of(st.integers(l + 1, 2**31), st.integers(2**63 - 5, 10**30)))
    return _join_row(_insert(data, labels, _num(big)), tokens), f"is outside [0, {l})"


def _label_negative(data, labels, tokens, d, l):
    new = b"-" + _num(data.draw(st.integers(0, l - 1)))
    return _join_row(_insert(data, labels, new), tokens), "is not a non-negative integer"


def _label_not_int(data, labels, tokens, d, l):
    new = data.draw(st.sampled_from(BAD_LABELS))
    return _join_row(_insert(data, labels, new), tokens), "is not a non-negative integer"


def _label_empty(data, labels, tokens, d, l):
    new = _insert(data, labels, b"") if labels else [b"0", b""]  # '0,', ',3', '1,,2'
    return _join_row(new, tokens), "empty label id"


def _label_duplicate(data, labels, tokens, d, l):
    if labels:
        new = _insert(data, labels, data.draw(st.sampled_from(labels)))
    else:
        new = [_num(data.draw(st.integers(0, l - 1)))] * 2
    return _join_row(new, tokens), "duplicate label id"


def _feature_eq_d(data, labels, tokens, d, l):
    new = _insert(data, tokens, _num(d) + b":1")
    return _join_row(labels, new), f"feature id {d} is outside [0, {d})"


def _feature_gt_d(data, labels, tokens, d, l):
    big = data.draw(st.one_of(st.integers(d + 1, 2**31), st.integers(2**63 - 5, 10**30)))
    return _join_row(labels, _insert(data, tokens, _num(big) + b":0.5")), "is outside"


def _feature_negative(data, labels, tokens, d, l):
    new = b"-" + _num(data.draw(st.integers(0, d - 1))) + b":1"
    return _join_row(labels, _insert(data, tokens, new)), "is not a non-negative integer"


def _feature_bad_value(data, labels, tokens, d, l):
    bad = data.draw(st.sampled_from(BAD_VALUES))
    if tokens and data.draw(st.booleans()):  # replace the value of an existing feature
        j = data.draw(st.integers(0, len(tokens) - 1))
        new = tokens[:j] + [tokens[j].partition(b":")[0] + b":" + bad] + tokens[j + 1:]
    else:  # may repeat an id: the value is checked first
        new = _insert(data, tokens, _num(data.draw(st.integers(0, d - 1))) + b":" + bad)
    return _join_row(labels, new), "not of the form id:value" if not bad else "feature value"


def _feature_no_colon(data, labels, tokens, d, l):
    if tokens and data.draw(st.booleans()):
        j = data.draw(st.integers(0, len(tokens) - 1))
        new = tokens[:j] + [tokens[j].replace(b":", b"")] + tokens[j + 1:]
    else:
        new = _insert(data, tokens, _num(data.draw(st.integers(0, d - 1))))
    return _join_row(labels, new), "is not of the form id:value"


def _feature_bad_form(data, labels, tokens, d, l):
    new = data.draw(st.sampled_from([b"0:1:2", b":1", b"0:", b":", b"0::1", b"0:1,1:2"]))
    return _join_row(labels, _insert(data, tokens, new)), "is not of the form id:value"


def _feature_duplicate(data, labels, tokens, d, l):
    value = data.draw(st.sampled_from([b"1", b"-2.5", b"1e-3", b"0"]))
    if tokens:
        fid = data.draw(st.sampled_from(tokens)).partition(b":")[0]
        new = _insert(data, tokens, fid + b":" + value)
    else:
        fid = _num(data.draw(st.integers(0, d - 1)))
        new = [fid + b":1", fid + b":" + value]
    return _join_row(labels, new), "duplicate feature id"


def _no_leading_space(data, labels, tokens, d, l):
    return b" ".join(tokens or [b"0:1"]), "must start with a space"  # labels dropped


def _blank(data, labels, tokens, d, l):
    return b"", "blank line"


def _bad_byte(data, labels, tokens, d, l):
    line = _join_row(labels, tokens)
    pos = data.draw(st.integers(0, len(line)))
    return line[:pos] + data.draw(st.sampled_from(BAD_BYTES)) + line[pos:], "unexpected byte"


def _lone_cr(data, labels, tokens, d, l):
    line = _join_row(labels, tokens)
    pos = data.draw(st.integers(0, len(line) - 1))  # not at the end: CR LF is accepted
    return line[:pos] + b"\r" + line[pos:], "unexpected byte 0x0d"


LINE_CORRUPTIONS = {f.__name__.lstrip("_"): f for f in [
    _label_eq_l, _label_gt_l, _label_negative, _label_not_int, _label_empty, _label_duplicate,
    _feature_eq_d, _feature_gt_d, _feature_negative, _feature_bad_value, _feature_no_colon,
    _feature_bad_form, _feature_duplicate, _no_leading_space, _blank, _bad_byte, _lone_cr]}


def _corrupt_line(data, ds, lines, row, kind):
    """Corrupts lines[row + 1] (data row `row`, file line row + 2) in place; returns problem."""
    labels, tokens = _split_row(lines[row + 1])
    lines[row + 1], problem = LINE_CORRUPTIONS[kind](data, labels, tokens, ds.num_features,
                                                     ds.num_labels)
    return problem


@pytest.mark.parametrize("kind", sorted(LINE_CORRUPTIONS))
@PER_KIND
@given(data=st.data())
def test_corrupted_data_line_is_reported_at_its_line(kind, data):
    ds = data.draw(datasets(min_points=1), label="dataset")
    lines = _xc_text(ds).split(b"\n")[:-1]
    row = data.draw(st.integers(0, ds.num_points - 1), label="row")
    problem = _corrupt_line(data, ds, lines, row, kind)
    # Without the final newline a blank last line would read as a missing line (line 1).
    final = data.draw(st.sampled_from([b"\n", b""])) if kind != "blank" else b"\n"
    text = b"\n".join(lines) + final
    with mock.patch.object(xc, "_CHUNK_BYTES", data.draw(CHUNKS)):
        _assert_error(text, PATH, row + 2, problem)
        _assert_error(gzip.compress(text), PATH + ".gz", row + 2, problem)


@SETTINGS
@given(data=st.data())
def test_first_bad_line_wins(data):
    ds = data.draw(datasets(min_points=2), label="dataset")
    n = ds.num_points
    lines = _xc_text(ds).split(b"\n")[:-1]
    first = data.draw(st.integers(0, n - 2), label="first bad row")
    later = data.draw(st.integers(first + 1, n - 1), label="later bad row")
    problem = _corrupt_line(data, ds, lines, first,
                            data.draw(st.sampled_from(sorted(LINE_CORRUPTIONS))))
    _corrupt_line(data, ds, lines, later, data.draw(st.sampled_from(sorted(LINE_CORRUPTIONS))))
    count = data.draw(st.sampled_from(["same", "N+1", "N-1", "extra line", "blank at end",
                                       "last line deleted"]))
    if count in ("N+1", "N-1"):
        lines[0] = _num(n + 1 if count == "N+1" else n - 1) + lines[0][len(_num(n)):]
    elif count in ("extra line", "blank at end"):
        lines.append(b" 0:1" if count == "extra line" else b"")
    elif count == "last line deleted" and later < n - 1:
        lines.pop()
    with mock.patch.object(xc, "_CHUNK_BYTES", data.draw(CHUNKS)):
        _assert_error(b"\n".join(lines) + b"\n", PATH, first + 2, problem)


# ----------------------------------------------------------- header and line-count corruptions

def _replace_field(data, lines, new_field):
    fields = lines[0].split(b" ")
    j = data.draw(st.integers(0, 2), label="field")
    fields[j] = new_field(fields[j])
    lines[0] = b" ".join(fields)


def _first_row_at_or_above(csr, limit) -> int:
    rows = np.repeat(np.arange(csr.num_rows), csr.row_nnz())
    return int(rows[np.argmax(csr.indices >= limit)])


def _structural(data, ds, lines, kind):
    """Applies one header / line-count corruption; returns (expected line, problem)."""
    n = ds.num_points
    if kind == "header missing a field":
        fields = lines[0].split(b" ")
        del fields[data.draw(st.integers(0, 2))]
        lines[0] = b" ".join(fields)
    elif kind == "header extra field":
        lines[0] += b" " + _num(data.draw(st.integers(0, 99)))
    elif kind == "header field not a number":
        bad = data.draw(st.sampled_from([b"x", b"1.0", b"+1", b"1e3", b"0x1", b"-", b"1,0",
                                         b"\xef\xbc\x91", b"\xff", b"\x00"]))
        _replace_field(data, lines, lambda f: bad)
    elif kind == "header field negative":
        _replace_field(data, lines, lambda f: b"-" + f)
    elif kind == "header field glued":  # '2 4 3' -> '2,4 3' or '2 4,3': two fields
        j = data.draw(st.integers(0, 1))
        fields = lines[0].split(b" ")
        lines[0] = b" ".join(fields[:j] + [fields[j] + b"," + fields[j + 1]] + fields[j + 2:])
    elif kind == "header D or L >= 2**31":
        fields = lines[0].split(b" ")
        fields[data.draw(st.integers(1, 2))] = _num(data.draw(st.integers(2**31, 10**25)))
        lines[0] = b" ".join(fields)
        return 1, "2**31"
    elif kind == "header bad byte":
        bad = data.draw(st.sampled_from([b for b in BAD_BYTES if not b.isspace()]))
        pos = data.draw(st.integers(0, len(lines[0])))
        lines[0] = lines[0][:pos] + bad + lines[0][pos:]
    elif kind in ("header missing", "header blank"):
        if kind == "header missing":
            del lines[0]
        else:
            lines[0] = b""
        text = b"\n".join(lines) + b"\n"
        return (None, "empty") if text.isspace() else (1, "header")
    elif kind == "count N+k":
        k = data.draw(st.integers(1, 5))
        lines[0] = _num(n + k) + lines[0][len(_num(n)):]
        return 1, f"declares {n + k} points but the file has {n}"
    elif kind == "count N-k":
        k = data.draw(st.integers(1, n))
        lines[0] = _num(n - k) + lines[0][len(_num(n)):]
        return n - k + 2, f"after the {n - k} points"
    elif kind == "data line deleted":
        del lines[data.draw(st.integers(1, n))]
        return 1, f"declares {n} points but the file has {n - 1}"
    elif kind == "extra line appended":
        lines.append(data.draw(st.sampled_from([b" ", b"0", b" 0:1", b"0 0:1", b"junk"])))
        return n + 2, "data line after"
    elif kind == "blank line inserted":
        at = data.draw(st.integers(2, n + 2), label="blank line number")
        lines.insert(at - 1, b"")
        return at, "blank line"
    elif kind == "header D too small":
        new_d = data.draw(st.integers(0, int(ds.features.indices.max())))
        lines[0] = b" ".join([_num(n), _num(new_d), _num(ds.num_labels)])
        return _first_row_at_or_above(ds.features, new_d) + 2, f"outside [0, {new_d})"
    elif kind == "header L too small":
        new_l = data.draw(st.integers(0, int(ds.labels.indices.max())))
        lines[0] = b" ".join([_num(n), _num(ds.num_features), _num(new_l)])
        return _first_row_at_or_above(ds.labels, new_l) + 2, f"outside [0, {new_l})"
    else:
        raise AssertionError(kind)
    return 1, "header must be three non-negative integers"


STRUCTURAL = ["header missing a field", "header extra field", "header field not a number",
              "header field negative", "header field glued", "header D or L >= 2**31",
              "header bad byte", "header missing", "header blank", "count N+k", "count N-k",
              "data line deleted", "extra line appended", "blank line inserted",
              "header D too small", "header L too small"]


@pytest.mark.parametrize("kind", STRUCTURAL)
@PER_KIND
@given(data=st.data())
def test_header_and_count_corruptions_are_reported_at_their_line(kind, data):
    needs_rows = kind in ("count N-k", "data line deleted")
    ds = data.draw(datasets(min_points=1 if needs_rows else 0), label="dataset")
    if kind == "header D too small" and not ds.features.indices.size:
        ds = from_rows([{ds.num_features - 1: 2.0}], [[]], ds.num_features, ds.num_labels)
    if kind == "header L too small" and not ds.labels.indices.size:
        ds = from_rows([{}], [[ds.num_labels - 1]], ds.num_features, ds.num_labels)
    lines = _xc_text(ds).split(b"\n")[:-1]
    line, problem = _structural(data, ds, lines, kind)
    text = b"\n".join(lines) + b"\n"
    with mock.patch.object(xc, "_CHUNK_BYTES", data.draw(CHUNKS)):
        _assert_error(text, PATH, line, problem)
        _assert_error(gzip.compress(text), PATH, line, problem)


@pytest.mark.parametrize("header", [b"2 4\x0b3", b"2 4 3\x0c", b"2\r4 3", b"\x0c2 4 3",
                                    b"2 4 3\r\x0b"])
def test_control_whitespace_in_header_is_an_error(header):
    _assert_error(header + b"\n0 0:1\n1 1:1\n", PATH, 1, "header")


# --------------------------------------------------------------------- gzip and empty files

@FEWER
@given(ds=datasets(), data=st.data())
def test_truncated_gzip_is_our_error(ds, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.txt.gz"
        xc.write_xc(path, ds)
        blob = path.read_bytes()
        cut = data.draw(st.integers(1, len(blob) - 1), label="cut")
        path.write_bytes(blob[:cut])
        with pytest.raises(DataFormatError) as info:
            xc.read_xc(path, use_cache=False)
    e = info.value
    assert type(e) is DataFormatError and e.path == str(path)
    if cut >= 2:
        assert e.line is None and "gzip" in e.problem and str(e).startswith(f"{path}: ")
    else:  # a lone 0x1f is not the gzip magic: read as text, it is a bad header
        assert e.line == 1


@FEWER
@given(ds=datasets(), data=st.data())
def test_damaged_gzip_is_rejected_or_unchanged(ds, data):
    # One changed byte anywhere: either the damage is harmless (e.g. the mtime field) and the
    # data comes back unchanged, or it is our error; never another exception or other data.
    blob = bytearray(gzip.compress(_xc_text(ds)))
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    blob[pos] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        back = xc.parse_xc_bytes(bytes(blob), PATH)
    except DataFormatError as e:
        assert type(e) is DataFormatError and e.path == PATH
    else:
        assert back == ds


WHITESPACE = st.lists(st.sampled_from([b" ", b"\t", b"\n", b"\r\n", b"\r", b"\x0b", b"\x0c"]),
                      max_size=20).map(b"".join)


@SETTINGS
@given(blob=WHITESPACE, compress=st.booleans())
@example(blob=b"", compress=False)
@example(blob=b"", compress=True)
def test_empty_or_whitespace_only_file_is_our_error(blob, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "empty.txt"
        path.write_bytes(gzip.compress(blob) if compress else blob)
        with pytest.raises(DataFormatError) as info:
            xc.read_xc(path, use_cache=False)
    e = info.value
    assert type(e) is DataFormatError
    assert (e.path, e.line) == (str(path), None) and "empty" in e.problem
