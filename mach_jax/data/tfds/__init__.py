"""Extreme Classification Repository data as TensorFlow Datasets, read without TensorFlow.

    python -m mach_jax.tfds Bibtex --manual-dir data --data-dir ~/tensorflow_datasets

builds ``extreme_classification/bibtex`` (see `mach_jax.data.tfds.builder`) from the XC files in
``data/`` or ``data/Bibtex/`` as ArrayRecord files, which ``tfds.data_source`` reads with random
access; `load_tfds` turns a split back into an `XCDataset`, exactly as `read_xc` reads the
source files. Needs the optional extra (``pip install "mach_jax[tfds]"``), not TensorFlow.

This module imports TFDS only when called, so `parse_data_spec` works without it.
"""

from __future__ import annotations

import importlib
import os
import re

import numpy as np

from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.registry import REGISTRY
from mach_jax.errors import DataFormatError, DatasetError

PREFIX = "tfds:"
_CONFIG_NAME = re.compile(r"[\w+\-.]+")  # what TFDS accepts in "dataset/config"


def parse_data_spec(spec: str) -> str | None:
    """The dataset name in a data spec ``tfds:NAME``, or None for a spec of another kind.

    Raises:
      DatasetError: ``tfds:`` with an empty or malformed name.
    """
    if not spec.startswith(PREFIX):
        return None
    name = spec[len(PREFIX):].strip()
    if not _CONFIG_NAME.fullmatch(name):
        raise DatasetError(f"bad data spec {spec!r}: expected tfds:NAME, NAME a registry "
                           f"dataset such as tfds:{next(iter(REGISTRY.values())).name}")
    return name


def config_name(name: str) -> str:
    """The builder config of a dataset: registry names in lower case, others as they are."""
    return name.lower() if name.lower() in REGISTRY else name


def _tfds():
    try:
        import tensorflow_datasets
    except ImportError as e:
        raise DatasetError(f"TensorFlow Datasets is not installed ({e}); "
                           'pip install "mach_jax[tfds]"') from None
    importlib.import_module("mach_jax.data.tfds.builder")  # registers extreme_classification
    return tensorflow_datasets


