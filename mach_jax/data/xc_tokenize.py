"""Vectorised tokenising of XC text: bulk label ids and ``id:value`` features from byte blobs.

Digits become integers by SWAR arithmetic on uint64 words (8 digits per word, no Python loop per
token); values of at most 15 significant digits are built exactly as ``mantissa / 10**k`` (which
rounds like ``float()``), the rest go through ``float()``. The functions return None when a blob
is not well formed: the caller then finds the bad line with a slow, obviously-correct check.
"""

from __future__ import annotations

import re

import numpy as np

VALUE_RE = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FEATURE_CHARS = b"0123456789:.eE+- \t"
_POW10 = 10.0 ** np.arange(16)
_KEEP = np.array([0] + [(2**64 - 1) << 8 * (8 - n) & 2**64 - 1 for n in range(1, 9)], np.uint64)
_ASCII_ZEROS = _KEEP & np.uint64(0x3030303030303030)  # b"0" in each kept byte


def to_float32(x) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow becomes inf, reported as non-finite
        return np.asarray(x, np.float64).astype(np.float32)


def _word_view(blob: bytes) -> np.ndarray:
    """uint64 [len(blob) + 1] whose element i holds bytes blob[i - 8:i] (zeros before 0)."""
    padded = np.frombuffer(bytes(8) + blob, np.uint8)
    return np.ndarray((len(blob) + 1,), "<u8", padded, 0, (1,))


def _swar8(words: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Value of the up to 8 digits ending at each end: one uint64 word each, SWAR.

    Bytes before the digits are masked to '0'; then pairs, quads and octets of digits are
    combined by multiply-shift-mask within the word.
    """
    x = words[ends]
    x &= _KEEP[lengths]
    x -= _ASCII_ZEROS[lengths]
    for shift, mask in ((8, 0x00FF00FF00FF00FF), (16, 0x0000FFFF0000FFFF), (32, 0xFFFFFFFF)):
        high = x >> shift
        x *= 10 ** (shift // 8)
        x += high
        x &= mask
    return x.view(np.int64)


def _digits_to_int(blob: bytes, words: np.ndarray, ends: np.ndarray,
                   lengths: np.ndarray) -> np.ndarray:
    """int64 value of each all-digit segment blob[end - n:end]; values >= 2**63 saturate."""
    if len(lengths) and lengths.min() == 1 == lengths.max():  # e.g. binary feature values
        return (words[ends] >> 56).astype(np.int64) - ord("0")
    out = _swar8(words, ends, np.minimum(lengths, 8))
    long = np.flatnonzero(lengths > 8)
    if len(long):
        out[long] += 10**8 * _swar8(words, ends[long] - 8, np.minimum(lengths[long] - 8, 8))
    for i in long[lengths[long] > 16].tolist():  # rare: leading zeros or out of range anyway
        digits = blob[ends[i] - lengths[i]:ends[i]]
        # Past 19 digits: saturated unread (int() of 4,300+ digits raises; the slow check names it).
        out[i] = np.iinfo(np.int64).max if len(digits.lstrip(b"0")) > 19 else min(
            int(digits), np.iinfo(np.int64).max)
    return out


def _token_bounds(buf: np.ndarray, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends [tokens] of the tokens of buf split at each byte equal to sep."""
    seps = np.flatnonzero(buf == sep)
    starts, ends = np.empty(len(seps) + 1, np.int64), np.empty(len(seps) + 1, np.int64)
    starts[0], starts[1:], ends[:-1], ends[-1] = 0, seps + 1, seps, len(buf)
    return starts, ends


def parse_labels(blob: bytes) -> np.ndarray | None:
    """Label ids int64 [total] of a ','-joined blob, or None if it is not d+(,d+)*."""
    if not blob:
        return np.zeros(0, np.int64)
    if (blob.translate(None, b"0123456789,") or b",," in blob or blob[:1] == b","
            or blob[-1:] == b","):
        return None
    starts, ends = _token_bounds(np.frombuffer(blob, np.uint8), ord(","))
    return _digits_to_int(blob, _word_view(blob), ends, ends - starts)


def parse_features(blob: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids int64, values float32) [tokens] of the `id:value` tokens of blob, or None."""
    if blob.translate(None, _FEATURE_CHARS):
        return None
    if b"  " in blob or b"\t" in blob or blob[:1] == b" " or blob[-1:] == b" ":
        blob = b" ".join(blob.split())  # safe: only space and tab are left as whitespace
    if not blob:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    buf = np.frombuffer(blob, np.uint8)
    starts, ends = _token_bounds(buf, ord(" "))
    colons = np.flatnonzero(buf == ord(":"))
    # Exactly one ':' strictly inside each token, so id and value are non-empty.
    if len(colons) != len(starts) or np.any(colons <= starts) or np.any(colons >= ends - 1):
        return None
    hard = np.zeros(len(starts), bool)  # values float() must parse: exponent, sign, long
    dot = ends.copy()  # no '.' behaves like one just past the end
    for chars in (b".", b"eE+-"):
        if not any(c in blob for c in chars):
            continue
        pos = np.flatnonzero(np.logical_or.reduce([buf == c for c in chars]))
        if chars == b"." and len(pos) == len(starts):
            tok = np.arange(len(pos))  # one dot per token, unless the check below fails
        else:
            tok = np.searchsorted(colons, pos) - 1
        if np.any(tok < 0) or np.any(pos <= colons[tok]) or np.any(pos >= ends[tok]):
            return None  # these characters are allowed only after the ':'
        if chars == b".":
            hard[tok[1:][tok[1:] == tok[:-1]]] = True  # two dots
            dot[tok] = pos
        else:
            hard[tok] = True
    words = _word_view(blob)
    ids = _digits_to_int(blob, words, colons, colons - starts)
    int_len, frac_len = dot - colons - 1, ends - np.minimum(dot + 1, ends)
    hard |= (int_len + frac_len == 0) | (int_len + frac_len > 15)
    simple = np.flatnonzero(~hard) if hard.any() else slice(None)
    int_len, frac_len = int_len[simple], frac_len[simple]
    # At most 15 digits: mantissa / 10**k divides exact doubles and rounds once, exactly
    # like float(); both paths then cast float64 -> float32.
    mantissa = _digits_to_int(blob, words, dot[simple], int_len)
    if frac_len.any():
        mantissa = mantissa * 10**frac_len + _digits_to_int(blob, words, ends[simple], frac_len)
    values = np.empty(len(starts), np.float32)
    values[simple] = (mantissa / _POW10[frac_len]).astype(np.float32)
    hard = np.flatnonzero(hard)
    if len(hard):
        texts = [blob[a + 1:b] for a, b in zip(colons[hard].tolist(), ends[hard].tolist())]
        if not all(map(VALUE_RE.fullmatch, texts)):
            return None
        values[hard] = to_float32([float(t) for t in texts])
    return ids, values
