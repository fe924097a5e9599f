"""Hashing against mmh3 (the reference implementation) and published MurmurHash3 vectors."""

import jax.numpy as jnp
import mmh3
import numpy as np
import pytest

from mach_jax.core import hashing
from support import bucket_lookup

# MurmurHash3_x86_32 verification vectors for 4-byte keys (SMHasher / Wikipedia test list).
KNOWN_VECTORS = [
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"\xff\xff\xff\xff", 0, 0x76293B50),
    (b"\x21\x43\x65\x87", 0, 0xF55B516B),
    (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
]


@pytest.mark.parametrize("key_bytes, seed, expected", KNOWN_VECTORS)
def test_known_vectors(key_bytes, seed, expected):
    key = int.from_bytes(key_bytes, "little")
    assert int(hashing.murmur3_32_of_uint32(np.uint32(key), np.uint32(seed))) == expected
    assert mmh3.hash(key_bytes, seed, signed=False) == expected


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_matches_mmh3_on_random_keys_and_seeds(xp):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**32, size=2000, dtype=np.uint64).astype(np.uint32)
    seeds = rng.integers(0, 2**32, size=2000, dtype=np.uint64).astype(np.uint32)
    ours = np.asarray(hashing.murmur3_32_of_uint32(xp.asarray(keys), xp.asarray(seeds), xp=xp))
    expected = [mmh3.hash(int(k).to_bytes(4, "little"), int(s), signed=False) for k, s in zip(keys, seeds)]
    np.testing.assert_array_equal(ours, np.array(expected, dtype=np.uint32))


def test_bucket_lookup_is_mmh3_mod_b_with_seed_plus_r():
    num_labels, num_buckets, base_seed, reps = 500, 37, 12345, 5
    table = bucket_lookup(num_labels, num_buckets, base_seed, reps)
    assert table.shape == (reps, num_labels) and table.dtype == np.int32
    for r in range(reps):
        expected = [mmh3.hash(c.to_bytes(4, "little"), base_seed + r, signed=False) % num_buckets
                    for c in range(num_labels)]
        np.testing.assert_array_equal(table[r], expected)


def test_subset_of_repetitions_matches_the_full_table():
    full = bucket_lookup(300, 16, 7, 8)
    part = bucket_lookup(300, 16, 7, np.array([5, 6, 7]))
    np.testing.assert_array_equal(part, full[5:])


def test_buckets_are_roughly_uniform():
    table = bucket_lookup(100_000, 100, 0, 2)
    counts = np.bincount(table[0], minlength=100)
    assert counts.min() > 800 and counts.max() < 1200  # mean 1000, sd ~31


def test_seed_wraps_at_2_to_32():
    table = bucket_lookup(10, 1000, 2**32 - 1, 2)
    expected = [mmh3.hash(c.to_bytes(4, "little"), 0, signed=False) % 1000 for c in range(10)]
    np.testing.assert_array_equal(table[1], expected)
