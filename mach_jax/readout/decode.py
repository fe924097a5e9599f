"""Count-min read-out: class scores from the R bucket scores, with a streaming top-k.

The score of class c is ``sum_r S[r, n, h_r(c)]``: a take-and-sum over R. Classes are visited in
chunks of C under ``lax.scan``; each chunk's buckets are hashed on the fly from the R seeds (or
looked up in a learned [R, L] table, ``hashing.class_buckets``), and only a running [N, k] top-k
is kept, so memory is O(R * B * N + C * N + N * k) at any L: no [N, L] scores, and with hashed
buckets no [R, L] class -> bucket table. Ties go to the lower class id.

The gather runs on the transposed scores [R, B, N]: each class reads one contiguous row of N
floats per member (about 30x faster on CPU than gathering columns of [N, B] under vmap). The
take-and-sum has two kernel forms (``backend.batched_forms``): "loop" adds one member at a time
(``lax.fori_loop`` inside each chunk); "batched" gathers all R members' [C, N] rows at once and
sums them, so the class scan is the only loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mach_jax.core import backend, hashing, losses


def bucket_scores_to_probs(logits: jax.Array, loss_name: str, aggregation: str) -> jax.Array:
    """Per-member bucket scores to aggregate. Args: logits [R, N, B]. Returns: [R, N, B].

    ``prob`` sums P_r(bucket | x) (the loss's own transform, ``losses.Loss.probs``): the paper's
    estimator, whose unbiased form ``B/(B-1) * (mean_r P_r - 1/B)`` ranks the same. ``logit``
    sums the raw logits, as the reference code did. ``log_prob`` sums log P_r (a geometric
    mean: a class must score well in every member, the smooth form of the count-min sketch's
    min over R).
    """
    logits = logits.astype(jnp.float32)  # the model gives float32 at any precision: keep it so
    if aggregation == "logit":
        return logits
    loss = losses.get_loss(loss_name)
    return loss.log_probs(logits) if aggregation == "log_prob" else loss.probs(logits)


def class_scores(bucket_scores_t: jax.Array, label_lookup: jax.Array, batched: bool | None = None) -> jax.Array:
    """Take-and-sum for a set of classes.

    Args:
      bucket_scores_t: [R, B, N], the bucket scores transposed.
      label_lookup: int32 [R, C], the buckets of C classes under each member's hash.
      batched: one [R, C, N] gather summed over R (True) or a loop adding one member's [C, N] at
        a time (False); None: the current backend's form (``backend.batched_forms``).

    Returns:
      [C, N]: ``sum_r bucket_scores_t[r, label_lookup[r, c], :]``.
    """
    bucket_scores_t, label_lookup = jnp.asarray(bucket_scores_t), jnp.asarray(label_lookup)
    if backend.batched_forms() if batched is None else batched:
        members = jnp.arange(label_lookup.shape[0])[:, None]
        return jnp.sum(bucket_scores_t.at[members, label_lookup].get(mode="clip"), axis=0)

    def add_member(r, total):
        return total + jnp.take(bucket_scores_t[r], label_lookup[r], axis=0, mode="clip")

    init = jnp.zeros((label_lookup.shape[1], bucket_scores_t.shape[2]), bucket_scores_t.dtype)
    return lax.fori_loop(0, label_lookup.shape[0], add_member, init)


def decode_topk(bucket_scores: jax.Array, label_map: jax.Array, num_labels: int, k: int,
                chunk_size: int, batched: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """The k best classes of every point, scanning classes in chunks.

    Args:
      bucket_scores: [R, N, B] aggregated bucket scores (see ``bucket_scores_to_probs``).
      label_map: the members' class -> bucket map (``hashing.class_buckets``): hash seeds
        uint32 [R] or a learned table [R, L].
      num_labels: L.
      k: how many classes to return (k <= L).
      chunk_size: C, classes scored per scan step; L need not be a multiple of it.
      batched: the take-and-sum's kernel form (``class_scores``; None: the current backend's).

    Returns:
      ``(scores, ids)``: [N, k] float32 and int32, best first.
    """
    if k > num_labels:
        raise ValueError(f"top-k of k={k} asked for, but there are only L={num_labels} classes")
    num_buckets, num_points = bucket_scores.shape[2], bucket_scores.shape[1]
    chunk_size = min(chunk_size, num_labels)
    num_chunks = -(-num_labels // chunk_size)
    scores_t = jnp.transpose(bucket_scores, (0, 2, 1))  # [R, B, N]

    def scan_chunk(best, start):
        best_scores, best_ids = best
        ids = start + jnp.arange(chunk_size, dtype=jnp.int32)
        lookup = hashing.class_buckets(ids, label_map, num_buckets, xp=jnp)  # [R, C]
        scores = jnp.where(ids[:, None] < num_labels, class_scores(scores_t, lookup, batched), -jnp.inf).T
        # The running best come first and hold lower ids, so ties keep the lower id.
        all_scores = jnp.concatenate([best_scores, scores], axis=1)
        all_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, scores.shape)], axis=1)
        top_scores, positions = lax.top_k(all_scores, k)
        return (top_scores, jnp.take_along_axis(all_ids, positions, axis=1)), None

    init = (jnp.full((num_points, k), -jnp.inf, bucket_scores.dtype),
            jnp.full((num_points, k), num_labels, jnp.int32))
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
    (scores, ids), _ = lax.scan(scan_chunk, init, starts)
    return scores, ids
