"""Approximate decoding against a slow numpy reference and against the exact decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax.readout import approx_decode, decode
from mach_jax.core import hashing


def numpy_approx_topk(scores, seeds, num_labels, k, top_buckets, min_votes=1, bucket_cap=None,
                      label_counts=None):
    """Per query: candidates, votes, relaxed threshold and top-k, one class at a time."""
    num_reps, num_points, num_buckets = scores.shape
    lookup = hashing.hash_to_range(np.arange(num_labels), seeds, num_buckets)  # [R, L]
    counts = np.zeros(num_labels) if label_counts is None else np.asarray(label_counts)
    # Place of each class inside its bucket, most frequent first, ties by id.
    place = np.zeros((num_reps, num_labels), int)
    for r in range(num_reps):
        for b in range(num_buckets):
            members = [c for c in range(num_labels) if lookup[r, c] == b]
            for i, c in enumerate(sorted(members, key=lambda c: (-counts[c], c))):
                place[r, c] = i
    cap = np.inf if bucket_cap is None else bucket_cap
    ids = np.full((num_points, k), num_labels)
    for n in range(num_points):
        exact = sum(scores[r, n, lookup[r]] for r in range(num_reps))
        in_top = np.array([np.isin(lookup[r], np.argsort(-scores[r, n])[:top_buckets])
                           for r in range(num_reps)])
        candidates = [c for c in range(num_labels) if (in_top[:, c] & (place[:, c] < cap)).any()]
        votes = in_top.sum(axis=0)
        if candidates:
            kth = sorted(votes[candidates], reverse=True)[min(k, len(candidates)) - 1]
            threshold = max(min(min_votes, kth), 1)
            candidates = [c for c in candidates if votes[c] >= threshold]
        best = sorted(candidates, key=lambda c: -exact[c])[:k]
        ids[n, :len(best)] = best
    return ids


def run_approx(scores, seeds, num_labels, k, top_buckets, min_votes=1, bucket_cap=None, label_counts=None):
    index, shape = approx_decode.build_inverse_index(seeds, num_labels, scores.shape[2], label_counts,
                                                     bucket_cap)
    decoder = jax.jit(approx_decode.approx_decode_topk,
                      static_argnames=("k", "top_buckets", "bucket_cap", "min_votes"))
    top_scores, ids = decoder(jnp.asarray(scores), jnp.asarray(seeds), jax.tree.map(jnp.asarray, index),
                              k=k, top_buckets=top_buckets, bucket_cap=shape.bucket_cap,
                              min_votes=min_votes)
    return np.asarray(top_scores), np.asarray(ids)


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    num_reps, num_points, num_buckets, num_labels = 4, 7, 8, 61
    scores = rng.random((num_reps, num_points, num_buckets)).astype(np.float32)
    return scores, hashing.repetition_seeds(11, num_reps), num_labels


def test_inverse_index_lists_every_class_once_in_its_bucket(problem):
    scores, seeds, num_labels = problem
    num_buckets = scores.shape[2]
    index, shape = approx_decode.build_inverse_index(seeds, num_labels, num_buckets)
    lookup = hashing.hash_to_range(np.arange(num_labels), seeds, num_buckets)
    for r in range(len(seeds)):
        assert sorted(index["classes"][r]) == list(range(num_labels))
        for b in range(num_buckets):
            in_bucket = index["classes"][r, index["offsets"][r, b]:index["offsets"][r, b + 1]]
            assert list(in_bucket) == [c for c in range(num_labels) if lookup[r, c] == b]
    assert shape.max_bucket_size == max(np.bincount(row, minlength=num_buckets).max() for row in lookup)


@pytest.mark.parametrize("top_buckets,min_votes", [(1, 1), (2, 1), (3, 2), (2, 4)])
def test_matches_numpy_reference(problem, top_buckets, min_votes):
    scores, seeds, num_labels = problem
    expected = numpy_approx_topk(scores, seeds, num_labels, 5, top_buckets, min_votes)
    _, ids = run_approx(scores, seeds, num_labels, 5, top_buckets, min_votes)
    np.testing.assert_array_equal(ids, expected)


def test_bucket_cap_keeps_the_most_frequent_classes(problem):
    scores, seeds, num_labels = problem
    counts = np.random.default_rng(5).integers(0, 20, num_labels)
    for cap in (1, 3):
        expected = numpy_approx_topk(scores, seeds, num_labels, 5, 2, 1, cap, counts)
        _, ids = run_approx(scores, seeds, num_labels, 5, 2, 1, cap, counts)
        np.testing.assert_array_equal(ids, expected)


def test_all_buckets_equals_exact_decoding(problem):
    scores, seeds, num_labels = problem
    top_scores, ids = run_approx(scores, seeds, num_labels, 5, scores.shape[2])
    exact_scores, exact_ids = decode.decode_topk(jnp.asarray(scores), jnp.asarray(seeds), num_labels, 5, 16)
    np.testing.assert_array_equal(ids, np.asarray(exact_ids))
    np.testing.assert_allclose(top_scores, np.asarray(exact_scores), rtol=1e-6)


def test_scores_are_the_full_take_and_sum(problem):
    scores, seeds, num_labels = problem
    top_scores, ids = run_approx(scores, seeds, num_labels, 5, 2)
    lookup = hashing.hash_to_range(np.arange(num_labels), seeds, scores.shape[2])
    for n in range(scores.shape[1]):
        expected = [sum(scores[r, n, lookup[r, c]] for r in range(len(seeds))) for c in ids[n]]
        np.testing.assert_allclose(top_scores[n], expected, rtol=1e-6)
        assert len(set(ids[n])) == 5


def test_too_few_candidates_are_padded():
    seeds = hashing.repetition_seeds(0, 2)
    scores = np.random.default_rng(0).random((2, 3, 64)).astype(np.float32)
    num_labels = 6  # most buckets are empty: one top bucket holds at most a class or two
    top_scores, ids = run_approx(scores, seeds, num_labels, 5, 1)
    expected = numpy_approx_topk(scores, seeds, num_labels, 5, 1)
    np.testing.assert_array_equal(ids, expected)
    assert np.all(np.isneginf(top_scores) == (ids == num_labels))
    assert (ids == num_labels).any()


def test_bad_top_buckets_is_refused(problem):
    scores, seeds, num_labels = problem
    with pytest.raises(ValueError, match="top_buckets"):
        run_approx(scores, seeds, num_labels, 5, scores.shape[2] + 1)
