"""Registry of standard Extreme Classification Repository datasets: statistics, sources, layouts.

Figures are the repository's published table (manikvarma.org/downloads/XC/XMLRepository.html):
D features, L labels, train and test points, average labels per point and points per label.
`python -m mach_jax.datasets download` checks every downloaded file's header against them.
Bibtex and Delicious agree with the headers of ``../shared/data/{bibtex,delicious}`` (tested).

Downloads are the repository's Google Drive links for the bag-of-words versions (the ids its
page and reference scripts use, e.g. napkinXC's ``datasets.py``). The repository publishes no
checksums; the MD5s of the Mediamill, Bibtex, Delicious and EURLex-4K archives are the ones a
public setup script records beside the same Drive ids (its ``download_data()``: "Eurlex" there is
EURLex-4K here), so `md5` is set for those four and unknown (None) for the others. No sha256 is
known (a mirror with known contents can set one). The downloader checks sha256 when known, else
md5, else nothing (and says so); a mismatch is an error unless accepted.

Two archive layouts occur:

- separate files: one XC file for train and one for test (``eurlex_train.txt`` ...), each with
  its own ``N D L`` header;
- one data file plus split files (the small Mulan-derived sets: ``Bibtex_data.txt`` with
  ``bibtex_trSplit.txt`` / ``bibtex_tstSplit.txt``): the data file holds all points, each
  split file has one row per point of that part and one column per alternative split, holding
  1-based row numbers into the data file.

Member names are matched against archive members' base names, ignoring case and folders.
"""

from __future__ import annotations

import dataclasses

from mach_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class Download:
    """One file to fetch.

    Attributes:
      url: http(s) or file URL.
      sha256: hex digest of the file, or None when unknown; checked when known.
      filename: name to use for the file when it is a single data file, not an archive
        (default: the URL's last path component, without ``.gz``).
      md5: hex digest of the file, or None when unknown; checked when sha256 is unknown.
    """

    url: str
    sha256: str | None = None
    filename: str | None = None
    md5: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which downloaded files or archive members hold what; each role lists accepted names.

    Either `train` and `test` (separate files) or `data`, `train_split` and `test_split`.
    """

    train: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    train_split: tuple[str, ...] = ()
    test_split: tuple[str, ...] = ()

    @property
    def uses_splits(self) -> bool:
        return bool(self.data)

    def roles(self) -> dict[str, tuple[str, ...]]:
        """The roles this layout uses, e.g. {'train': ..., 'test': ...}."""
        names = ("data", "train_split", "test_split") if self.uses_splits else ("train", "test")
        return {role: getattr(self, role) for role in names}

    def validate(self) -> Layout:
        separate = bool(self.train and self.test)
        split = bool(self.data and self.train_split and self.test_split)
        if separate == split:
            raise ValueError("a layout needs either train and test, or data, train_split and "
                             f"test_split, got {self}")
        return self


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One dataset: published statistics, where to fetch it and how it is laid out.

    Attributes:
      name: the repository's name, e.g. "Amazon-670K" (looked up ignoring case).
      num_features: D.
      num_labels: L.
      num_train: points in the train part.
      num_test: points in the test part.
      labels_per_point: published average, or None.
      points_per_label: published average, or None.
      downloads: the files to fetch (usually one archive).
      layout: where train and test are inside them.
      propensity_a, propensity_b: the A, B of the propensity model p_l = 1 / (1 + C e^{-A
        log(N_l + B)}) that the repository's evaluation tools use for this dataset's PSP@k:
        0.6 / 2.6 for Amazon-670K and Amazon-3M, 0.5 / 0.4 for WikiLSHTC-325K and
        Wikipedia-500K, 0.55 / 1.5 for the others.
    """

    name: str
    num_features: int
    num_labels: int
    num_train: int
    num_test: int
    labels_per_point: float | None
    points_per_label: float | None
    downloads: tuple[Download, ...]
    layout: Layout
    propensity_a: float = 0.55
    propensity_b: float = 1.5

    def __post_init__(self):
        self.layout.validate()
        if not self.downloads:
            raise ValueError(f"{self.name}: no downloads")
        if min(self.num_features, self.num_labels, self.num_train, self.num_test) < 0:
            raise ValueError(f"{self.name}: statistics must be non-negative")


def _drive(file_id: str, md5: str | None = None) -> tuple[Download, ...]:
    return (Download(f"https://drive.google.com/uc?export=download&id={file_id}", md5=md5),)


