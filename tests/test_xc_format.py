"""Tests for mach_jax.data.xc_format: exact parses, every error's line, cache, real datasets.

The bulk parser is checked against `_reference_parse`, a slow pure-Python parser written
straight from the format description, on hand-written, fuzzed and real files.
"""

import gzip
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest

from mach_jax.data import parse_cache, xc_format as xc
from mach_jax.data.xc_format import CsrMatrix
from mach_jax.errors import DataFormatError
from support import from_rows

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class _RefError(Exception):
    def __init__(self, line):
        self.line = line


def _reference_parse(text: bytes):
    """Pure-Python parser: (N, D, L, label rows, feature rows) or _RefError(line)."""
    if text[:2] == b"\x1f\x8b":
        text = gzip.decompress(text)
    lines = text.decode("latin-1").replace("\r\n", "\n").replace("\t", " ").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not "".join(lines).strip(" \t\n\r\x0b\x0c"):
        raise _RefError(None)
    lines[0] = lines[0].removeprefix("\xef\xbb\xbf")  # a UTF-8 byte order mark is skipped
    header = lines[0].encode("latin-1").split()  # bytes: ASCII whitespace only
    if re.search("[^0-9 \t]", lines[0]):  # only spaces and tabs separate header fields
        raise _RefError(1)
    if len(header) != 3 or not all(re.fullmatch(b"[0-9]+", h) for h in header):
        raise _RefError(1)
    n, d, l = map(int, header)
    if max(d, l) >= 2**31:
        raise _RefError(1)
    label_rows, feature_rows = [], []
    for number, line in enumerate(lines[1:n + 1], start=2):
        if not line or any(not (" " <= c <= "~" or c == "\t") for c in line):
            raise _RefError(number)
        label_text, _, feature_text = line.partition(" ")
        labels, features = [], {}
        for item in label_text.split(",") if label_text else []:
            if not re.fullmatch("[0-9]+", item) or int(item) >= l or int(item) in labels:
                raise _RefError(number)
            labels.append(int(item))
        for token in feature_text.split():
            parts = token.split(":")
            if len(parts) != 2 or not re.fullmatch("[0-9]+", parts[0]):
                raise _RefError(number)
            if int(parts[0]) >= d or int(parts[0]) in features:
                raise _RefError(number)
            if not _FLOAT.fullmatch(parts[1]):
                raise _RefError(number)
            with np.errstate(over="ignore"):
                value = np.float32(float(parts[1]))
            if not np.isfinite(value):
                raise _RefError(number)
            features[int(parts[0])] = value
        label_rows.append(labels)
        feature_rows.append(features)
    if len(lines) - 1 > n:
        raise _RefError(n + 2)
    if len(lines) - 1 < n:
        raise _RefError(1)
    return n, d, l, label_rows, feature_rows


def _rows(csr: CsrMatrix):
    return [(csr.indices[a:b].tolist(), csr.values[a:b].tolist())
            for a, b in zip(csr.indptr[:-1], csr.indptr[1:])]


def _assert_matches_reference(dataset, reference):
    n, d, l, label_rows, feature_rows = reference
    assert (dataset.num_points, dataset.num_features, dataset.num_labels) == (n, d, l)
    assert [ids for ids, _ in _rows(dataset.labels)] == label_rows
    assert _rows(dataset.features) == [(list(f), [float(v) for v in f.values()])
                                       for f in feature_rows]


