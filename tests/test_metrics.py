"""On-device metric sums against brute-force numpy implementations of the XC definitions."""

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.readout import metrics

# As the read-out runs it: compiled once per shape (jax.jit), rather than op by op.
metric_sums = jax.jit(metrics.metric_sums)


def brute_force(topk, label_sets, inv_p):
    """Per-point loops, straight from the definitions (P@k divides by k)."""
    out = {}
    for k in metrics.KS:
        precision, ndcg, psp, psp_ideal = [], [], 0.0, 0.0
        for preds, labels in zip(topk, label_sets):
            rel = [1.0 if p in labels else 0.0 for p in preds[:k]]
            precision.append(sum(rel) / k)
            dcg = sum(r / np.log2(i + 2) for i, r in enumerate(rel))
            idcg = sum(1 / np.log2(i + 2) for i in range(min(len(labels), k)))
            ndcg.append(dcg / idcg if labels else 0.0)
            psp += sum(r * inv_p[p] for r, p in zip(rel, preds[:k])) / k
            psp_ideal += sum(sorted((inv_p[l] for l in labels), reverse=True)[:k]) / k
        out[f"P@{k}"] = np.mean(precision)
        out[f"nDCG@{k}"] = np.mean(ndcg)
        out[f"PSP@{k}"] = psp / psp_ideal
    return out


def test_metric_sums_match_brute_force():
    rng = np.random.default_rng(0)
    num_points, num_labels, width = 40, 30, 7
    label_sets = [sorted(rng.choice(num_labels, size=rng.integers(0, width + 1), replace=False).tolist())
                  for _ in range(num_points)]
    topk = np.stack([rng.choice(num_labels, size=5, replace=False) for _ in range(num_points)])
    label_ids = np.zeros((num_points + 3, width), np.int32)  # 3 padding points at the end
    label_mask = np.zeros((num_points + 3, width), np.float32)
    for i, labels in enumerate(label_sets):
        label_ids[i, :len(labels)] = labels
        label_mask[i, :len(labels)] = 1
    point_mask = np.r_[np.ones(num_points), np.zeros(3)].astype(np.float32)
    padded_topk = np.concatenate([topk, np.zeros((3, 5), topk.dtype)]).astype(np.int32)
    counts = rng.integers(0, 50, size=num_labels)
    inv_p = metrics.inverse_propensity(counts, 1000)

    sums = metric_sums(jnp.asarray(padded_topk), jnp.asarray(label_ids), jnp.asarray(label_mask),
                       jnp.asarray(point_mask), jnp.asarray(inv_p))
    ours = metrics.finalize({key: float(value) for key, value in sums.items()})
    expected = brute_force(topk, label_sets, inv_p)
    assert ours["num_points"] == num_points
    for key, value in expected.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, err_msg=key)


def test_empty_places_marked_l_count_as_misses():
    """Approximate decoding fills the places it has no candidate for with id L."""
    num_labels = 6
    topk = np.array([[2, 4, num_labels, num_labels, num_labels], [1, 3, 0, 5, num_labels]], np.int32)
    label_sets = [[2, 5], [3]]
    label_ids = np.array([[2, 5], [3, 0]], np.int32)
    label_mask = np.array([[1, 1], [1, 0]], np.float32)
    inv_p = metrics.inverse_propensity(np.arange(1, num_labels + 1), 100)
    sums = metric_sums(jnp.asarray(topk), jnp.asarray(label_ids), jnp.asarray(label_mask),
                       jnp.ones(2, jnp.float32), jnp.asarray(inv_p))
    ours = metrics.finalize({key: float(value) for key, value in sums.items()})
    padded_p = np.r_[inv_p, 0.0]  # the reference reads id L as a class nobody has
    expected = brute_force(topk.tolist(), label_sets, padded_p)
    for key, value in expected.items():
        assert np.isfinite(ours[key]), key
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, err_msg=key)


def test_perfect_ranking_scores_one():
    label_ids = jnp.asarray([[3, 1, 0, 0, 0, 0], [2, 4, 5, 6, 7, 8]], jnp.int32)
    label_mask = jnp.asarray([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.float32)
    inv_p = jnp.ones(10)
    topk = jnp.asarray([[1, 3, 9, 8, 7], [2, 4, 5, 6, 7]], jnp.int32)
    result = metrics.finalize(metric_sums(topk, label_ids, label_mask, jnp.ones(2), inv_p))
    assert result["P@1"] == 1.0 and result["nDCG@5"] == 1.0 and result["PSP@1"] == 1.0
    np.testing.assert_allclose(result["P@5"], (2 / 5 + 1) / 2)


def test_inverse_propensity_formula():
    counts = np.array([0, 1, 10, 1000])
    n, a, b = 5000, 0.55, 1.5
    c = (np.log(n) - 1) * (b + 1) ** a
    expected = 1 + c * np.exp(-a * np.log(counts + b))
    np.testing.assert_allclose(metrics.inverse_propensity(counts, n, a, b), expected, rtol=1e-6)
