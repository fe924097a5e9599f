"""Where a run's data comes from: files, a TFDS source or the synthetic set, by scheme; the
validation split; the evaluation data of a trained run.

``load_datasets(config)`` looks the source up in ``SOURCES`` (one entry per scheme) and returns
the (train, test) pair; ``load_train_eval`` carves the validation split out of the training data
when ``valid_frac`` > 0, so settings are chosen without the test split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from mach_jax.config import DataConfig
from mach_jax.data.csr import XCDataset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.files import MAX_LINE_BYTES
from mach_jax.data.xc_format import read_xc
from mach_jax.errors import ConfigError, DataFormatError

log = logging.getLogger("mach_jax")

_VALID_STREAM = 0x76616C69  # "vali": seeds the validation split's permutation apart from epoch_order


def read_data_file(path: str, cache_dir: str | None = None, progress: bool = False,
                   max_line_bytes: int = MAX_LINE_BYTES) -> XCDataset:
    """``read_xc`` with a progress bar over the file's bytes (it moves once, when parsed)."""
    size = Path(path).stat().st_size if Path(path).is_file() else None
    with tqdm(total=size, disable=not progress, desc=f"read {Path(path).name}", unit="B",
              unit_scale=True, unit_divisor=1024, leave=False) as bar:
        dataset = read_xc(path, cache_dir=cache_dir, max_line_bytes=max_line_bytes)
        bar.update(size or 0)
    return dataset


def source_scheme(config: DataConfig) -> str:
    """Which kind of source the data config names: "tfds" (``dataset="tfds:NAME"``), "files"
    (``--train``/``--test``) or "synthetic" (neither)."""
    if config.dataset is not None:
        return config.dataset.partition(":")[0]
    return "synthetic" if config.train_path is None else "files"


def load_datasets(config: DataConfig, progress: bool = False) -> tuple[XCDataset, XCDataset | None]:
    """The (train, test) pair of the configured source (``SOURCES``, by ``source_scheme``); test
    is None for a training file given alone."""
    train, test = SOURCES[source_scheme(config)](config, progress)
    if source_scheme(config) == "synthetic":
        log.info("data: %s (synthetic, generated in code; pass --train/--test for real files)",
                 train.source.removesuffix(" [train]"))
    else:
        log_data(train, test)
    return train, test


def log_data(train: XCDataset, test: XCDataset | None) -> None:
    """The ``data:`` start-up line: the sources, their points, D and L."""
    tested = "" if test is None else f" and {test.source} ({test.num_points} points)"
    log.info("data: %s (%d points)%s, D=%d, L=%d", train.source, train.num_points, tested,
             train.num_features, train.num_labels)


def _load_tfds(config: DataConfig, progress: bool) -> tuple[XCDataset, XCDataset]:
    from mach_jax.data.tfds import load_tfds, parse_data_spec  # optional: needs tensorflow-datasets

    name = parse_data_spec(config.dataset)
    train, test = (load_tfds(name, config.tfds_data_dir, split=split) for split in ("train", "test"))
    return train, test


def _load_synthetic(config: DataConfig, progress: bool) -> tuple[XCDataset, XCDataset]:
    return make_synthetic(config.synthetic)


def _load_files(config: DataConfig, progress: bool) -> tuple[XCDataset, XCDataset | None]:
    train = read_data_file(config.train_path, config.cache_dir, progress, config.max_line_bytes)
    if config.test_path is None:
        return train, None
    test = read_data_file(config.test_path, config.cache_dir, progress, config.max_line_bytes)
    check_same_shape(train, test)
    return train, test


def check_same_shape(train: XCDataset, test: XCDataset) -> None:
    """The test data has the training data's D and L (else: a DataFormatError naming its header)."""
    for name, train_size, test_size in (("features D", train.num_features, test.num_features),
                                        ("labels L", train.num_labels, test.num_labels)):
        if train_size != test_size:
            raise DataFormatError(test.source, 1, f"header gives {name} = {test_size}, but the "
                                  f"training file {train.source} gives {train_size}")