def test_parses_small_file_to_exact_arrays():
    text = b"4 5 3\n0,2 0:1 3:0.5\n 1:2.5\n1\n \n"
    ds = xc.parse_xc_bytes(text, "small.txt")
    assert ds.source == "small.txt"
    assert (ds.num_points, ds.num_features, ds.num_labels) == (4, 5, 3)
    np.testing.assert_array_equal(ds.labels.indptr, [0, 2, 2, 3, 3])
    np.testing.assert_array_equal(ds.labels.indices, [0, 2, 1])
    np.testing.assert_array_equal(ds.labels.values, [1, 1, 1])
    np.testing.assert_array_equal(ds.features.indptr, [0, 2, 3, 3, 3])
    np.testing.assert_array_equal(ds.features.indices, [0, 3, 1])
    np.testing.assert_array_equal(ds.features.values, [1, 0.5, 2.5])
    assert ds.features.indptr.dtype == np.int64 and ds.features.indices.dtype == np.int32
    assert ds.features.values.dtype == np.float32 and ds.labels.values.dtype == np.float32
    np.testing.assert_array_equal(ds.features.row_nnz(), [2, 1, 0, 0])
    dense = np.zeros((4, 5), np.float32)
    dense[0, 0], dense[0, 3], dense[1, 1] = 1, 0.5, 2.5
    np.testing.assert_array_equal(ds.features.to_dense(), dense)
    np.testing.assert_array_equal(ds.labels.to_dense(), [[1, 0, 1], [0, 0, 0], [0, 1, 0],
                                                         [0, 0, 0]])


def test_keeps_file_order_within_rows():
    ds = xc.parse_xc_bytes(b"2 9 9\n3,1,8 4:1 0:2 7:3\n8,0 8:1 1:1\n")
    assert _rows(ds.labels) == [([3, 1, 8], [1, 1, 1]), ([8, 0], [1, 1])]
    assert [ids for ids, _ in _rows(ds.features)] == [[4, 0, 7], [8, 1]]


def test_empty_dataset_and_header_only():
    ds = xc.parse_xc_bytes(b"0 3 2\n")
    assert (ds.num_points, ds.num_features, ds.num_labels) == (0, 3, 2)
    assert ds.features.to_dense().shape == (0, 3)


@pytest.mark.parametrize("text", [
    b"2 4 3\r\n0,1 0:1 2:0.5\r\n 3:2\r\n",                  # CRLF
    b"2 4 3  \n0,1 0:1 2:0.5   \n 3:2 \n",                 # trailing spaces
    b"2 4 3\n0,1 0:1\t 2:0.5\n \t 3:2\n",                  # tabs, runs of spaces
    b"2 4 3\n0,1 0:1 2:0.5\n 3:2",                        # no final newline
    b"2 4 3\n00,001 000:1.0 2:.5\n 3:2.\n",               # leading zeros, '.5', '2.'
    b"2 4 3\n0,1 0:1e0 2:5E-1\n 3:+0.2e+1\n",             # exponents and signs
    b"2 4 3\n0,1 0:10e-1 2:0.5\n 3:+2\n",                  # as many e/+/- as tokens
    b"2 4 3\n0,1 0:1 2:0.5\n 00000000000000000003:2\n",    # a 20-digit id
    b"\xef\xbb\xbf2 4 3\n0,1 0:1 2:0.5\n 3:2\n",           # a UTF-8 byte order mark
])
def test_accepted_variants_give_the_same_arrays(text):
    want = xc.parse_xc_bytes(b"2 4 3\n0,1 0:1 2:0.5\n 3:2\n")
    assert xc.parse_xc_bytes(text) == want
    _assert_matches_reference(want, _reference_parse(text))


def test_values_match_float_exactly():
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.integers(-3, 6, 300)
    texts = ([f"{x:.{rng.integers(1, 16)}f}" for x in rng.random(300) * scales]
             + ["0.30000000000000004", "1.00000005960464477539", "3.4028235e38", "1e-45",
                "-0.0", "123456789012345", "1234567890123456", "0.000000000000001"])
    line = " " + " ".join(f"{i}:{t}" for i, t in enumerate(texts))
    ds = xc.parse_xc_bytes(f"1 {len(texts)} 1\n{line}\n".encode())
    want = np.array([float(t) for t in texts]).astype(np.float32)
    np.testing.assert_array_equal(ds.features.values, want)


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32).view(np.float32)
    tricky = [v for v in bits.tolist() if np.isfinite(v)] + [0.1, 1.0, 3.4028235e38, 1e-45, 0.0]
    feature_rows = [{0: 1.0, 7: 0.5}, {}, {3: -2.25}, {}, {i: v for i, v in enumerate(tricky)}]
    label_rows = [[2, 0], [1], [], [], [3]]
    ds = from_rows(feature_rows, label_rows, num_features=len(tricky), num_labels=4)
    path = tmp_path / f"data{suffix}"
    xc.write_xc(path, ds)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    back = xc.read_xc(path, use_cache=False)
    assert back == ds and back.source == str(path)
    np.testing.assert_array_equal(back.features.values.view(np.uint32),
                                  ds.features.values.view(np.uint32))
    _assert_matches_reference(back, _reference_parse(path.read_bytes()))


