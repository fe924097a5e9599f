"""The XC metrics as functions (``readout.xc_metrics``) against slow numpy references, the
on-device sums (``readout.metrics``) on the same predictions, and scipy round trips of the data
(``CsrMatrix.from_scipy``, ``read_xc(as_scipy=True)``, ``write_xc`` of scipy matrices)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from mach_jax.data.csr import CsrMatrix, XCDataset  # noqa: E402
from mach_jax.data.in_memory import as_features, as_labels  # noqa: E402
from mach_jax.data.xc_format import read_xc, write_xc  # noqa: E402
from mach_jax.readout import metrics, xc_metrics  # noqa: E402


def random_case(seed, n=40, num_labels=12, k=5):
    rng = np.random.default_rng(seed)
    lists = [sorted(rng.choice(num_labels, rng.integers(0, 5), replace=False).tolist()) for _ in range(n)]
    ids = np.stack([rng.permutation(num_labels)[:k] for _ in range(n)]).astype(np.int32)
    ids[0, -1] = num_labels  # an empty place of approximate decoding: a miss
    return lists, ids


def reference(lists, ids, inv_psp, k):
    """Point by point, straight from the definitions."""
    p, n, psp, best = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    for true, top in zip(lists, ids):
        true = set(true)
        for j in range(1, k + 1):
            rel = [int(c) in true for c in top[:j]]
            p[j - 1] += sum(rel) / j
            if true:
                dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
                idcg = sum(1 / math.log2(i + 2) for i in range(min(len(true), j)))
                n[j - 1] += dcg / idcg
            psp[j - 1] += sum(inv_psp[c] for c, r in zip(top[:j], rel) if r) / j
            best[j - 1] += sum(sorted((inv_psp[c] for c in true), reverse=True)[:j]) / j
    return p / len(lists), n / len(lists), psp / best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_the_reference(seed):
    lists, ids = random_case(seed)
    train = [sorted(np.random.default_rng(seed + 10).choice(12, 3, replace=False).tolist()) for _ in range(30)]
    inv_psp = xc_metrics.inv_propensity(train, 0.55, 1.5, num_labels=12)
    counts = np.bincount(np.concatenate(train), minlength=12)
    c = (math.log(30) - 1) * 2.5 ** 0.55
    np.testing.assert_allclose(inv_psp, [1 + c * (n + 1.5) ** -0.55 for n in counts], rtol=1e-6)
    indicator = sp.csr_matrix(as_labels(lists, len(lists), 12).to_dense())
    want = reference(lists, ids, inv_psp, 5)
    for labels in (lists, indicator, indicator.toarray(), indicator.tocoo()):
        np.testing.assert_allclose(xc_metrics.precision(labels, ids, 5), want[0], rtol=1e-12)
        np.testing.assert_allclose(xc_metrics.ndcg(labels, ids, 5), want[1], rtol=1e-12)
        np.testing.assert_allclose(xc_metrics.psprecision(labels, ids, inv_psp, 5), want[2], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_the_reference(seed):
    lists, ids = random_case(seed)
    want = np.zeros(5)
    for true, top in zip(lists, ids):  # straight from the definition; no labels: 0
        for j in range(1, 6):
            want[j - 1] += len(set(true) & {int(c) for c in top[:j]}) / len(true) if true else 0.0
    np.testing.assert_allclose(xc_metrics.recall(lists, ids, 5), want / len(lists), rtol=1e-12)


def test_functions_agree_with_the_on_device_sums():
    lists, ids = random_case(3)
    labels = as_labels(lists, len(lists), 12)
    width = int(labels.row_nnz().max())
    label_ids = np.zeros((len(lists), width), np.int32)
    mask = np.zeros((len(lists), width), np.float32)
    for i, row in enumerate(lists):
        label_ids[i, :len(row)], mask[i, :len(row)] = row, 1
    inv_psp = np.linspace(1.0, 3.0, 12).astype(np.float32)
    found = metrics.finalize(metrics.metric_sums(jnp.asarray(ids), jnp.asarray(label_ids), jnp.asarray(mask),
                                                 jnp.ones(len(lists)), jnp.asarray(inv_psp)))
    for k in (1, 3, 5):
        assert found[f"P@{k}"] == pytest.approx(xc_metrics.precision(lists, ids, 5)[k - 1], abs=1e-6)
        assert found[f"nDCG@{k}"] == pytest.approx(xc_metrics.ndcg(lists, ids, 5)[k - 1], abs=1e-6)
        assert found[f"PSP@{k}"] == pytest.approx(xc_metrics.psprecision(lists, ids, inv_psp, 5)[k - 1], abs=1e-6)


def test_bad_arguments_are_named():
    lists, ids = random_case(0)
    with pytest.raises(ValueError, match="k=6"):
        xc_metrics.precision(lists, ids, 6)
    with pytest.raises(ValueError, match="has 39 rows"):
        xc_metrics.precision(lists[:-1], ids, 5)
    with pytest.raises(ValueError, match="negative"):
        xc_metrics.precision([[0, -1]] + lists[1:], ids, 5)


def test_scipy_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((30, 20)) < 0.2, rng.random((30, 20)), 0).astype(np.float32)
    labels = (rng.random((30, 7)) < 0.3).astype(np.float32)
    for kind in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array):
        matrix = CsrMatrix.from_scipy(kind(dense))
        np.testing.assert_array_equal(matrix.to_dense(), dense)
        assert matrix == as_features(dense) == as_features(kind(dense))
        np.testing.assert_array_equal(matrix.to_scipy().toarray(), dense)
    dataset = XCDataset.from_scipy(sp.csr_matrix(dense), sp.csr_matrix(labels))
    write_xc(tmp_path / "a.txt", sp.csr_matrix(dense), sp.csr_matrix(labels))
    assert read_xc(tmp_path / "a.txt", use_cache=False) == dataset
    features, got = read_xc(tmp_path / "a.txt", use_cache=False, as_scipy=True)
    assert sp.issparse(features) and (features != sp.csr_matrix(dense)).nnz == 0
    assert (got != sp.csr_matrix(labels)).nnz == 0
    # Within a row the stored order is kept (a file's order), duplicates add up.
    unsorted = sp.csr_matrix((np.array([1.0, 2.0], np.float32), np.array([3, 1]), np.array([0, 2])), shape=(1, 4))
    assert CsrMatrix.from_scipy(unsorted).indices.tolist() == [3, 1]
    doubled = sp.coo_matrix((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([2, 2]))), shape=(1, 4))
    assert CsrMatrix.from_scipy(doubled).values.tolist() == [3.0]


@pytest.mark.parametrize("bad, message", [
    (np.array([[1.0, np.nan]]), "NaN or infinite"),
    (np.zeros(3), "2-D"),
    ("text", "expected a scipy.sparse"),
])
def test_bad_features_are_named(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_features(bad)


@pytest.mark.parametrize("bad, message", [
    ([[0], [1, 1]], "appears twice"),
    ([[0], [-2]], "negative"),
    ([[0], [9]], r"outside \[0, 5\)"),
    ([[0]], "has 1 rows but X has 2"),
    (np.array([[0, 2], [1, 0]]), "only 0 and 1"),
    ([[0], ["a"]], "integer label ids"),
])
def test_bad_labels_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        as_labels(bad, 2, 5)
