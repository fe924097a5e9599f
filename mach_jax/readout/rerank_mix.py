"""Choosing how strongly the re-ranker counts, on training points neither stage learnt from.

The re-ranked score of a shortlisted class c is ``log_softmax(s(x, .))[c] + mix * log P_mach(c | x)``
(``readout.rerank``). ``choose_mix`` scores each mix of ``MIX_GRID``, and the members alone (the
shortlist in the read-out's own order), by P@1 + P@3 + P@5 on points held out from the members'
and the re-ranker's training (``held_out_rows``), and keeps the best; the members alone win a
tie, so on those points the choice is never worse than they are. The points must be new to the
members too: on their own training points the members' read-out is far sharper than on new ones
(docs/large_labels.md), and no mix would ever beat them there.

    train_rows, held_rows = held_out_rows(N, frac, seed)
    own = own_log_softmax(params, held_points, shortlist[held_rows])               # [M, K]
    choice = choose_mix(own, mach_log_score(...), shortlist[held_rows], labels[held_rows])
    choice.mix      # a float, or None: read out the members alone
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.core import reranker
from mach_jax.data import batches
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.readout.rerank import shortlist_log_softmax
from mach_jax.readout.xc_metrics import precision

MIX_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MEMBERS_ALONE = "members alone"
_HOLDOUT_STREAM = 0x4D4958  # the held-out draw's own stream: it never repeats the epochs' or the split's


class MixChoice(NamedTuple):
    """``mix``: the chosen weight, None for the members alone; ``trials``: [P@1, P@3, P@5] on the
    held-out points of each candidate, keyed ``MEMBERS_ALONE`` or ``f"{mix:g}"``; ``num_points``: M."""

    mix: float | None
    trials: dict[str, list[float]]
    num_points: int

    def as_record(self) -> dict:
        return {"mix": self.mix, "num_points": self.num_points, "trials": self.trials}


def held_out_rows(num_points: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, held_rows)``: int64 ids, sorted and disjoint, together 0..N-1;
    ``round(frac * N)`` held out (none when that leaves fewer than one point on either side)."""
    num_held = int(np.floor(frac * num_points + 0.5))
    if num_held < 1 or num_held >= num_points:
        return np.arange(num_points, dtype=np.int64), np.zeros(0, np.int64)
    order = np.random.default_rng([_HOLDOUT_STREAM, seed]).permutation(num_points)
    return np.sort(order[num_held:]), np.sort(order[:num_held])


@jax.jit
def _own_step(params: reranker.RerankParams, batch: dict[str, jax.Array], shortlist_ids: jax.Array,
              num_labels: jax.Array) -> jax.Array:
    present = shortlist_ids < num_labels
    return jnp.where(present, shortlist_log_softmax(params, batch, shortlist_ids, present), -jnp.inf)


def own_log_softmax(params: reranker.RerankParams, held: XCDataset, shortlist_ids: np.ndarray,
                    batch_size: int = 256) -> np.ndarray:
    """The re-ranker's log-softmax over each held-out point's shortlist
    (``readout.rerank.shortlist_log_softmax``).

    Args:
      params: ``reranker.RerankParams``.
      held: the M points, features as the members saw them (transformed, capped).
      shortlist_ids: int32 [M, K] (L: an empty slot).

    Returns:
      float32 [M, K] (-inf in empty slots).
    """
    shape = batches.BatchShape(batch_size, max(batches.widest_row(held.features), 1),
                               max(batches.widest_row(held.labels), 1))
    out = []
    for start, batch in zip(range(0, held.num_points, batch_size), batches.eval_batches(held, shape)):
        rows = np.arange(start, min(start + batch_size, held.num_points))
        ids = np.full((batch_size, shortlist_ids.shape[1]), held.num_labels, np.int32)
        ids[:len(rows)] = shortlist_ids[rows]
        inputs = {"feat_ids": batch["feat_ids"], "feat_vals": batch["feat_vals"]}
        out.append(np.asarray(_own_step(params, inputs, ids, np.int32(held.num_labels)))[:len(rows)])
    return np.concatenate(out) if out else np.zeros(shortlist_ids.shape, np.float32)


def mixed_ranking(own: np.ndarray, mach: np.ndarray, shortlist_ids: np.ndarray, mix: float, k: int) -> np.ndarray:
    """The k best shortlisted ids by ``own + mix * mach`` (empty slots last). [M, K] -> int [M, k]."""
    with np.errstate(invalid="ignore"):  # 0 x -inf in empty slots, masked here
        mixed = np.where(np.isfinite(own), own + mix * mach, -np.inf)
    order = np.argsort(-mixed, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(shortlist_ids, order, axis=1)


def choose_mix(own: np.ndarray, mach: np.ndarray, shortlist_ids: np.ndarray, labels: CsrMatrix,
               grid: tuple[float, ...] = MIX_GRID) -> MixChoice:
    """The best of the members alone and each mix in ``grid`` on held-out points (see the module).

    Args:
      own: float32 [M, K], ``own_log_softmax``; mach: [M, K], the read-out's log-score of each
        shortlisted class (``readout.rerank.mach_log_score``).
      shortlist_ids: int32 [M, K], the read-out's best K, best first (L: empty).
      labels: [M, L], the points' true classes.
    """
    k = min(5, shortlist_ids.shape[1])
    members = precision(labels, shortlist_ids[:, :k], k)
    trials = {MEMBERS_ALONE: members}
    for mix in grid:
        trials[f"{mix:g}"] = precision(labels, mixed_ranking(own, mach, shortlist_ids, mix, k), k)
    best, best_total = None, _total(members)
    for mix in grid:
        if _total(trials[f"{mix:g}"]) > best_total:
            best, best_total = mix, _total(trials[f"{mix:g}"])
    as_lists = {name: [round(float(value[j - 1]), 6) for j in (1, 3, 5) if j <= k] for name, value in trials.items()}
    return MixChoice(best, as_lists, shortlist_ids.shape[0])


def _total(values: np.ndarray) -> float:
    """P@1 + P@3 + P@5 (those within k)."""
    return float(sum(values[j - 1] for j in (1, 3, 5) if j <= len(values)))
