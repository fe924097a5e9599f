"""Chunked, streaming top-k decoding against a dense numpy count-min read-out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax.readout import decode
from mach_jax.core import hashing
from support import bucket_lookup


def numpy_topk(bucket_scores, lookup, k):
    """Obviously correct: the full [N, L] score matrix, then a stable sort (ties: lower id)."""
    num_reps, num_labels = lookup.shape
    scores = np.zeros((bucket_scores.shape[1], num_labels), dtype=np.float64)
    for r in range(num_reps):
        for c in range(num_labels):
            scores[:, c] += bucket_scores[r, :, lookup[r, c]]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("num_labels, chunk_size", [(997, 128), (1000, 1000), (130, 4096), (64, 7)])
def test_chunked_topk_matches_numpy(num_labels, chunk_size):
    rng = np.random.default_rng(num_labels)
    num_reps, num_points, num_buckets, k = 4, 9, 50, 5
    bucket_scores = rng.standard_normal((num_reps, num_points, num_buckets)).astype(np.float32)
    lookup = bucket_lookup(num_labels, num_buckets, 3, num_reps)  # mmh3-tested host table
    expected_scores, expected_ids = numpy_topk(bucket_scores, lookup, k)
    seeds = hashing.repetition_seeds(3, num_reps)
    scores, ids = jax.jit(decode.decode_topk, static_argnums=(2, 3, 4))(
        jnp.asarray(bucket_scores), jnp.asarray(seeds), num_labels, k, chunk_size)
    np.testing.assert_array_equal(np.asarray(ids), expected_ids)
    np.testing.assert_allclose(np.asarray(scores), expected_scores, rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_lower_class_id():
    # One bucket per repetition: every class has the same score.
    bucket_scores = np.ones((2, 3, 1), dtype=np.float32)
    _, ids = decode.decode_topk(jnp.asarray(bucket_scores), jnp.arange(2, dtype=jnp.uint32), 20, 5, 6)
    np.testing.assert_array_equal(np.asarray(ids), np.tile(np.arange(5), (3, 1)))


def test_k_larger_than_l_is_refused():
    with pytest.raises(ValueError, match="only L=3"):
        decode.decode_topk(jnp.zeros((1, 2, 4)), jnp.zeros((1,), jnp.uint32), 3, 5, 2)


def test_class_scores_is_a_sum_over_repetitions():
    rng = np.random.default_rng(1)
    bucket_scores = rng.random((3, 2, 8)).astype(np.float32)
    lookup = rng.integers(0, 8, size=(3, 5)).astype(np.int32)
    expected = sum(bucket_scores[r][:, lookup[r]] for r in range(3))  # [N, C]
    ours = decode.class_scores(jnp.transpose(bucket_scores, (0, 2, 1)), lookup)  # [C, N]
    np.testing.assert_allclose(np.asarray(ours).T, expected, rtol=1e-6)


def test_prob_aggregation_ranks_like_the_unbiased_estimator():
    rng = np.random.default_rng(2)
    num_reps, num_buckets = 6, 16
    logits = rng.standard_normal((num_reps, 4, num_buckets)).astype(np.float32)
    lookup = bucket_lookup(200, num_buckets, 0, num_reps)
    probs = np.asarray(decode.bucket_scores_to_probs(jnp.asarray(logits), "softmax", "prob"))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    summed = np.asarray(decode.class_scores(np.transpose(probs, (0, 2, 1)), lookup)).T
    unbiased = num_buckets / (num_buckets - 1) * (summed / num_reps - 1 / num_buckets)
    np.testing.assert_array_equal(np.argsort(-summed, 1, kind="stable"), np.argsort(-unbiased, 1, kind="stable"))


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_log_prob_aggregation_sums_the_members_log_probabilities(loss_name):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 4, 8)).astype(np.float64)
    if loss_name == "softmax":
        expected = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    else:
        expected = -np.log1p(np.exp(-logits))
    ours = decode.bucket_scores_to_probs(jnp.asarray(logits, jnp.float32), loss_name, "log_prob")
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-6)