def test_write_rejects_non_finite(tmp_path):
    ds = from_rows([{0: float("nan")}], [[0]], 1, 1)
    with pytest.raises(ValueError, match="finite"):
        xc.write_xc(tmp_path / "x.txt", ds)


H = b"2 4 3\n"  # header for most malformed cases: N=2, D=4, L=3
MALFORMED = [
    ("empty", b"", None, "empty"),
    ("only_whitespace", b" \n\n", None, "empty"),
    ("header_two_fields", b"2 4\n0 0:1\n1 1:1\n", 1, "header"),
    ("header_four_fields", b"2 4 3 1\n0 0:1\n1 1:1\n", 1, "header"),
    ("header_negative", b"2 -4 3\n0 0:1\n1 1:1\n", 1, "header"),
    ("header_not_int", b"2 4.0 3\n0 0:1\n1 1:1\n", 1, "header"),
    ("header_binary", b"\x89PNG\r\n\x1a\n\x00\x00", 1, "header"),
    ("header_too_big", b"1 4 3000000000\n0 0:1\n", 1, "2**31"),
    ("too_few_lines", H + b"0 0:1\n", 1, "declares 2 points but the file has 1"),
    ("too_many_lines", H + b"0 0:1\n1 1:1\n2 2:1\n", 4, "after the 2 points"),
    ("extra_blank_line_at_end", H + b"0 0:1\n1 1:1\n\n", 4, "blank line"),
    ("blank_line_in_middle", H + b"0 0:1\n\n1 1:1\n", 3, "blank line"),
    ("label_not_int", H + b"0 0:1\na 1:1\n", 3, "label id 'a'"),
    ("label_float", H + b"0 0:1\n1.0 1:1\n", 3, "label id '1.0'"),
    ("label_negative", H + b"-1 0:1\n1 1:1\n", 2, "label id '-1'"),
    ("label_plus", H + b"+1 0:1\n1 1:1\n", 2, "label id '+1'"),
    ("label_out_of_range", H + b"0 0:1\n1,3 1:1\n", 3, "label id 3 is outside [0, 3)"),
    ("label_huge", H + b"0 0:1\n99999999999999999999999 1:1\n", 3, "outside [0, 3)"),
    ("label_empty_item", H + b"0,,1 0:1\n1 1:1\n", 2, "empty label id"),
    ("label_trailing_comma", H + b"0, 0:1\n1 1:1\n", 2, "empty label id"),
    ("label_duplicate", H + b"0 0:1\n1,2,1 1:1\n", 3, "duplicate label id 1"),
    ("missing_leading_space", H + b"0 0:1\n1:1 2:1\n", 3, "must start with a space"),
    ("feature_no_colon", H + b"0 0:1\n1 1\n", 3, "feature '1' is not of the form id:value"),
    ("feature_two_colons", H + b"0 0:1:2\n1 1:1\n", 2, "not of the form id:value"),
    ("feature_empty_id", H + b"0 :1\n1 1:1\n", 2, "not of the form id:value"),
    ("feature_empty_value", H + b"0 0:1\n1 1:\n", 3, "not of the form id:value"),
    ("feature_id_not_int", H + b"0 x:1\n1 1:1\n", 2, "feature id 'x'"),
    ("feature_id_negative", H + b"0 -1:1\n1 1:1\n", 2, "feature id '-1'"),
    ("feature_id_float", H + b"0 1.0:1\n1 1:1\n", 2, "feature id '1.0'"),
    ("feature_id_out_of_range", H + b"0 0:1\n1 4:1\n", 3, "feature id 4 is outside [0, 4)"),
    ("feature_id_huge", H + b"0 0:1\n1 99999999999999999999:1\n", 3, "outside [0, 4)"),
    ("value_not_number", H + b"0 0:abc\n1 1:1\n", 2, "'abc' is not a number"),
    ("value_two_dots", H + b"0 0:1\n1 1:1.2.3\n", 3, "'1.2.3' is not a number"),
    ("value_nan", H + b"0 0:nan\n1 1:1\n", 2, "'nan' is not a finite"),
    ("value_inf", H + b"0 0:1\n1 1:-inf\n", 3, "'-inf' is not a finite"),
    ("value_overflow", H + b"0 0:1\n1 1:1e39\n", 3, "'1e39' is not a finite"),
    ("value_underscore", H + b"0 0:1_0\n1 1:1\n", 2, "not a plain decimal"),
    ("feature_duplicate", H + b"0 0:1\n1 2:1 1:1 2:3\n", 3, "duplicate feature id 2"),
    ("binary_garbage", H + b"0 0:1\n1 1:\xff\xfe\x00\n", 3, "byte 0xff at column 5"),
    ("utf8_text", H + "0 0:1\n1 1:\u00e9\n".encode(), 3, "non-ASCII"),
    ("lone_carriage_return", H + b"0 0:1\r1 1:1\n1 1:1\n", 2, "byte 0x0d"),
    ("comma_in_features", H + b"0 0:1,1:2\n1 1:1\n", 2, "not of the form id:value"),
    # The first bad line wins, whatever kind of problem comes later.
    ("range_before_syntax", H + b"0 9:1\n1 1:x\n", 2, "feature id 9"),
    ("syntax_before_range", H + b"0 0:x\n1 9:1\n", 2, "'x' is not a number"),
    ("duplicate_before_range", H + b"0,0 0:1\n5 1:1\n", 2, "duplicate label id 0"),
    ("nonfinite_before_duplicate", H + b"0 0:1e99\n1 1:1 1:1\n", 2, "not a finite"),
    ("bad_line_before_count", H + b"0 0:1\n", 1, "declares 2 points"),
    ("bad_line_before_extra", H + b"0 0:1\n1 1:x\n2 2:1\n", 3, "'x' is not a number"),
]


