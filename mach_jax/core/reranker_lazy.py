"""Row-sparse ("lazy") Adam for the re-ranker: a step updates only the rows it touches.

Dense Adam reads and writes all (D + Lp) x h weights of the re-ranker (``core.reranker``) and
both their moments every step. A step touches far fewer: the feature rows of its points (at most
N x K_nnz) and the class rows of its candidates and negatives (at most N x (K + P) + S). This step
gathers those rows, differentiates the sampled-softmax loss through them alone, and scatters the
rows and their moments back with ``core.sparse_update.lazy_adam`` (a row's moments decay only
on the steps that touch it; the bias correction uses the global step). ``query_bias`` (h numbers)
is one row that every step touches: the same step is dense Adam on it.

State (``init_moments``): ``count`` (steps done), and per parameter its two moments side by
side: ``feature_emb`` [D, 2, h], ``class_emb`` [Lp, 2, h], ``class_bias`` [Lp, 2, 1],
``query_bias`` [2, h]. Class rows lead their arrays, so they split over the devices as the
class rows themselves do (``reranker.class_row_sharding``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mach_jax.core import reranker, sparse_update

Moments = dict[str, jax.Array]

# "auto" picks the lazy step where a step touches at most this share of the D + Lp rows: at 20 %
# (below) the two took about the same time, so it needs fewer to pay for its gathers and sorts.
LAZY_TOUCHED_SHARE = 0.1


def touched_share(num_features: int, num_labels: int, mean_nnz: float, mean_labels: float, batch_size: int,
                  shortlist_size: int, num_negatives: int) -> float:
    """At most how much of the D + Lp rows one step touches: its points' mean feature rows and
    their candidates (K, their true classes) plus S negatives, over D + Lp. citeulike-users
    (D = 20,000, L = 7,947, K = 100): 1.17, every class row every step, and the lazy epochs took
    twice dense Adam's time; the synthetic L = 10^5 set (D = 10^5): 0.20, an epoch in 29 s
    against dense Adam's 33 s (docs/large_labels.md). At L = 10^6 it is under 0.04."""
    touched = batch_size * (mean_nnz + shortlist_size + mean_labels) + num_negatives
    return touched / (num_features + reranker.padded_num_classes(num_labels))


def resolve_update(update: str, share: float) -> str:
    """``rerank.rerank_update`` resolved: "auto" is "lazy" where ``touched_share`` is at most
    ``LAZY_TOUCHED_SHARE``, else "dense"."""
    if update != "auto":
        return update
    return "lazy" if share <= LAZY_TOUCHED_SHARE else "dense"


def init_moments(params: reranker.RerankParams) -> Moments:
    """Zero moments for ``params`` (see the module for the shapes) and a zero step count."""
    def side_by_side(leaf: jax.Array) -> jax.Array:
        shape = leaf.shape if leaf.ndim == 2 else (*leaf.shape, 1)
        return jnp.zeros((shape[0], 2, shape[1]), jnp.float32)

    moments = {name: side_by_side(params[name]) for name in ("feature_emb", "class_emb", "class_bias")}
    return {**moments, "query_bias": jnp.zeros((2, params["query_bias"].shape[0]), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}


def touched_class_rows(batch: dict[str, jax.Array], negatives: jax.Array, num_labels: int,
                       num_rows: int) -> jax.Array:
    """The distinct class rows a step reads: its candidates (shortlists and true classes, the
    padding class L among them) and negatives. int32 [N * (K + P) + S], sorted, padded with
    ``num_rows`` (Lp: read as zeros, never written)."""
    candidates, _ = reranker.training_candidates(batch["shortlist"], batch["label_ids"], batch["label_mask"],
                                                 num_labels)
    ids = jnp.concatenate([candidates.ravel(), negatives])
    return jnp.unique(ids, size=ids.size, fill_value=num_rows).astype(jnp.int32)


def lazy_step(params: reranker.RerankParams, moments: Moments, batch: dict[str, jax.Array], key: jax.Array, *,
              learning_rate: float, num_labels: int, num_negatives: int,
              dropout: float) -> tuple[reranker.RerankParams, Moments, jax.Array]:
    """One lazy Adam step of ``reranker.sampled_softmax_loss`` (the same loss, the same draws).

    Returns:
      ``(params, moments, loss)``: the touched rows updated, the loss a scalar.
    """
    num_features, num_rows = params["feature_emb"].shape[0], params["class_emb"].shape[0]
    feature_rows, _ = sparse_update.touched_rows(batch["feat_ids"], batch["feat_vals"], num_features)
    negatives = reranker.draw_negatives(jax.random.split(key)[0], num_negatives, num_labels) if num_negatives \
        else jnp.zeros((0,), jnp.int32)
    rows = {"feature": feature_rows, "class": touched_class_rows(batch, negatives, num_labels, num_rows)}
    gathered = {"feature_emb": _gather(params["feature_emb"], rows["feature"]),
                "class_emb": _gather(params["class_emb"], rows["class"]),
                "class_bias": _gather(params["class_bias"], rows["class"]),
                "query_bias": params["query_bias"]}
    loss, grads = jax.value_and_grad(reranker.sampled_softmax_loss)(
        gathered, batch, key, num_labels=num_labels, num_negatives=num_negatives, dropout=dropout, rows=rows)
    count = moments["count"] + 1
    new_params, new_moments = {}, {"count": count}
    for name, row_key in (("feature_emb", "feature"), ("class_emb", "class"), ("class_bias", "class")):
        new_params[name], new_moments[name] = _rows_step(params[name], moments[name], rows[row_key], grads[name],
                                                         count, learning_rate)
    # query_bias [h]: one row, touched every step (lazy Adam on it is dense Adam).
    bias, bias_moments = _rows_step(params["query_bias"][None], moments["query_bias"][None],
                                    jnp.zeros((1,), jnp.int32), grads["query_bias"][None], count, learning_rate)
    new_params["query_bias"], new_moments["query_bias"] = bias[0], bias_moments[0]
    return new_params, new_moments, loss


def _gather(table: jax.Array, rows: jax.Array) -> jax.Array:
    """``table[rows]``, zeros at the sentinel rows (past the table's end)."""
    return table.at[rows].get(mode="fill", fill_value=0)


def _rows_step(table: jax.Array, moments: jax.Array, rows: jax.Array, grads: jax.Array, count: jax.Array,
               learning_rate: float) -> tuple[jax.Array, jax.Array]:
    """``sparse_update.lazy_adam`` on one table, as a one-member stack ([D, h] or a bias [D])."""
    wide = table if table.ndim == 2 else table[:, None]
    new_table, new_moments = sparse_update.lazy_adam(
        wide[None], moments[None], rows, (grads if grads.ndim == 2 else grads[:, None])[None], count,
        learning_rate, batched=True)
    return new_table[0].reshape(table.shape), new_moments[0]
