"""Learned class -> bucket partitions: each member moves classes to the buckets it predicts for them.

MACH hashes class c of member r into bucket h_r(c) at random. A learned partition (as in IRLI,
published as BLISS: Gupta, Medini, Shrivastava and Smola, KDD 2022) starts from those hashes and,
every few epochs, re-assigns each class to a bucket the member already predicts for the class's
training points, then training goes on with the same weights. Classes that share inputs end up
sharing buckets, so the member's B outputs spend less capacity separating classes that always
come together.

One re-assignment of one member, on the host, from the member's m best buckets per training
point (``top_buckets``, ``top_scores`` [N, m], its probabilities):

1. **Affinity** (``label_affinities``): ``A[c, b] = sum of P_r(b | x_i)`` over the training
   points i of class c, over each point's m best buckets only. It is kept sparse, as (class,
   bucket, affinity) triples, O(nnz(Y) * m) of them: never a dense [L, B] array.
2. **Assignment** (``assign_buckets``), IRLI's power-of-K choices with a hard cap: classes are
   visited in a shuffled order (seeded), B / 4 at a time; each goes to the least loaded of its K
   best buckets by affinity (ties: the higher affinity) that still has room, every bucket holding
   at most ``capacity`` classes (``load_cap`` x L / B); a bucket asked by more classes of the same
   step than it has room for takes them in visiting order. A class left over goes back to its
   current bucket if there is room, else to the buckets with room, least loaded first. Classes
   without any training point keep their current bucket (they count in its load; the cap binds
   the classes that move). Going to the least loaded of K good buckets, not to the best one,
   spreads the classes that share inputs over K buckets: moved to the single best bucket they
   all end up together in every member, and the count-min read-out can no longer tell them apart.

Everything is integer or float64 numpy with fixed orders, so the same inputs and seed give the
same table.
"""

from __future__ import annotations

import math

import numpy as np