def prepare(config, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """Builds a dataset's train and test splits as ArrayRecord files (no-op when built).

    Args:
      config: a registry name (any case) or a `builder.XcConfig` (e.g. for your own data).
      manual_dir: holds train.txt and test.txt (plain or .gz), directly or in NAME/.
      data_dir: TFDS data folder; default $TFDS_DATA_DIR or ~/tensorflow_datasets.

    Returns:
      The built version's folder, DATA_DIR/extreme_classification/CONFIG/VERSION.

    Raises:
      DatasetError: unknown name or missing files; DataFormatError: malformed files or a
      header that does not match the registry.
    """
    tfds = _tfds()
    from mach_jax.data.tfds.builder import ExtremeClassification

    if isinstance(config, str):
        if config.lower() not in REGISTRY:
            raise DatasetError(f"unknown dataset {config!r}; known: "
                               f"{', '.join(e.name for e in REGISTRY.values())}")
        config = config.lower()
    builder = ExtremeClassification(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder.data_path


def _read_records(source, batch_size: int, where: str, split: str):
    """(feature ids, values, labels, nnz per row, labels per row) of every record in source.

    Each record is a tf.train.Example whose features hold the arrays' raw bytes
    (``Encoding.BYTES``); parsing the proto and joining a whole batch's bytes is ~5x faster
    than TFDS's per-example numpy decoding, and gives the same arrays (tested).
    """
    from tensorflow_datasets.proto import tf_example_pb2  # TFDS's own copy: no TensorFlow

    from mach_jax.data.tfds.builder import FEATURE_KEYS

    chunks = {key: [] for key in FEATURE_KEYS}
    counts = {key: [] for key in FEATURE_KEYS}
    for start in range(0, len(source), batch_size):
        records = source.__getitems__(list(range(start, min(start + batch_size, len(source)))))
        parsed = [tf_example_pb2.Example.FromString(r).features.feature for r in records]
        for key, dtype in FEATURE_KEYS.items():
            blobs = [b"".join(f[key].bytes_list.value) for f in parsed]
            nbytes = np.fromiter(map(len, blobs), np.int64, len(blobs))
            size = np.dtype(dtype).itemsize
            if np.any(nbytes % size):
                raise DataFormatError(where, None, f"split {split!r}: a {key} record is not "
                                      f"a whole number of {np.dtype(dtype)} values")
            counts[key].append(nbytes // size)
            chunks[key].append(np.frombuffer(b"".join(blobs), dtype))
    ids, values, labels = (np.concatenate(chunks[k]) if chunks[k] else np.zeros(0, d)
                           for k, d in FEATURE_KEYS.items())
    nnz, num_values, k = (np.concatenate(counts[key]) if counts[key] else np.zeros(0, np.int64)
                          for key in FEATURE_KEYS)
    if not np.array_equal(nnz, num_values):
        raise DataFormatError(where, None, f"split {split!r}: row {np.argmax(nnz != num_values)}"
                              " has not as many feature values as feature ids")
    return ids, values, labels, nnz, k


def _full_name(name: str) -> str:
    """``extreme_classification/CONFIG``, the TFDS name of a dataset."""
    from mach_jax.data.tfds.builder import DATASET_NAME

    return f"{DATASET_NAME}/{config_name(name)}"


def _built_builder(tfds, name: str, data_dir, manual_dir):
    """The TFDS builder of a built dataset; a registry dataset is built from manual_dir first.

    Raises:
      DatasetError: the dataset is not built (and cannot be built here).
    """
    if manual_dir is not None and config_name(name) in REGISTRY:
        prepare(config_name(name), manual_dir, data_dir)
    try:
        builder = tfds.builder(_full_name(name), data_dir=data_dir)
        built = builder.is_prepared()
    except ValueError:  # neither built files nor a config of that name in the code
        built = False
    if not built:
        raise DatasetError(f"{_full_name(name)} is not built in "
                           f"{data_dir or 'the TFDS data folder'}; build it with: "
                           f"python -m mach_jax.tfds {name} --manual-dir DIR"
                           + (f" --data-dir {data_dir}" if data_dir else ""))
    return builder


def _data_source(tfds, builder, name: str, split: str):
    """Random access to one split's records as raw bytes, once the features are ours.

    Raises:
      DataFormatError: features of another layout; DatasetError: not ArrayRecord, no such split.
    """
    from mach_jax.data.tfds.builder import DATASET_NAME, features

    info, where = builder.info, str(builder.data_path)
    if info.features.to_json() != features().to_json():  # the layout _read_records parses
        raise DataFormatError(where, None, f"features {info.features} are not those of "
                              f"{DATASET_NAME} (built by another version?)")
    try:
        return builder.as_data_source(
            split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except NotImplementedError:  # built by other means in another file format
        raise DatasetError(f"{where} is not in ArrayRecord format; build it with: "
                           f"python -m mach_jax.tfds {name} --manual-dir DIR") from None
    except (ValueError, KeyError) as e:
        raise DatasetError(f"{_full_name(name)}: bad split {split!r} (it has "
                           f"{', '.join(info.splits)}): {str(e).splitlines()[0]}") from None


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, *, split: str,
              manual_dir: str | os.PathLike | None = None, batch_size: int = 4096) -> XCDataset:
    """Reads one split of a built dataset into memory, `batch_size` records per read.

    Args:
      name: a registry name (any case, e.g. "Amazon-670K") or the config of a dataset built
        with `prepare` from your own `XcConfig`.
      data_dir: TFDS data folder; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
      split: "train", "test", or a TFDS slice such as "train[:10%]".
      manual_dir: when given and a registry dataset is not built yet, build it from here
        first (see `prepare`); otherwise an unbuilt dataset is an error.
      batch_size: records fetched per random-access read.

    Returns:
      The split with features [N, D] and labels [N, L] (D, L from the dataset's metadata),
      rows in file order; equal to `read_xc` of the source file for a whole split.

    Raises:
      DatasetError: TFDS missing, the dataset not built, or no such split.
      DataFormatError: records that do not fit the dataset's features or D, L.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tfds = _tfds()
    builder = _built_builder(tfds, name, data_dir, manual_dir)
    source = _data_source(tfds, builder, name, split)
    where = str(builder.data_path)
    ids, values, labels, nnz, k = _read_records(source, batch_size, where, split)
    fptr, lptr = (np.concatenate([[0], np.cumsum(c)]) for c in (nnz, k))
    metadata = builder.info.metadata
    try:
        return XCDataset(
            CsrMatrix(fptr, ids, values, int(metadata["num_features"])),
            CsrMatrix(lptr, labels, np.ones(len(labels), np.float32), int(metadata["num_labels"])),
            source=f"tfds:{_full_name(name)} [{split}] ({where})")
    except ValueError as e:  # ids outside [0, D) or [0, L), inconsistent lengths
        raise DataFormatError(where, None, f"split {split!r}: {e}") from None
