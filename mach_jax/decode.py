"""Count-min read-out: class scores from the R bucket scores, with a streaming top-k.

The score of class c is ``sum_r S[r, n, h_r(c)]``: a take-and-sum over R. Classes are visited in
chunks of C under ``lax.scan``, and only a running [N, k] top-k is kept, so memory stays
O(R * N * C + N * k) at any L: no [N, L] array is ever built. Ties go to the lower class id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def bucket_scores_to_probs(logits: jax.Array, loss_name: str, aggregation: str) -> jax.Array:
    """Per-member bucket scores to aggregate. Args: logits [R, N, B]. Returns: [R, N, B].

    ``prob`` sums P_r(bucket | x) (the member's softmax, or sigmoid for the sigmoid loss): the
    paper's estimator, whose unbiased form ``B/(B-1) * (mean_r P_r - 1/B)`` ranks the same.
    ``logit`` sums the raw logits, as the reference code did.
    """
    if aggregation == "logit":
        return logits
    if loss_name == "softmax":
        return jax.nn.softmax(logits, axis=-1)
    return jax.nn.sigmoid(logits)


def class_scores(bucket_scores: jax.Array, label_lookup: jax.Array) -> jax.Array:
    """Take-and-sum for a set of classes.

    Args:
      bucket_scores: [R, N, B].
      label_lookup: int32 [R, C], the buckets of C classes under each member's hash.

    Returns:
      [N, C]: ``sum_r bucket_scores[r, :, label_lookup[r, c]]``.
    """
    return jax.vmap(lambda scores, buckets: jnp.take(scores, buckets, axis=1))(
        bucket_scores, label_lookup).sum(0)


def decode_topk(bucket_scores: jax.Array, label_lookup: jax.Array, k: int,
                chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """The k best classes of every point, scanning classes in chunks.

    Args:
      bucket_scores: [R, N, B] aggregated bucket scores (see ``bucket_scores_to_probs``).
      label_lookup: int32 [R, L] class -> bucket table.
      k: how many classes to return (k <= L).
      chunk_size: C, classes scored per scan step; L need not be a multiple of it.

    Returns:
      ``(scores, ids)``: [N, k] float32 and int32, best first.
    """
    num_reps, num_labels = label_lookup.shape
    num_points = bucket_scores.shape[1]
    if k > num_labels:
        raise ValueError(f"top-k of k={k} asked for, but there are only L={num_labels} classes")
    chunk_size = min(chunk_size, num_labels)
    num_chunks = -(-num_labels // chunk_size)
    padded = jnp.pad(label_lookup, ((0, 0), (0, num_chunks * chunk_size - num_labels)))
    chunks = padded.reshape(num_reps, num_chunks, chunk_size).transpose(1, 0, 2)  # [chunks, R, C]
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size

    def scan_chunk(best, chunk):
        best_scores, best_ids = best
        lookup, start = chunk
        ids = start + jnp.arange(chunk_size, dtype=jnp.int32)
        scores = class_scores(bucket_scores, lookup)
        scores = jnp.where(ids < num_labels, scores, -jnp.inf)
        # The running best come first and hold lower ids, so ties keep the lower id.
        all_scores = jnp.concatenate([best_scores, scores], axis=1)
        all_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, scores.shape)], axis=1)
        top_scores, positions = lax.top_k(all_scores, k)
        return (top_scores, jnp.take_along_axis(all_ids, positions, axis=1)), None

    init = (jnp.full((num_points, k), -jnp.inf, bucket_scores.dtype),
            jnp.full((num_points, k), num_labels, jnp.int32))
    (scores, ids), _ = lax.scan(scan_chunk, init, (chunks, starts))
    return scores, ids
