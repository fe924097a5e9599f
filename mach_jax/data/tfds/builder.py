"""The TFDS builder: one BuilderConfig per registry dataset, XC files in, ArrayRecord out.

Importing this module registers the dataset ``extreme_classification`` with TFDS (configs
``bibtex``, ``amazon-670k``, ...: the registry's names in lower case). Each example is one
point: ``feature_ids`` int32 [nnz], ``feature_values`` float32 [nnz] and ``labels`` int32 [k],
variable length, in file order. They are `tfds.features.Tensor`s with ``Encoding.BYTES`` (the
arrays' raw bytes inside TFDS's own ``tf.train.Example`` proto), which TFDS writes and decodes
with numpy and protobuf alone: neither building nor reading imports TensorFlow. D and L are
in the dataset's metadata (``metadata.json``), so readers need no registry.

Examples keep the files' order (``disable_shuffling``): row i of a split is line i + 2 of its
file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mach_jax.errors import DataFormatError
from mach_jax.data.registry import REGISTRY
from mach_jax.errors import DatasetError
from mach_jax.data.xc_format import read_xc

DATASET_NAME = "extreme_classification"
SPLITS = ("train", "test")
FEATURE_KEYS = {"feature_ids": np.int32, "feature_values": np.float32, "labels": np.int32}
_SUFFIXES = (".txt", ".txt.gz")


@dataclasses.dataclass(eq=False)
class XcConfig(tfds.core.BuilderConfig):
    """One XC dataset: its published shape, checked against the files' headers.

    Attributes:
      num_features: D.
      num_labels: L.
      num_train: train points, or None to accept any number.
      num_test: test points, or None to accept any number.
      folder: subfolder of manual_dir that may hold the files (the downloader writes
        ROOT/NAME/{train,test}.txt), looked at after manual_dir itself.
    """

    num_features: int = 0
    num_labels: int = 0
    num_train: int | None = None
    num_test: int | None = None
    folder: str = ""


def features() -> tfds.features.FeaturesDict:
    """One point: its feature ids, their values and its labels, each [variable length]."""
    return tfds.features.FeaturesDict({
        key: tfds.features.Tensor(shape=(None,), dtype=dtype,
                                  encoding=tfds.features.Encoding.BYTES)
        for key, dtype in FEATURE_KEYS.items()})


def registry_configs() -> list[XcConfig]:
    """One config per `mach_jax.data.registry` entry, named by its lower-case name."""
    return [XcConfig(name=key, description=f"{info.name} from the Extreme Classification "
                     f"Repository: D={info.num_features}, L={info.num_labels}",
                     num_features=info.num_features, num_labels=info.num_labels,
                     num_train=info.num_train, num_test=info.num_test, folder=info.name)
            for key, info in REGISTRY.items()]


def find_split_file(manual_dir: str | os.PathLike, config: XcConfig, split: str) -> Path:
    """The XC file of `split`: DIR/split.txt[.gz], else DIR/FOLDER/split.txt[.gz].

    Raises:
      DatasetError: none of them exists (the message lists where it looked).
    """
    root = Path(manual_dir)
    folders = [root] + [root / name for name in dict.fromkeys([config.folder, config.name])
                        if name]
    candidates = [folder / (split + suffix) for folder in folders for suffix in _SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{config.name}: no {split} file in {root} (looked for "
                       f"{', '.join(str(p) for p in candidates)})")


class ExtremeClassification(tfds.core.GeneratorBasedBuilder):
    """Extreme Classification Repository datasets: sparse features, multi-label."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "XC train/test files as variable-length sparse examples."}
    BUILDER_CONFIGS = registry_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the dataset's train.txt and test.txt (XC format, plain or .gz) in manual_dir, or in
    manual_dir/NAME/ as `python -m mach_jax.datasets download NAME --dir manual_dir` does.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return self.dataset_info_from_configs(
            features=features(),
            metadata=tfds.core.MetadataDict(num_features=config.num_features,
                                            num_labels=config.num_labels),
            disable_shuffling=True,
            homepage="http://manikvarma.org/downloads/XC/XMLRepository.html",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        return {split: self._generate_examples(find_split_file(dl_manager.manual_dir, config,
                                                               split), split)
                for split in SPLITS}

    def _generate_examples(self, path: Path, split: str):
        config = self.builder_config
        data = read_xc(path, use_cache=False)  # a one-off conversion: no parse cache
        for what, got, want in (("D", data.num_features, config.num_features),
                                ("L", data.num_labels, config.num_labels),
                                ("N", data.num_points, getattr(config, f"num_{split}"))):
            if want is not None and got != want:
                raise DataFormatError(str(path), 1, f"header has {what}={got} but "
                                      f"{config.name} has {what}={want}")
        fptr, lptr = data.features.indptr, data.labels.indptr
        ids, values, labels = data.features.indices, data.features.values, data.labels.indices
        for i in range(data.num_points):
            yield i, {"feature_ids": ids[fptr[i]:fptr[i + 1]],
                      "feature_values": values[fptr[i]:fptr[i + 1]],
                      "labels": labels[lptr[i]:lptr[i + 1]]}
