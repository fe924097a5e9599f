"""The shortlist re-ranker: one exact scorer per class, applied to the count-min read-out's best K.

MACH sees a class only through R hashed buckets, so classes that share a bucket share its score.
The re-ranker gives every class c its own embedding E[c] (h numbers) and bias e[c], and scores a
candidate c of point x as

    s(x, c) = <q(x), E[c]> + e[c],      q(x) = sum_j x_j W[j] + b   (an embedding bag, h wide),

over the point's (transformed) features. It only ever scores a few classes per point: at
inference the K best of the read-out; in training the point's true classes against the hard
negatives its shortlist proposes plus S classes drawn uniformly, shared by the batch (a sampled
softmax over those candidates). ``readout.rerank`` mixes its log-softmax with the read-out's own
log-score.

Parameters (``RerankParams``): W [D, h], b [h], E [Lp, h], e [Lp], with Lp = L + 1 rounded up to
a multiple of ``CLASS_ROW_MULTIPLE``: row L is the padding class id (an empty shortlist slot),
and the class rows split evenly over up to that many devices. Memory O((D + L) * h) beside the
members' O(R * (D * H + H * B)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

RerankParams = dict[str, jax.Array]

CLASS_ROW_MULTIPLE = 64


def padded_num_classes(num_labels: int) -> int:
    """Lp: L + 1 rounded up to a multiple of ``CLASS_ROW_MULTIPLE``."""
    return -(-(num_labels + 1) // CLASS_ROW_MULTIPLE) * CLASS_ROW_MULTIPLE


def class_row_sharding(mesh) -> NamedSharding:
    """Where arrays of class rows ([Lp, ...]: E, e and their Adam moments) live on ``mesh``: split
    over all its devices when their number divides ``CLASS_ROW_MULTIPLE`` (so Lp splits evenly),
    else replicated. Training and read-out lay the rows out the same way."""
    devices = mesh.devices.size
    if devices == 1 or CLASS_ROW_MULTIPLE % devices:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def init_params(key: jax.Array, num_features: int, num_labels: int, dim: int) -> RerankParams:
    """Small random W and E (normal, std 0.01), zero biases. Returns the ``RerankParams``."""
    feature_key, class_key = jax.random.split(key)
    num_rows = padded_num_classes(num_labels)
    return {"feature_emb": 0.01 * jax.random.normal(feature_key, (num_features, dim), jnp.float32),
            "query_bias": jnp.zeros((dim,), jnp.float32),
            "class_emb": 0.01 * jax.random.normal(class_key, (num_rows, dim), jnp.float32),
            "class_bias": jnp.zeros((num_rows,), jnp.float32)}


def query(params: RerankParams, feat_ids: jax.Array, feat_vals: jax.Array, dropout: float = 0.0,
          key: jax.Array | None = None) -> jax.Array:
    """q(x). Args: feat_ids int32 [N, K_nnz], feat_vals [N, K_nnz] (0 in padding slots); with
    ``key``, inverted dropout of rate ``dropout`` on q. Returns: [N, h]."""
    bag = jnp.einsum("nk,nkh->nh", feat_vals, jnp.take(params["feature_emb"], feat_ids, axis=0))
    q = bag + params["query_bias"]
    if key is not None and dropout > 0:
        q = jnp.where(jax.random.bernoulli(key, 1.0 - dropout, q.shape), q / (1.0 - dropout), 0.0)
    return q


def candidate_scores(params: RerankParams, q: jax.Array, candidates: jax.Array) -> jax.Array:
    """s(x, c) for each point's own candidates. Args: q [N, h]; candidates int32 [N, C] (values
    in [0, Lp)). Returns: [N, C]."""
    class_emb = jnp.take(params["class_emb"], candidates, axis=0)  # [N, C, h]
    return jnp.einsum("nh,nch->nc", q, class_emb) + jnp.take(params["class_bias"], candidates)


def shared_scores(params: RerankParams, q: jax.Array, classes: jax.Array) -> jax.Array:
    """s(x, c) for classes shared by the batch. Args: q [N, h]; classes int32 [S]. Returns: [N, S]."""
    return q @ jnp.take(params["class_emb"], classes, axis=0).T + jnp.take(params["class_bias"], classes)


def training_candidates(shortlist: jax.Array, label_ids: jax.Array, label_mask: jax.Array,
                        num_labels: int) -> tuple[jax.Array, jax.Array]:
    """Each point's shortlist plus its true classes that the shortlist missed.

    Args:
      shortlist: int32 [N, K], the read-out's best K (id L: empty slot).
      label_ids: int32 [N, P]; label_mask: [N, P], 1 where a true class is.
      num_labels: L.

    Returns:
      ``(candidates, is_true)``: int32 [N, K + P] (L where empty; a class at most once, as a
      point's labels are distinct) and bool [N, K + P].
    """
    positives = jnp.where(label_mask > 0, label_ids, num_labels)  # [N, P]
    listed = (positives[:, :, None] == shortlist[:, None, :]).any(-1)
    candidates = jnp.concatenate([shortlist, jnp.where(listed, num_labels, positives)], axis=1)
    is_true = (candidates[:, :, None] == positives[:, None, :]).any(-1) & (candidates < num_labels)
    return candidates, is_true


def sampled_softmax_loss(params: RerankParams, batch: dict[str, jax.Array], key: jax.Array, *,
                         num_labels: int, num_negatives: int, dropout: float,
                         rows: dict[str, jax.Array] | None = None) -> jax.Array:
    """Mean over the batch's real points of the cross-entropy of a softmax over the candidates,
    whose target spreads evenly over the point's true classes.

    Args:
      params: ``RerankParams``, or (with ``rows``) a view of them: ``feature_emb`` [U_f, h] and
        ``class_emb`` [U_c, h], ``class_bias`` [U_c] gathered at ``rows["feature"]`` and
        ``rows["class"]`` (sorted ids; ``core.reranker_lazy``).
      batch: ``feat_ids``, ``feat_vals`` [N, K_nnz]; ``label_ids``, ``label_mask`` [N, P];
        ``shortlist`` int32 [N, K]; ``point_mask`` [N] (0: padding point).
      key: the step's key (negatives and dropout).
      num_labels: L; num_negatives: S, uniform classes shared by the batch (a true class of a
        point is never its negative; a negative may repeat a shortlist class or another draw,
        and then counts twice in the softmax's denominator); dropout: on q.

    Returns:
      The loss, a scalar (0 for a batch with no labelled point).
    """
    negative_key, dropout_key = jax.random.split(key)
    at = (lambda ids, name: ids) if rows is None else (
        lambda ids, name: jnp.searchsorted(rows[name], ids).astype(jnp.int32))
    q = query(params, at(batch["feat_ids"], "feature"), batch["feat_vals"], dropout, dropout_key)
    candidates, is_true = training_candidates(batch["shortlist"], batch["label_ids"], batch["label_mask"],
                                              num_labels)
    scores = jnp.where(candidates < num_labels, candidate_scores(params, q, at(candidates, "class")), -jnp.inf)
    if num_negatives:
        negatives = draw_negatives(negative_key, num_negatives, num_labels)
        positives = jnp.where(batch["label_mask"] > 0, batch["label_ids"], num_labels)
        clash = (negatives[None, :, None] == positives[:, None, :]).any(-1)  # [N, S]
        shared = shared_scores(params, q, at(negatives, "class"))
        scores = jnp.concatenate([scores, jnp.where(clash, -jnp.inf, shared)], 1)
        is_true = jnp.concatenate([is_true, jnp.zeros(clash.shape, bool)], axis=1)
    num_true = is_true.sum(axis=1)
    scores = jnp.where(jnp.isfinite(scores).any(axis=1, keepdims=True), scores, 0.0)  # no candidate: no NaN
    log_probs = jax.nn.log_softmax(scores, axis=1)
    per_point = -jnp.where(is_true, log_probs, 0.0).sum(axis=1) / jnp.maximum(num_true, 1)
    counted = batch["point_mask"] * (num_true > 0)
    return (per_point * counted).sum() / jnp.maximum(counted.sum(), 1.0)


def draw_negatives(key: jax.Array, num_negatives: int, num_labels: int) -> jax.Array:
    """The S uniform negatives a batch shares: int32 [S] in [0, L) (the key: the loss's first split)."""
    return jax.random.randint(key, (num_negatives,), 0, num_labels)
