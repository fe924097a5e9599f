"""Deterministic class -> bucket and feature -> slot hashing for the R repetitions.

Repetition r maps class c to bucket ``h_r(c) = murmur3_x86_32(le32(c), seed=base_seed + r) mod B``
(unsigned), exactly as ``mmh3.hash(c.to_bytes(4, "little"), base_seed + r, signed=False) % B``.
The hash is written once over an array namespace ``xp``: numpy for host tables, ``jax.numpy``
on device, where buckets are computed on the fly from the R seeds (``hash_to_range``), so no
[R, L] or [R, D] table has to live in device memory.
"""

from __future__ import annotations

import numpy as np

_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_MASK32 = 0xFFFFFFFF


def _rotl32(x, r: int, xp):
    return (x << xp.uint32(r)) | (x >> xp.uint32(32 - r))


def murmur3_32_of_uint32(keys, seeds, xp=np):
    """MurmurHash3 x86_32 of each key's 4 little-endian bytes, vectorised.

    Args:
      keys: non-negative integers < 2**32, any shape (broadcast against ``seeds``).
      seeds: seeds < 2**32, broadcastable against ``keys``.
      xp: array namespace, ``numpy`` or ``jax.numpy``.

    Returns:
      uint32 hashes with the broadcast shape; equal to ``mmh3.hash(key_bytes, seed, signed=False)``.
    """
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps mod 2**32 on purpose
        k = xp.asarray(keys).astype(xp.uint32)
        h = xp.asarray(seeds).astype(xp.uint32)
        k = k * xp.uint32(_C1)
        k = _rotl32(k, 15, xp)
        k = k * xp.uint32(_C2)
        h = h ^ k
        h = _rotl32(h, 13, xp)
        h = h * xp.uint32(5) + xp.uint32(0xE6546B64)
        h = h ^ xp.uint32(4)  # the key length in bytes
        h = h ^ (h >> xp.uint32(16))
        h = h * xp.uint32(0x85EBCA6B)
        h = h ^ (h >> xp.uint32(13))
        h = h * xp.uint32(0xC2B2AE35)
        h = h ^ (h >> xp.uint32(16))
        return h


def repetition_seeds(base_seed: int, repetitions) -> np.ndarray:
    """Per-repetition seeds ``base_seed + r`` as uint32 [R]; ``repetitions`` is an int R or ids."""
    reps = np.arange(repetitions) if np.isscalar(repetitions) else np.asarray(repetitions)
    return ((int(base_seed) + reps.astype(np.int64)) & _MASK32).astype(np.uint32)


def hash_to_range(ids, seeds, size: int, xp=np):
    """Hashes ids under every repetition's seed into [0, size).

    Args:
      ids: non-negative integer ids, any shape S (class or feature ids).
      seeds: uint32 [R] per-repetition seeds (``repetition_seeds``).
      size: B for classes, feat_hash_dim for features.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      int32 [R, *S]: entry [r, ...] is ``murmur3(id, seeds[r]) mod size``.
    """
    ids = xp.asarray(ids)
    seeds = xp.asarray(seeds).reshape((-1,) + (1,) * ids.ndim)
    return (murmur3_32_of_uint32(ids[None], seeds, xp) % xp.uint32(size)).astype(xp.int32)


def table_dtype(num_buckets: int):
    """The dtype of a learned [R, L] class -> bucket table: int16 where B fits, else int32."""
    return np.int16 if num_buckets <= np.iinfo(np.int16).max + 1 else np.int32


def hashed_table(seeds, num_labels: int, num_buckets: int, xp=np):
    """The [R, L] class -> bucket table of the hashes (``table_dtype``): where learned
    partitions start (``core.label_partition``)."""
    buckets = hash_to_range(xp.arange(num_labels, dtype=xp.int32), seeds, num_buckets, xp)
    return buckets.astype(table_dtype(num_buckets))


def class_buckets(ids, label_map, num_buckets: int, xp=np):
    """The bucket of every class id under every member: int32 [R, *S].

    Args:
      ids: class ids, any shape S (ids >= L, used for padding, read the last class's bucket).
      label_map: the members' class -> bucket map: their hash seeds, uint32 [R]
        (``repetition_seeds``; the bucket is hashed, ``hash_to_range``), or a learned table,
        integer [R, L] (``core.label_partition``; the bucket is looked up).
      num_buckets: B.
      xp: ``numpy`` or ``jax.numpy``.
    """
    label_map = xp.asarray(label_map)
    if label_map.ndim == 1:
        return hash_to_range(ids, label_map, num_buckets, xp)
    ids = xp.asarray(ids)
    return xp.take(label_map, ids, axis=1, mode="clip").astype(xp.int32)
