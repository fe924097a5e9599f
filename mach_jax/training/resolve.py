"""A training run resolved once: the config validated and sized for the data, then the data
made ready, into one record every later stage reads (``ResolvedRun``).

``validated`` runs first (before any data is read), ``fitted_to_data`` once the data is loaded
(before the start-up memory check, which needs the sized config), ``prepare_run`` last;
``resolve_run`` does all three. Nothing downstream validates or sizes again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mach_jax.config import Config
from mach_jax.core import losses
from mach_jax.data.csr import XCDataset
from mach_jax.data.prepare import (RunInfo, check_enough_labels, feature_idf, label_counts, prepare_train_data,
                                   filled_from_data)
from mach_jax.storage import integrity, migration, workdir as wd


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """What a training run needs, fixed once per command.

    Attributes:
      config: validated, with what it left to the data filled in (B, the loss, PSP's A and B).
      train_data: the training points, features transformed and rows capped at K and M.
      info: what the data fixed (D, L, N, K, M, the feature entries): ``prepare.RunInfo``.
      label_counts: int64 [L], points per label before any cut (PSP@k's propensities).
      idf: float32 [D], the training features' idf, or None when no transform uses it.
      fingerprint: the training data's content digest (part of the run's identity).
    """

    config: Config
    train_data: XCDataset
    info: RunInfo
    label_counts: np.ndarray
    idf: np.ndarray | None
    fingerprint: str


def validated(config: Config) -> Config:
    """The config checked, once per command, before any data is read: its fields
    (``Config.validate``) and its loss's name (the loss registry's business, not the config's)."""
    config.validate()
    losses.require_known(config.train.loss)
    return config


def fitted_to_data(config: Config, train_data: XCDataset, workdir: str | Path | None = None) -> Config:
    """A ``validated`` config sized for ``train_data`` (``prepare.filled_from_data``) and, for a
    run in ``workdir``, with the choices its workdir recorded where it leaves them to "auto"
    (``migration.keep_recorded_choices``: a resumed run keeps its implementations)."""
    train_data.require_points("train on")
    check_enough_labels(train_data.num_labels)
    config = filled_from_data(config, train_data)
    if workdir is None:
        return config
    recorded = wd.recorded_config(wd.group_dir(Path(workdir), config.parallel.rep_range))
    return migration.keep_recorded_choices(config, recorded)


def prepare_run(config: Config, train_data: XCDataset) -> ResolvedRun:
    """The run of a config from ``fitted_to_data``: counts, idf, fingerprint, the data prepared."""
    counts = label_counts(train_data)  # before any --max-labels cut: PSP@k uses the true counts
    idf = feature_idf(config, train_data)
    fingerprint = integrity.data_fingerprint(train_data)
    prepared, info = prepare_train_data(config, train_data, idf)
    return ResolvedRun(config, prepared, info, counts, idf, fingerprint)


def resolve_run(config: Config, train_data: XCDataset, workdir: str | Path | None = None) -> ResolvedRun:
    """``validated``, ``fitted_to_data`` and ``prepare_run``: the whole resolution of a run."""
    return prepare_run(fitted_to_data(validated(config), train_data, workdir), train_data)