def label_affinities(top_buckets: np.ndarray, top_scores: np.ndarray, label_indptr: np.ndarray,
                     label_indices: np.ndarray, num_buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse class-to-bucket affinities of one member.

    Args:
      top_buckets: int [N, m], the member's m best buckets for each training point.
      top_scores: float [N, m], their scores (probabilities).
      label_indptr, label_indices: the training labels as CSR rows ([N + 1] and [nnz]).
      num_buckets: B.

    Returns:
      ``(classes, buckets, affinity)``, [E] each (int32, int32, float64): every (class, bucket)
      pair that some point of the class has among its m best buckets, with the summed scores;
      sorted by class, then affinity (highest first), then bucket.
    """
    num_points, m = top_buckets.shape
    point_of = np.repeat(np.arange(num_points), np.diff(label_indptr))
    classes = np.repeat(np.asarray(label_indices, np.int64), m)
    keys = classes * num_buckets + np.asarray(top_buckets, np.int64)[point_of].reshape(-1)
    unique, inverse = np.unique(keys, return_inverse=True)
    affinity = np.bincount(inverse.reshape(-1), weights=np.asarray(top_scores, np.float64)[point_of].reshape(-1),
                           minlength=len(unique))
    classes, buckets = unique // num_buckets, unique % num_buckets
    order = np.lexsort((buckets, -affinity, classes))
    return classes[order].astype(np.int32), buckets[order].astype(np.int32), affinity[order]


def bucket_capacity(num_labels: int, num_buckets: int, load_cap: float) -> int:
    """Classes a bucket may hold: ceil(load_cap x L / B), at least 1 (load_cap >= 1, so the B
    buckets hold all L classes)."""
    return max(math.ceil(load_cap * num_labels / num_buckets), 1)


# Classes visited at once per assignment step: B / 4, so one step moves few classes per bucket
# while the loads it reads are frozen.
CHUNK_PER_BUCKETS = 4


def _ranks_in_groups(groups: np.ndarray) -> np.ndarray:
    """Each entry's position among the equal neighbours of a sorted ``groups`` [E]."""
    return np.arange(len(groups)) - np.searchsorted(groups, groups, side="left")


def _take_in_order(classes: np.ndarray, buckets: np.ndarray, priority: np.ndarray, room: np.ndarray):
    """The (class, bucket) asks each bucket takes: in visiting order, while it has ``room``."""
    order = np.lexsort((priority[classes], buckets))
    classes, buckets = classes[order], buckets[order]
    taken = _ranks_in_groups(buckets) < room[buckets]
    return classes[taken], buckets[taken]


def _preferences(classes: np.ndarray, buckets: np.ndarray, num_labels: int, choices: int) -> np.ndarray:
    """int64 [L, K]: each class's K best buckets, best first; -1 where a class has fewer."""
    rank = _ranks_in_groups(classes)
    kept = rank < choices
    table = np.full((num_labels, choices), -1, np.int64)
    table[classes[kept], rank[kept]] = buckets[kept]
    return table


# Long: the assignment's phases in the order the module docstring gives them.
def assign_buckets(classes: np.ndarray, buckets: np.ndarray, current: np.ndarray, *, num_buckets: int,
                   choices: int, capacity: int, order: np.ndarray) -> np.ndarray:
    """Every class's new bucket (see the module docstring).

    Args:
      classes, buckets: the (class, bucket) preferences, sorted by class then preference
        (``label_affinities``' first two outputs).
      current: int [L], the classes' current buckets.
      num_buckets: B.
      choices: K, how many of its best buckets a class may move to.
      capacity: the most classes a bucket takes (``bucket_capacity``); capacity x B >= L.
      order: int [L], a permutation of the classes: the visiting order.

    Returns:
      int [L], of ``current``'s dtype.
    """
    num_labels = len(current)
    if capacity * num_buckets < num_labels:
        raise ValueError(f"capacity {capacity} x B={num_buckets} buckets cannot hold L={num_labels} classes")
    priority = np.empty(num_labels, np.int64)
    priority[order] = np.arange(num_labels)
    preferred = _preferences(classes, buckets, num_labels, choices)
    seen = preferred[:, 0] >= 0
    placed = np.where(seen, -1, current).astype(np.int64)  # classes without a training point stay
    load = np.bincount(placed[~seen], minlength=num_buckets).astype(np.int64)
    visiting = order[seen[order]]
    chunk = max(num_buckets // CHUNK_PER_BUCKETS, 1)
    for start in range(0, len(visiting), chunk):
        batch = visiting[start:start + chunk]
        options = preferred[batch]
        room = np.maximum(capacity - load, 0)
        # The least loaded of its K buckets with room (ties: the higher affinity, the earlier one).
        option_load = np.where((options >= 0) & (room[np.maximum(options, 0)] > 0), load[np.maximum(options, 0)],
                               np.iinfo(np.int64).max)
        best = np.argmin(option_load, axis=1)
        wanted = options[np.arange(len(batch)), best]
        asking = option_load[np.arange(len(batch)), best] < np.iinfo(np.int64).max
        taken_classes, taken_buckets = _take_in_order(batch[asking], wanted[asking], priority, room)
        placed[taken_classes] = taken_buckets
        load += np.bincount(taken_buckets, minlength=num_buckets)
    left = np.flatnonzero(placed < 0)
    taken_classes, taken_buckets = _take_in_order(left, current[left].astype(np.int64), priority,
                                                  np.maximum(capacity - load, 0))
    placed[taken_classes] = taken_buckets
    load += np.bincount(taken_buckets, minlength=num_buckets)
    left = np.flatnonzero(placed < 0)
    if len(left):  # the buckets with room, least loaded first (ties: lower id), each filled up
        by_load = np.lexsort((np.arange(num_buckets), load))
        slots = np.repeat(by_load, np.maximum(capacity - load, 0)[by_load])
        placed[left[np.argsort(priority[left], kind="stable")]] = slots[:len(left)]
    return placed.astype(current.dtype)


def repartition(top_buckets: np.ndarray, top_scores: np.ndarray, label_indptr: np.ndarray,
                label_indices: np.ndarray, current: np.ndarray, *, num_buckets: int, choices: int,
                load_cap: float, seed) -> np.ndarray:
    """One member's new class -> bucket row [L] from its m best buckets on the training points.

    Args:
      top_buckets, top_scores: [N, m], as ``label_affinities`` takes them.
      label_indptr, label_indices: the training labels (CSR rows).
      current: int [L], the member's current row.
      num_buckets, choices, load_cap: B, K and the cap (``bucket_capacity``).
      seed: seeds the visiting order (an int or a sequence of ints, ``numpy.random.default_rng``).
    """
    classes, buckets, _ = label_affinities(top_buckets, top_scores, label_indptr, label_indices, num_buckets)
    order = np.random.default_rng(seed).permutation(len(current))
    return assign_buckets(classes, buckets, current, num_buckets=num_buckets, choices=choices,
                          capacity=bucket_capacity(len(current), num_buckets, load_cap), order=order)