def _separate(prefix: str) -> Layout:
    return Layout(train=(f"{prefix}_train.txt", "train.txt"),
                  test=(f"{prefix}_test.txt", "test.txt"))


def _with_splits(name: str) -> Layout:
    low = name.lower()
    return Layout(data=(f"{name}_data.txt",), train_split=(f"{low}_trSplit.txt",),
                  test_split=(f"{low}_tstSplit.txt",))


_ENTRIES = (
    DatasetInfo("Mediamill", 120, 101, 30993, 12914, 4.38, 1902.15,
                _drive("0B3lPMIHmG6vGY3B4TXRmZnZBTkk",
                       "11cfdb9269ae5a301bb0c6f333cc6999"), _with_splits("Mediamill")),
    DatasetInfo("Bibtex", 1836, 159, 4880, 2515, 2.40, 111.71,
                _drive("0B3lPMIHmG6vGcy1xM2pJZ09MMGM",
                       "78db23bd26486d4188502abf6a39b856"), _with_splits("Bibtex")),
    DatasetInfo("Delicious", 500, 983, 12920, 3185, 19.03, 311.61,
                _drive("0B3lPMIHmG6vGdG1jZ19VS2NWRVU",
                       "e73730438e67ad179d724503e6770b1a"), _with_splits("Delicious")),
    DatasetInfo("EURLex-4K", 5000, 3993, 15539, 3809, 5.31, 25.73,
                _drive("0B3lPMIHmG6vGU0VTR1pCejFpWjg",
                       "ec8feb2a9a0bd0f32d8f4c2b00725524"), _separate("eurlex")),
    DatasetInfo("Wiki10-31K", 101938, 30938, 14146, 6616, 18.64, 8.52,
                _drive("0B3lPMIHmG6vGaDdOeGliWF9EOTA"), _separate("wiki10")),
    DatasetInfo("AmazonCat-13K", 203882, 13330, 1186239, 306782, 5.04, 448.57,
                _drive("0B3lPMIHmG6vGa2tMbVJGdDNSMGc"), _separate("amazonCat")),
    DatasetInfo("Delicious-200K", 782585, 205443, 196606, 100095, 75.54, 72.29,
                _drive("0B3lPMIHmG6vGR3lBWWYyVlhDLWM"), _separate("deliciousLarge")),
    DatasetInfo("WikiLSHTC-325K", 1617899, 325056, 1778351, 587084, 3.19, 17.46,
                _drive("0B3lPMIHmG6vGSHE1SWx4TVRva3c"), _separate("wikiLSHTC"),
                propensity_a=0.5, propensity_b=0.4),
    DatasetInfo("Amazon-670K", 135909, 670091, 490449, 153025, 5.45, 3.99,
                _drive("0B3lPMIHmG6vGdUJwRzltS1dvUVk"), _separate("amazon"),
                propensity_a=0.6, propensity_b=2.6),
)

REGISTRY: dict[str, DatasetInfo] = {entry.name.lower(): entry for entry in _ENTRIES}

# Data a preset was made for that the repository does not publish, so that no URL or checksum
# can be trusted for it: what `get_dataset` says instead of a download.
NOT_IN_THE_REPOSITORY = {
    "corel5k": "Corel5k is not published by the Extreme Classification Repository (the corel5k "
               "preset was measured on Mulan's Corel5k split, 4,500 / 500 points, D = 499, "
               "L = 374, converted to XC files), so there is no download to check; train on your "
               "own XC files: python -m mach_jax.train --preset corel5k --train FILE --test FILE",
}


def get_dataset(name: str, registry: dict[str, DatasetInfo] | None = None) -> DatasetInfo:
    """The registry entry called `name` (ignoring case).

    Args:
      name: e.g. "amazon-670k".
      registry: entries keyed by lower-case name; default `REGISTRY`.

    Raises:
      DatasetError: no such entry (the message says why for a preset's data the repository does
        not publish, lists the known names and how to pass a file fetched elsewhere).
    """
    registry = REGISTRY if registry is None else registry
    entry = registry.get(name.lower())
    if entry is None:
        known = ", ".join(e.name for e in registry.values())
        why = NOT_IN_THE_REPOSITORY.get(name.lower())
        raise DatasetError(f"unknown dataset {name!r}; known: {known} (a file of one of them "
                           "fetched elsewhere: download NAME --url FILE)" + (f". {why}" if why else ""))
    return entry