# Every data source, by scheme: (data config, progress) -> (train, test).
SOURCES: dict[str, Callable[[DataConfig, bool], tuple[XCDataset, XCDataset]]] = {
    "tfds": _load_tfds, "synthetic": _load_synthetic, "files": _load_files}


def validation_split(num_points: int, valid_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which training points are held out for validation: a permutation seeded by ``seed``.

    ``round(valid_frac * N)`` points (at least one when ``valid_frac`` > 0) go to validation.

    Returns:
      ``(train_rows, valid_rows)``: int64 ids, each sorted (file order), disjoint, together 0..N-1.
    """
    if valid_frac <= 0:
        return np.arange(num_points, dtype=np.int64), np.zeros(0, np.int64)
    num_valid = max(1, int(np.floor(valid_frac * num_points + 0.5)))
    if num_valid >= num_points:
        raise ConfigError(f"data.valid_frac={valid_frac!r}: holds out {num_valid} of the {num_points} "
                          "training points, leaving none to train on", field="data.valid_frac")
    # Its own stream: epoch_order draws from (seed, epoch), which must not correlate with the split.
    order = np.random.default_rng([_VALID_STREAM, seed]).permutation(num_points)
    return np.sort(order[num_valid:]), np.sort(order[:num_valid])


def split_validation(config: DataConfig, train: XCDataset) -> tuple[XCDataset, XCDataset]:
    """``(training part, validation part)`` of the training data (``data.valid_frac`` > 0)."""
    train_rows, valid_rows = validation_split(train.num_points, config.valid_frac, config.valid_seed)
    base = train.source.removesuffix(" [train]")
    return (train.take(train_rows, f"{train.source} [minus {len(valid_rows)} valid]"),
            train.take(valid_rows, f"{base} [valid]"))


def load_train_eval(config: DataConfig, progress: bool = False, train: XCDataset | None = None,
                    test: XCDataset | None = None) -> tuple[XCDataset, XCDataset | None, str | None]:
    """``(train, eval data, split)``: the data a run trains on and is evaluated on.

    With ``valid_frac`` > 0 that is the training part and the validation split ("valid"), else
    the whole training data and the test data ("test"), or no evaluation data (split None) where
    there is no test data. ``train`` and ``test`` given in memory replace the configured source.
    """
    if train is None:
        train, configured_test = load_datasets(config, progress)
        test = configured_test if test is None else test
    else:
        log_data(train, test)
    if test is not None:
        check_same_shape(train, test)
    if config.valid_frac > 0:
        train.require_points("train on")
        return *split_validation(config, train), "valid"
    return train, test, None if test is None else "test"


def load_eval_data(config: DataConfig, path: str | None = None, split: str | None = None,
                   progress: bool = False) -> tuple[XCDataset, str]:
    """A trained run's evaluation data and its split name ("valid" or "test").

    Args:
      config: the run's data config.
      path: an XC file to evaluate on instead (its split is "test").
      split: "valid" or "test" for the run's own validation or test data; None: what the run was
        evaluated on (its validation split when ``valid_frac`` > 0, else its test data).
    """
    if path:
        return read_data_file(path, config.cache_dir, progress, config.max_line_bytes), "test"
    split = split or ("valid" if config.valid_frac > 0 else "test")
    if split == "valid" and config.valid_frac <= 0:
        raise ConfigError("data.valid_frac=0.0: the run holds out no validation split; evaluate "
                          "on its test data instead", field="data.valid_frac")
    if split == "test" and config.test_path:
        return read_data_file(config.test_path, config.cache_dir, progress, config.max_line_bytes), "test"
    if split == "test" and config.train_path:
        raise ConfigError("the run was trained on a training file alone and has no test file: "
                          "give one with --test FILE")
    train, test = load_datasets(config, progress)
    return (split_validation(config, train)[1] if split == "valid" else test), split


def eval_fields(config: DataConfig, dataset: XCDataset, split: str) -> dict[str, Any]:
    """What ``metrics.json`` says about the evaluated data: its split and source."""
    fields = {"split": split, f"{split}_source": dataset.source}
    if split == "valid":
        fields.update(valid_frac=config.valid_frac, valid_seed=config.valid_seed)
    return fields
