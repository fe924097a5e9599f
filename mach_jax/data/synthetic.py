"""The embedded default dataset: deterministic, synthetic, extreme-classification shaped.

Real XC datasets cannot ship in the repo, so the default job trains on data generated here:
label frequencies follow a power law (a few head labels, a long tail), each point carries several
labels, and each label owns a random "signature" of features, part of which shows up in every
point that carries it, so the labels are learnable from the features; uniform noise features are
mixed in. Everything is drawn from one ``numpy`` generator seeded by ``SyntheticConfig.seed``.
"""

from __future__ import annotations

import numpy as np

from mach_jax.config import SyntheticConfig
from mach_jax.data.csr import CsrMatrix, XCDataset

_SIGNATURE_KEEP_PROB = 0.7


def _coo_to_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_rows: int,
                num_cols: int) -> CsrMatrix:
    """Sums duplicate (row, col) entries; columns come out sorted within each row."""
    keys = rows.astype(np.int64) * num_cols + cols
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse, weights=values, minlength=len(unique_keys)).astype(np.float32)
    unique_rows = unique_keys // num_cols
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(unique_rows, minlength=num_rows), out=indptr[1:])
    return CsrMatrix(indptr=indptr, indices=(unique_keys % num_cols).astype(np.int32),
                     values=summed, num_cols=num_cols)


def _split_rows(matrix: CsrMatrix, start: int, stop: int) -> CsrMatrix:
    return matrix.take(np.arange(start, stop))


def make_synthetic(config: SyntheticConfig) -> tuple[XCDataset, XCDataset]:
    """Generates the (train, test) pair described by ``config``.

    Args:
      config: sizes and shape of the distribution (L labels, D features, points, seed).

    Returns:
      ``(train, test)`` XCDatasets with ``num_train`` and ``num_test`` points, D features, L labels.
    """
    rng = np.random.default_rng(config.seed)
    num_labels, num_features = config.num_labels, config.num_features
    num_points = config.num_train + config.num_test

    # Zipf popularity over a random order of the label ids: label ids carry no frequency signal.
    rank_of_label = rng.permutation(num_labels)
    popularity = 1.0 / (rank_of_label + 1.0) ** config.label_zipf_exponent
    popularity /= popularity.sum()
    signatures = rng.integers(0, num_features, size=(num_labels, config.signature_features))
    signature_weights = rng.uniform(0.5, 1.5, size=(num_labels, config.signature_features))

    extra = rng.poisson(config.mean_labels_per_point - 1.0, size=num_points)
    labels_per_point = 1 + np.minimum(extra, 4 * int(np.ceil(config.mean_labels_per_point)))
    label_rows = np.repeat(np.arange(num_points), labels_per_point)
    label_ids = rng.choice(num_labels, size=len(label_rows), p=popularity)
    labels = _coo_to_csr(label_rows, label_ids, np.ones(len(label_rows)), num_points, num_labels)
    labels = CsrMatrix(labels.indptr, labels.indices, np.ones_like(labels.values), num_labels)

    pair_rows = np.repeat(np.arange(num_points), labels.row_nnz())
    signal_rows = np.repeat(pair_rows, config.signature_features)
    signal_cols = signatures[labels.indices].ravel()
    signal_values = signature_weights[labels.indices].ravel()
    kept = rng.random(len(signal_rows)) < _SIGNATURE_KEEP_PROB
    noise_rows = np.repeat(np.arange(num_points), config.noise_features)
    noise_cols = rng.integers(0, num_features, size=len(noise_rows))
    noise_values = rng.uniform(0.5, 1.5, size=len(noise_rows))
    features = _coo_to_csr(
        np.concatenate([signal_rows[kept], noise_rows]),
        np.concatenate([signal_cols[kept], noise_cols]),
        np.concatenate([signal_values[kept], noise_values]),
        num_points, num_features)

    source = (f"synthetic power-law data (L={num_labels}, D={num_features}, seed={config.seed})")
    split = config.num_train
    train = XCDataset(_split_rows(features, 0, split), _split_rows(labels, 0, split), source + " [train]")
    test = XCDataset(_split_rows(features, split, num_points), _split_rows(labels, split, num_points),
                     source + " [test]")
    return train, test
