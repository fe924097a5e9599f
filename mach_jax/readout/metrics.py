"""Extreme Classification Repository metrics as on-device sums: P@k, nDCG@k, PSP@k.

Definitions (Jain et al. 2016; the XC repository's ``xclib``):

- P@k = (1/k) * sum_{i<=k} rel_i (divides by k, not min(|y|, k)); a point with no labels is 0;
- nDCG@k = DCG@k / IDCG@k with DCG@k = sum_{i<=k} rel_i / log2(i + 1) and IDCG@k the DCG of a
  perfect ranking of min(|y|, k) labels; a point with no labels is 0;
- PSP@k = sum over points of (1/k) sum_{i<=k} rel_i / p_{l_i}, divided by the same sum for the
  best possible ranking (each point's labels ordered by 1/p), with propensity
  p_l = 1 / (1 + C (N_l + B)^-A), C = (ln N - 1) (B + 1)^A, N_l the training count of label l.

``metric_sums`` returns per-batch sums; the host adds them up and divides (``finalize``). A data set
with L < 5 classes has no P@5: the metrics are those of the k in KS with k <= L (``top_k``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KS = (1, 3, 5)


def top_k(num_labels: int) -> int:
    """How many classes an evaluation reads out: the largest k in KS, or all L when L is smaller."""
    return min(max(KS), num_labels)


def inverse_propensity(label_counts: np.ndarray, num_train_points: int, a: float = 0.55,
                       b: float = 1.5) -> np.ndarray:
    """1 / p_l for every label. Args: label_counts [L] training counts. Returns: float32 [L]."""
    c = (np.log(num_train_points) - 1.0) * (b + 1.0) ** a
    return (1.0 + c * (label_counts.astype(np.float64) + b) ** (-a)).astype(np.float32)


def metric_sums(topk_ids: jax.Array, label_ids: jax.Array, label_mask: jax.Array,
                point_mask: jax.Array, inv_propensity: jax.Array) -> dict[str, jax.Array]:
    """Sums of the metrics over one batch.

    Args:
      topk_ids: int32 [N, k] predicted classes, best first (k = ``top_k(L)``: the metrics are
        those of the k in KS up to it); id L marks an empty place (approximate decoding), a miss.
      label_ids: int32 [N, M] true labels, padded; label_mask float32 [N, M] marks the real ones.
      point_mask: float32 [N], 0 for padding points.
      inv_propensity: float32 [L], 1/p_l.

    Returns:
      Scalar sums: ``points``, ``P@k``, ``nDCG@k``, ``PSP@k`` and ``PSP@k_ideal`` for k in KS, k <= k_max.
    """
    k_max = min(max(KS), topk_ids.shape[1])
    topk_ids = topk_ids[:, :k_max]
    hits = (topk_ids[:, :, None] == label_ids[:, None, :]) & (label_mask[:, None, :] > 0)
    relevant = hits.any(-1).astype(jnp.float32) * point_mask[:, None]  # [N, k]
    num_labels = label_mask.sum(-1)
    discounts = 1.0 / jnp.log2(jnp.arange(k_max, dtype=jnp.float32) + 2.0)  # [k]
    # An empty place of approximate decoding holds id L: a miss, with no propensity of its own.
    gains = relevant * jnp.take(inv_propensity, topk_ids, mode="fill", fill_value=0.0)
    true_gains = jnp.where(label_mask > 0, jnp.take(inv_propensity, label_ids), 0.0)
    width = max(k_max, true_gains.shape[1])
    best_gains = -jnp.sort(-jnp.pad(true_gains, ((0, 0), (0, width - true_gains.shape[1]))), axis=1)
    best_gains = best_gains[:, :k_max] * point_mask[:, None]

    sums = {"points": point_mask.sum()}
    for k in (k for k in KS if k <= k_max):
        sums[f"P@{k}"] = relevant[:, :k].sum() / k
        dcg = (relevant[:, :k] * discounts[:k]).sum(-1)
        ideal_slots = jnp.arange(k)[None, :] < jnp.minimum(num_labels, k)[:, None]
        idcg = (ideal_slots * discounts[:k]).sum(-1)
        sums[f"nDCG@{k}"] = jnp.where(idcg > 0, dcg / jnp.maximum(idcg, 1e-12), 0.0).sum()
        sums[f"PSP@{k}"] = gains[:, :k].sum() / k
        sums[f"PSP@{k}_ideal"] = best_gains[:, :k].sum() / k
    return sums


def finalize(totals: dict[str, float]) -> dict[str, float]:
    """Host-side division of accumulated sums into the reported metrics (the k that were summed)."""
    points = max(float(totals["points"]), 1.0)
    metrics = {"num_points": int(totals["points"])}
    for k in (k for k in KS if f"P@{k}" in totals):
        metrics[f"P@{k}"] = float(totals[f"P@{k}"]) / points
        metrics[f"nDCG@{k}"] = float(totals[f"nDCG@{k}"]) / points
        ideal = float(totals[f"PSP@{k}_ideal"])
        metrics[f"PSP@{k}"] = float(totals[f"PSP@{k}"]) / ideal if ideal > 0 else 0.0
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """A heading, then one line per family in percent: 'P@1  64.53  P@3  38.56  P@5  27.94'.

    The heading names the split ("test metrics on ..." or "validation metrics on ...", from
    ``split``) and the read-out (members, aggregation, decoder, re-ranker); the lines hold the k
    the metrics have (no P@5 for L < 5).
    """
    split = metrics.get("split", "test")
    held_out = (f", {100 * metrics['valid_frac']:g}% of the training data held out with seed "
                f"{metrics['valid_seed']}") if split == "valid" and "valid_frac" in metrics else ""
    heading = (f"{'validation' if split == 'valid' else 'test'} metrics on {metrics['num_points']} points "
               f"({metrics.get(f'{split}_source', '?')}{held_out}), "
               f"{metrics['num_repetitions']} repetitions, {metrics['aggregation']} aggregation")
    if "decoder" in metrics:
        heading += f", {metrics['decoder']} decoder"
    if "reranker" in metrics:
        heading += (f", re-ranked (shortlist {metrics['reranker']['shortlist_size']}, "
                    f"mix {metrics['reranker']['mix']:g})")
    lines = [heading + ":"]
    ks = [k for k in KS if f"P@{k}" in metrics]
    for family in ("P", "nDCG", "PSP"):
        lines.append("  ".join(f"{family}@{k} {100 * metrics[f'{family}@{k}']:6.2f}" for k in ks))
    if "without_reranker" in metrics:
        lines.append("without the re-ranker: " + "  ".join(
            f"P@{k} {100 * metrics['without_reranker'][f'P@{k}']:6.2f}" for k in ks))
    return "\n".join(lines)
