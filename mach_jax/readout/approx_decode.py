"""Approximate count-min read-out: score only the classes in each member's top-m buckets.

Exact decoding (``decode.decode_topk``) touches all L classes for every query. Here each member r
keeps its m best buckets per query; the candidates are the classes hashed into them, found with a
bucket -> classes inverse index built once from the hashes (or the learned table); only those candidates are scored by
the same take-and-sum over R, and the best k are returned. The cost per query is
O(R * R * m * L/B) instead of O(R * L).

Fixed shapes, so it compiles once. Every (member, top bucket) pair has ``bucket_cap`` candidate
slots, K = R * m * bucket_cap per query; the default cap is the largest bucket, so no candidate is
ever dropped. A smaller cap keeps each bucket's ``bucket_cap`` most frequent training classes and
drops the rest of that bucket (they can still come in through another member's buckets).

A class sitting in the top buckets of several members fills several slots; only its slot from the
first such member is scored, so the top-k never repeats a class (no sort needed). Its vote count
is the number of members whose top-m buckets hold it; with ``min_votes`` > 1 only classes with at
least that many votes are kept, relaxed per query to the k-th largest vote count when fewer than k
classes have enough votes (as the reference MACH evaluator did).

Memory: the index is int32 [R, L] classes and [R, B + 1] offsets, plus [R, B] cutoffs and [L]
ranks when capped (about 4 * R * L bytes; sharded over the members like the parameters); the
read-out of a batch of N queries holds a few [N, K] arrays and a [R, N, B, 2] copy of the scores.

The take-and-sum over R has two kernel forms (``backend.batched_forms``): "loop" reads one
member at a time (``lax.fori_loop``); "batched" reads all R at once (``jax.vmap``), holding
[R, N, K] reads instead of [N, K] ones.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mach_jax.core import backend, hashing

# Index arrays, kept as a dict so it is a pytree that jit and device_put take as it is.
InverseIndex = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class IndexShape:
    """Static facts of an inverse index: the largest bucket and the slots per top bucket."""

    max_bucket_size: int
    bucket_cap: int


def build_inverse_index(label_map: np.ndarray, num_labels: int, num_buckets: int,
                        label_counts: np.ndarray | None = None,
                        bucket_cap: int | None = None) -> tuple[dict[str, np.ndarray], IndexShape]:
    """The bucket -> classes inverse index of every member, on the host.

    Args:
      label_map: the members' class -> bucket map (``hashing.class_buckets``): hash seeds
        uint32 [R] or a learned table [R, L].
      num_labels: L.
      num_buckets: B.
      label_counts: int [L] training counts; within a bucket classes are ordered most frequent
        first (ties: lower id), which decides what a ``bucket_cap`` drops. None: by id.
      bucket_cap: candidate slots per top bucket; None (or more than the largest bucket): the
        largest bucket, so nothing is dropped.

    Returns:
      ``(index, shape)``. index: ``classes`` int32 [R, L] (member r's classes grouped by bucket),
      ``offsets`` int32 [R, B + 1] (bucket b is ``classes[r, offsets[r, b]:offsets[r, b + 1]]``),
      and only when the cap drops classes, ``rank`` int32 [L] (a class's place in the frequency
      order) and ``cutoff`` int32 [R, B] (the rank of the first class past the cap in each
      bucket; L when none is).
    """
    label_map = np.asarray(label_map)
    if bucket_cap is not None and bucket_cap < 1:
        raise ValueError(f"bucket_cap={bucket_cap} must be >= 1 or None")
    if label_counts is None:
        by_rank = np.arange(num_labels, dtype=np.int32)
    else:
        by_rank = np.argsort(-np.asarray(label_counts, np.int64), kind="stable").astype(np.int32)
    rank = np.empty(num_labels, np.int32)
    rank[by_rank] = np.arange(num_labels, dtype=np.int32)
    num_reps = len(label_map)
    classes = np.empty((num_reps, num_labels), np.int32)
    offsets = np.zeros((num_reps, num_buckets + 1), np.int32)
    for r in range(num_reps):
        buckets = hashing.class_buckets(by_rank, label_map[r:r + 1], num_buckets)[0]
        if num_buckets <= 2**16:  # numpy's stable sort is a radix sort on 16-bit keys
            buckets = buckets.astype(np.uint16)
        # A stable sort by bucket keeps the frequency order inside every bucket.
        classes[r] = by_rank[np.argsort(buckets, kind="stable")]
        offsets[r, 1:] = np.cumsum(np.bincount(buckets, minlength=num_buckets))
    sizes = np.diff(offsets, axis=1)
    max_bucket_size = int(sizes.max())
    cap = max_bucket_size if bucket_cap is None else min(bucket_cap, max_bucket_size)
    index = {"classes": classes, "offsets": offsets}
    if cap < max_bucket_size:
        past_cap = np.minimum(offsets[:, :-1] + cap, num_labels - 1)
        index["cutoff"] = np.where(sizes > cap, rank[np.take_along_axis(classes, past_cap, axis=1)],
                                   num_labels).astype(np.int32)
        index["rank"] = rank
    return index, IndexShape(max_bucket_size, max(cap, 1))


def gather_candidates(bucket_scores: jax.Array, index: InverseIndex, top_buckets: int,
                      bucket_cap: int) -> tuple[jax.Array, jax.Array]:
    """The classes in every member's top-m buckets.

    Args:
      bucket_scores: [R, N, B].
      index: see ``build_inverse_index``.
      top_buckets: m.
      bucket_cap: slots per top bucket.

    Returns:
      ``(candidates, selected)``: int32 [N, K] class ids, K = R * m * bucket_cap, with L in empty
      slots, slot k coming from member ``k // (m * bucket_cap)``; and bool [R, N, B], the top-m
      buckets of each member.
    """
    _, num_points, num_buckets = bucket_scores.shape
    num_labels = index["classes"].shape[1]
    _, top = lax.top_k(bucket_scores, top_buckets)  # [R, N, m]
    starts = jax.vmap(jnp.take)(index["offsets"], top)
    sizes = jnp.minimum(jax.vmap(jnp.take)(index["offsets"], top + 1) - starts, bucket_cap)
    slot = jnp.arange(bucket_cap, dtype=jnp.int32)
    positions = starts[..., None] + slot  # [R, N, m, cap]
    candidates = jax.vmap(lambda row, pos: jnp.take(row, pos, mode="clip"))(index["classes"], positions)
    candidates = jnp.where(slot < sizes[..., None], candidates, num_labels)
    candidates = jnp.transpose(candidates, (1, 0, 2, 3)).reshape(num_points, -1)
    selected = jax.vmap(lambda t: jnp.zeros((num_points, num_buckets), bool).at[
        jnp.arange(num_points)[:, None], t].set(True))(top)
    return candidates, selected


def vote_threshold(votes: jax.Array, distinct: jax.Array, k: int, min_votes: int) -> jax.Array:
    """Per query, the largest v <= min_votes that at least k distinct candidates reach (or 1).

    Args: votes int32 [N, K]; distinct bool [N, K]. Returns: int32 [N, 1].
    Counted for v = 2..min_votes rather than by a top-k over the votes (a sort on CPU).
    """
    threshold = jnp.ones((votes.shape[0], 1), jnp.int32)
    for v in range(2, min_votes + 1):
        reached = jnp.sum(distinct & (votes >= v), axis=1, keepdims=True) >= k
        threshold = jnp.where(reached, v, threshold)
    return threshold


def approx_decode_topk(bucket_scores: jax.Array, label_map: jax.Array, index: InverseIndex, *,
                       k: int, top_buckets: int, bucket_cap: int,
                       min_votes: int = 1, batched: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """The k best candidates of every point (see the module docstring).

    Args:
      bucket_scores: [R, N, B] aggregated bucket scores (``decode.bucket_scores_to_probs``).
      label_map: the members' class -> bucket map: hash seeds uint32 [R] or a table [R, L].
      index: the inverse index of the same members (``build_inverse_index``).
      k: how many classes to return.
      top_buckets: m, buckets kept per member and query (m <= B).
      bucket_cap: candidate slots per top bucket (``IndexShape.bucket_cap``).
      min_votes: keep classes in the top buckets of at least this many members (relaxed to the
        k-th largest vote count of the query).
      batched: the candidates' take-and-sum over R as one batched gather (True) or member by
        member (False); None: the current backend's form (``backend.batched_forms``).

    Returns:
      ``(scores, ids)``: [N, k] float32 and int32, best first. A query with fewer than k distinct
      candidates gets score -inf and id L in the missing places.
    """
    num_reps, _, num_buckets = bucket_scores.shape
    if not 1 <= top_buckets <= num_buckets:
        raise ValueError(f"top_buckets m={top_buckets} must be in [1, B={num_buckets}]")
    num_labels, label_map = index["classes"].shape[1], jnp.asarray(label_map)
    candidates, selected = gather_candidates(bucket_scores, index, top_buckets, bucket_cap)
    # One gather per member reads a candidate's bucket score and whether that bucket is a top one.
    score_and_top = jnp.stack([bucket_scores, selected.astype(bucket_scores.dtype)], axis=-1)
    read_member = functools.partial(_read_member, candidates,
                                    jnp.take(index["rank"], candidates, mode="clip") if "cutoff" in index else None)
    totals = _batched_totals if (backend.batched_forms() if batched is None else batched) else _looped_totals
    score, votes, first = totals(read_member, candidates.shape, label_map, score_and_top, index.get("cutoff"))
    slot_member = jnp.arange(candidates.shape[1], dtype=jnp.int32) // (candidates.shape[1] // num_reps)
    distinct = (candidates < num_labels) & (first == slot_member)
    score = jnp.where(distinct & (votes >= vote_threshold(votes, distinct, k, min_votes)), score, -jnp.inf)
    if candidates.shape[1] < k:  # fewer slots than k: pad so that top_k is defined
        pad = k - candidates.shape[1]
        score = jnp.pad(score, ((0, 0), (0, pad)), constant_values=-jnp.inf)
        candidates = jnp.pad(candidates, ((0, 0), (0, pad)), constant_values=num_labels)
    top_scores, positions = lax.top_k(score, k)
    ids = jnp.take_along_axis(candidates, positions, axis=1)
    return top_scores, jnp.where(jnp.isneginf(top_scores), num_labels, ids)


def _read_member(candidates: jax.Array, candidate_rank: jax.Array | None, member_map: jax.Array,
                 score_and_top: jax.Array, cutoff: jax.Array | None) -> tuple[jax.Array, ...]:
    """What one member says of the [N, K] candidates: its bucket score, whether that bucket is
    one of its top m, and whether the candidate has a slot there (within the bucket's cap).

    Args: member_map: the member's hash seed uint32 [] or its table row [L]; score_and_top
    [N, B, 2]; cutoff int32 [B] or None (uncapped).
    Returns: float32 [N, K] scores, bool [N, K] in_top, bool [N, K] in_slot.
    """
    buckets = hashing.class_buckets(candidates, member_map[None], score_and_top.shape[1], xp=jnp)[0]
    read = jnp.take_along_axis(score_and_top, buckets[..., None], axis=1)
    in_top = read[..., 1] > 0
    in_slot = in_top & (candidate_rank < jnp.take(cutoff, buckets)) if cutoff is not None else in_top
    return read[..., 0], in_top, in_slot


def _looped_totals(read_member, shape: tuple[int, int], label_map: jax.Array, score_and_top: jax.Array,
                   cutoff: jax.Array | None) -> tuple[jax.Array, ...]:
    """The "loop" form: the [N, K] (``shape``) candidates' summed scores, votes and first member
    with a slot (R where none has), one member at a time (``lax.fori_loop``).

    Args: read_member: ``_read_member`` of the candidates; label_map uint32 [R] or [R, L];
    score_and_top [R, N, B, 2]; cutoff int32 [R, B] or None.
    """
    num_reps = score_and_top.shape[0]

    def add_member(r, totals):
        score, votes, first = totals
        member_score, in_top, in_slot = read_member(label_map[r], score_and_top[r],
                                                    None if cutoff is None else cutoff[r])
        first = jnp.where((first == num_reps) & in_slot, r, first)
        return score + member_score, votes + in_top.astype(jnp.int32), first

    init = (jnp.zeros(shape, score_and_top.dtype), jnp.zeros(shape, jnp.int32), jnp.full(shape, num_reps, jnp.int32))
    return lax.fori_loop(0, num_reps, add_member, init)


def _batched_totals(read_member, shape: tuple[int, int], label_map: jax.Array, score_and_top: jax.Array,
                    cutoff: jax.Array | None) -> tuple[jax.Array, ...]:
    """The "batched" form of ``_looped_totals``: every member's reads at once ([R, N, K] each,
    R times the loop's memory), then sums over R and the first member with a slot."""
    num_reps = score_and_top.shape[0]
    member_score, in_top, in_slot = jax.vmap(read_member, in_axes=(0, 0, None if cutoff is None else 0))(
        label_map, score_and_top, cutoff)
    first = jnp.where(jnp.any(in_slot, axis=0), jnp.argmax(in_slot, axis=0).astype(jnp.int32), num_reps)
    return jnp.sum(member_score, axis=0), jnp.sum(in_top.astype(jnp.int32), axis=0), first
