"""Training data made ready once: row widths capped, and what the data fixed (``RunInfo``).

``RunInfo`` (D, L, N, the padded widths K and M) is stored in the workdir beside the config, so
that evaluation and prediction need nothing but the workdir.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from mach_jax.config import Config, sizing
from mach_jax.data import batches, known_datasets, transforms
from mach_jax.data.csr import XCDataset
from mach_jax.errors import ConfigError

log = logging.getLogger("mach_jax")

# Evaluations report P@1, P@3 and P@5, those k <= L (``readout.metrics.top_k``): one class is enough.
MIN_LABELS = 1


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the training data fixed: D, L, N_train, the padded batch widths K and M, and the
    training features' nonzero entries (within K; 0 in a run of workdir format 1, whose choices
    that use them are pinned in its config by ``storage.migration``)."""

    num_features: int
    num_labels: int
    num_train_points: int
    max_nnz: int
    max_labels: int
    train_source: str
    feature_entries: int = 0

    @property
    def mean_nnz(self) -> float | None:
        """The mean training row's nonzero features, or None where not recorded."""
        if not self.feature_entries or not self.num_train_points:
            return None
        return self.feature_entries / self.num_train_points


def check_enough_labels(num_labels: int) -> None:
    """Data with no class to predict is refused before anything is trained or compiled."""
    if num_labels < MIN_LABELS:
        raise ConfigError(f"the data has L={num_labels} labels (its header's third number): there is "
                          f"nothing to classify; MACH needs at least {MIN_LABELS} label")


def label_counts(dataset: XCDataset) -> np.ndarray:
    """How many points carry each label: int64 [L]."""
    return np.bincount(dataset.labels.indices, minlength=dataset.num_labels)


def feature_idf(config: Config, train: XCDataset) -> np.ndarray | None:
    """The training features' idf, float32 [D], when ``data.input_transform`` uses it, else None."""
    if not transforms.uses_idf(config.data.input_transform):
        return None
    return transforms.fit_idf(train.features)


def prepare_train_data(config: Config, train: XCDataset,
                       idf: np.ndarray | None = None) -> tuple[XCDataset, RunInfo]:
    """Transforms the feature values (``data.input_transform``, with the training ``idf`` from
    ``feature_idf``), caps row widths (K features, M labels) once and records what the data fixed."""
    data = config.data
    if idf is None:
        idf = feature_idf(config, train)
    features = transforms.apply(train.features, data.input_transform, idf)
    max_nnz = data.max_nnz or max(batches.widest_row(features), 1)
    max_labels = data.max_labels or max(batches.widest_row(train.labels), 1)
    features = batches.cap_row_width(features, max_nnz, data.overflow, keep_largest=True,
                                     source=train.source, what="features")
    labels = batches.cap_row_width(train.labels, max_labels, data.overflow, keep_largest=False,
                                   source=train.source, what="labels")
    info = RunInfo(num_features=train.num_features, num_labels=train.num_labels,
                   num_train_points=train.num_points, max_nnz=max_nnz, max_labels=max_labels,
                   train_source=train.source, feature_entries=int(features.indptr[-1] - features.indptr[0]))
    return XCDataset(features, labels, train.source), info


def with_propensity(config: Config, train: XCDataset) -> Config:
    """The config with PSP@k's A, B left to the data (None) set to the training data's convention
    (``data.known_datasets``), logged; unchanged when both are given."""
    evaluation = config.eval
    if evaluation.propensity_a is not None and evaluation.propensity_b is not None:
        return config
    a, b, source = known_datasets.propensity_for(config.data.train_path, train.num_features, train.num_labels)
    a = a if evaluation.propensity_a is None else evaluation.propensity_a
    b = b if evaluation.propensity_b is None else evaluation.propensity_b
    log.info(f"PSP@k propensities: A={a:g}, B={b:g} ({source}; --propensity-a/--propensity-b to change)")
    return config.replace(eval={"propensity_a": a, "propensity_b": b})


def filled_from_data(config: Config, train: XCDataset) -> Config:
    """The config with what it leaves to the data filled in: PSP@k's A, B (``with_propensity``),
    and ``model.num_buckets`` 0 and ``train.loss`` "auto" by ``config.sizing``, the choices logged;
    unchanged when it leaves nothing."""
    config = with_propensity(config, train)
    if not sizing.needs_sizing(config):
        return config
    shape = sizing.DataShape(train.num_labels, train.num_points,
                             train.labels.values.size / max(train.num_points, 1), train.num_features)
    config, lines = sizing.size_from_data(config, shape)
    for line in lines:
        log.info(line)
    return config