@pytest.mark.parametrize("text,line,problem", [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_input_names_the_line(text, line, problem):
    with pytest.raises(DataFormatError) as info:
        xc.parse_xc_bytes(text, "bad.txt")
    e = info.value
    assert (e.path, e.line) == ("bad.txt", line), str(e)
    assert problem in e.problem
    assert str(e) == (f"bad.txt:{line}: {e.problem}" if line else f"bad.txt: {e.problem}")
    with pytest.raises(_RefError) as ref:
        _reference_parse(text)
    assert ref.value.line == line
    # The gzip form reports the same line.
    with pytest.raises(DataFormatError) as info:
        xc.parse_xc_bytes(gzip.compress(text), "bad.txt.gz")
    assert info.value.line == line


@pytest.mark.parametrize("bad_line,problem", [
    (b"7,50 1:1", "label id 50"), (b"7 1:1 100:2", "feature id 100"),
    (b"7,3,7 1:1", "duplicate label id 7"), (b"7 9:1 1:1 9:2", "duplicate feature id 9"),
    (b"7 1:4e38", "not a finite"), (b"7 1:1:1", "id:value"), (b"", "blank line"),
])
@pytest.mark.parametrize("chunk_bytes", [1 << 22, 997])
def test_error_located_deep_in_a_large_file(bad_line, problem, chunk_bytes, monkeypatch):
    # Rows are unsorted and some are empty, so the vectorised row bookkeeping is exercised;
    # small chunks put the bad line in a late chunk.
    monkeypatch.setattr(xc, "_CHUNK_BYTES", chunk_bytes)
    rows = [b"3,1 5:1 2:0.5", b" ", b"2 ", b" 7:2 0:1"] * 1000
    rows[2999] = bad_line
    with pytest.raises(DataFormatError) as info:
        xc.parse_xc_bytes(b"4000 100 50\n" + b"\n".join(rows) + b"\n")
    assert info.value.line == 3001 and problem in info.value.problem, str(info.value)


def test_gzip_problems_and_missing_files(tmp_path):
    good = gzip.compress(b"1 2 2\n0 0:1\n" * 1000)
    for data in (good[:-10], good[:len(good) // 2], b"\x1f\x8b" + b"\x00" * 20):
        with pytest.raises(DataFormatError) as info:
            xc.parse_xc_bytes(data, "t.gz")
        assert info.value.line is None and "gzip" in info.value.problem
    with pytest.raises(DataFormatError, match="no such file") as info:
        xc.read_xc(tmp_path / "missing.txt", cache_dir=tmp_path)
    assert info.value.line is None
    with pytest.raises(DataFormatError, match="cannot read"):
        xc.read_xc(tmp_path, cache_dir=tmp_path / "cache")


def test_error_pickles():
    e = DataFormatError("a.txt", 3, "bad")
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.line, back.problem, str(back)) == ("a.txt", 3, "bad", "a.txt:3: bad")
    assert isinstance(back, ValueError)


def _mutate(rnd: random.Random, text: bytes) -> bytes:
    alphabet = b"0123456789 ,:.\n\te-+x\r\x0b\xa0"
    data = bytearray(text)
    for _ in range(rnd.randint(1, 3)):
        pos = rnd.randrange(len(data) + 1)
        kind = rnd.random()
        if kind < 0.4 and pos < len(data):
            data[pos] = rnd.choice(alphabet)
        elif kind < 0.7:
            data.insert(pos, rnd.choice(alphabet))
        elif pos < len(data):
            del data[pos]
    return bytes(data)


@pytest.mark.parametrize("chunk_bytes", [1 << 22, 13])
def test_fuzzed_files_agree_with_reference(chunk_bytes, monkeypatch):
    monkeypatch.setattr(xc, "_CHUNK_BYTES", chunk_bytes)  # 13: about one line per chunk
    rnd = random.Random(0)
    base = b"4 12 6\n0,5 1:0.5 11:2 3:1e-3\n 0:1\n3 \n2,1,4 7:3.25 8:.5 2:1.\n"
    for _ in range(1500):
        text = _mutate(rnd, base)
        try:
            reference = _reference_parse(text)
        except _RefError as e:
            with pytest.raises(DataFormatError) as info:
                xc.parse_xc_bytes(text)
            assert info.value.line == e.line, (text, str(info.value))
            continue
        _assert_matches_reference(xc.parse_xc_bytes(text), reference)


def _random_value_text(rnd: random.Random) -> str:
    x = rnd.random() * 10.0 ** rnd.randint(-8, 8)
    forms = [str(rnd.randint(0, 10**rnd.randint(1, 18))), f"{x:.{rnd.randint(0, 20)}f}",
             f"{x:.{rnd.randint(0, 12)}e}", f"{x:.5E}".replace("E+", "E"),
             f".{rnd.randint(0, 999)}", f"{rnd.randint(0, 99)}.", "00" + f"{x:.3f}",
             rnd.choice("+-") + f"{x:g}", repr(x)]
    return rnd.choice(forms)


@pytest.mark.parametrize("chunk_bytes", [1 << 22, 1000])
def test_random_valid_files_agree_with_reference(chunk_bytes, monkeypatch):
    monkeypatch.setattr(xc, "_CHUNK_BYTES", chunk_bytes)
    rnd = random.Random(1)
    n, d, l = 300, 1000, 50
    lines = [f"{n} {d} {l}"]
    for _ in range(n):
        labels = [("0" * rnd.randint(0, 2)) + str(i)
                  for i in rnd.sample(range(l), rnd.randint(0, 5))]
        tokens = [("0" * rnd.choice([0, 0, 0, 19])) + f"{i}:{_random_value_text(rnd)}"
                  for i in rnd.sample(range(d), rnd.randint(0, 8))]
        gaps = [rnd.choice([" ", " ", " ", "  ", "\t", " \t "]) for _ in tokens]
        line = ",".join(labels) + " " + "".join(g + t for g, t in zip(gaps, tokens)).lstrip()
        lines.append(line + rnd.choice(["", "", " ", "  "]))
    text = "\n".join(lines).encode() + b"\n"
    for variant in (text, text.replace(b"\n", b"\r\n"), gzip.compress(text)):
        _assert_matches_reference(xc.parse_xc_bytes(variant), _reference_parse(variant))


def test_csr_take_matches_dense():
    rng = np.random.default_rng(2)
    dense = (rng.random((7, 5)) < 0.4) * rng.random((7, 5)).astype(np.float32)
    rows = [{j: dense[i, j] for j in np.flatnonzero(dense[i])} for i in range(7)]
    m = from_rows(rows, [[]] * 7, 5, 1).features
    np.testing.assert_array_equal(m.to_dense(), dense)
    for sel in ([3, 0, 3, 6], [-1, 2], [], np.array([1, 5], np.int32)):
        np.testing.assert_array_equal(m.take(np.asarray(sel, np.int64)).to_dense(),
                                      dense[np.asarray(sel, np.int64)])
        np.testing.assert_array_equal(m[np.asarray(sel, np.int64)].to_dense(),
                                      dense[np.asarray(sel, np.int64)])
    np.testing.assert_array_equal(m[1:6:2].to_dense(), dense[1:6:2])
    mask = np.array([True, False, True, False, False, True, True])
    np.testing.assert_array_equal(m[mask].to_dense(), dense[mask])
    assert m[[]].num_rows == 0 and m[[]].num_cols == 5
    with pytest.raises(IndexError):
        m.take([7])
    with pytest.raises(TypeError):
        m.take([0.5])


def test_csr_and_dataset_validate():
    with pytest.raises(ValueError, match="column ids"):
        CsrMatrix(np.array([0, 1]), np.array([5]), np.array([1.0]), 5)
    with pytest.raises(ValueError, match="indptr"):
        CsrMatrix(np.array([0, 2]), np.array([1]), np.array([1.0]), 5)
    with pytest.raises(ValueError, match="non-decreasing"):
        CsrMatrix(np.array([0, 2, 1, 2]), np.array([1, 2]), np.array([1.0, 1.0]), 5)
    with pytest.raises(ValueError, match="repeats"):
        from_rows([{}], [[1, 1]], 1, 2)
    with pytest.raises(ValueError, match="rows"):
        from_rows([{}], [], 1, 2)
    features = from_rows([{0: 1.0}], [[0]], 1, 1).features
    with pytest.raises(ValueError, match="all be 1"):
        xc.XCDataset(features, CsrMatrix(np.array([0, 1]), np.array([0]), np.array([2.0]), 1))
    with pytest.raises(ValueError, match="label rows"):
        xc.XCDataset(features, CsrMatrix(np.array([0]), np.array([]), np.array([]), 1))


def _write(path: Path, text: bytes, mtime_ns: int | None = None) -> None:
    path.write_bytes(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_cache_hit_skips_parsing(tmp_path, monkeypatch):
    src = tmp_path / "src" / "d.txt"
    src.parent.mkdir()
    _write(src, b"2 3 2\n0 0:1 2:0.5\n 1:2\n")
    cache = tmp_path / "cache"
    first = xc.read_xc(src, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))
    assert sorted(p.name for p in src.parent.iterdir()) == ["d.txt"]  # nothing beside the source

    def boom(*args, **kwargs):
        raise AssertionError("parsed again instead of using the cache")

    monkeypatch.setattr(xc, "parse_xc_bytes", boom)
    second = xc.read_xc(src, cache_dir=cache)
    assert second == first and second.source == str(src)
    assert second.labels.values.dtype == np.float32


def test_cache_invalidated_by_change_and_ignored_when_corrupt(tmp_path):
    src, cache = tmp_path / "d.txt", tmp_path / "cache"
    _write(src, b"1 3 2\n0 0:1\n", mtime_ns=1_000_000_000)
    assert xc.read_xc(src, cache_dir=cache).features.indices.tolist() == [0]
    _write(src, b"1 3 2\n1 2:1\n", mtime_ns=2_000_000_000)  # same size, new mtime
    changed = xc.read_xc(src, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1  # the stale entry was removed
    assert changed.features.indices.tolist() == [2] and changed.labels.indices.tolist() == [1]
    for cache_file in cache.glob("*.npz"):
        cache_file.write_bytes(b"not a zip file")
    assert xc.read_xc(src, cache_dir=cache) == changed
    for cache_file in cache.glob("*.npz"):  # rewritten with valid arrays
        np.load(cache_file, allow_pickle=False).close()


def test_cache_dir_unwritable_or_disabled(tmp_path, monkeypatch):
    src = tmp_path / "d.txt"
    _write(src, b"1 3 2\n0 0:1\n")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    assert xc.read_xc(src, cache_dir=blocker / "cache").num_points == 1  # mkdir fails
    assert xc.read_xc(src, cache_dir=tmp_path / "off", use_cache=False).num_points == 1
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv("MACH_JAX_CACHE_DIR", str(tmp_path / "env"))
    xc.read_xc(src)
    assert len(list((tmp_path / "env").glob("*.npz"))) == 1
    monkeypatch.delenv("MACH_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parse_cache.default_cache_dir() == tmp_path / "xdg" / "mach_jax"


# (folder, split): points, features, labels.
REAL = {("bibtex", "train"): (4880, 1836, 159), ("bibtex", "test"): (2515, 1836, 159),
        ("delicious", "train"): (12920, 500, 983), ("delicious", "test"): (3185, 500, 983),
        ("corel5k", "train"): (4500, 499, 374), ("corel5k", "test"): (500, 499, 374)}
# Mean labels per point over train + test, from the data README.
MEAN_LABELS = {"bibtex": (2.40, 0.005), "delicious": (19.0, 0.05), "corel5k": (3.5, 0.05)}


def _real_path(name, split):
    if not DATA_DIR.is_dir():
        pytest.skip(f"real datasets not present at {DATA_DIR}")
    return DATA_DIR / name / f"{split}.txt.gz"


@pytest.mark.parametrize("name", sorted(MEAN_LABELS))
def test_real_datasets_match_readme(name, tmp_path):
    counts = []
    for split in ("train", "test"):
        ds = xc.read_xc(_real_path(name, split), cache_dir=tmp_path)
        assert (ds.num_points, ds.num_features, ds.num_labels) == REAL[name, split]
        counts.append(ds.labels.row_nnz())
    mean, tolerance = MEAN_LABELS[name]
    assert abs(np.concatenate(counts).mean() - mean) <= tolerance
    if name == "delicious":  # README: 10 train and 4 test points have no labels
        assert [int((c == 0).sum()) for c in counts] == [10, 4]


@pytest.mark.parametrize("name,split", sorted(REAL))
def test_real_file_prefix_matches_reference(name, split):
    lines = gzip.decompress(_real_path(name, split).read_bytes()).split(b"\n")
    _, d, l = lines[0].split()
    text = b"\n".join([b"200 " + d + b" " + l] + lines[1:201]) + b"\n"
    _assert_matches_reference(xc.parse_xc_bytes(text), _reference_parse(text))


def test_atomic_writes_leave_the_usual_file_mode_and_no_temporary(tmp_path):
    from mach_jax.data.files import atomic_output, write_json_atomically

    write_json_atomically(tmp_path / "a.json", {"b": 1, "a": [2]})
    with open(tmp_path / "plain.json", "w") as f:  # what a plain open() gives under this umask
        f.write("{}")
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "a.json") as f:
        f.write(b"half")
        raise RuntimeError("the write fails")
    assert (tmp_path / "a.json").read_text().startswith('{\n  "a"')  # the old file is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain.json"]
