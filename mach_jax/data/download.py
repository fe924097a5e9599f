"""Fetching, unpacking and verifying the registry's datasets, as ``root/NAME/{train,test}.txt``.

`download` fetches an entry's files (`mach_jax.data.registry`), each streamed into a ``.part``
file that a re-run resumes (`fetch`), and checks each one's sha256, else md5, where the registry
has one (a mismatch keeps the file and is an error, or a warning when accepted); then writes
``train.txt`` and ``test.txt`` atomically, their headers checked (`mach_jax.data.archives`), and
last `MARKER`: the sources, their checksum status and the PSP@k propensity A, B. A dataset
verified before is not fetched again. ``python -m mach_jax.datasets download`` is the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from mach_jax.data.archives import DAMAGED, Limits, convert_members, list_members, locate_members
from mach_jax.data.fetch import fetch
from mach_jax.data.files import file_digests, write_json_atomically
from mach_jax.data.registry import DatasetInfo, Download, get_dataset
from mach_jax.errors import DatasetError

MARKER = ".verified.json"
_OUTPUTS = ("train.txt", "test.txt")
logger = logging.getLogger("mach_jax")


def _summary(info: DatasetInfo, split: int) -> dict:
    return {"name": info.name, "num_features": info.num_features, "num_labels": info.num_labels,
            "num_train": info.num_train, "num_test": info.num_test,
            "split": split if info.layout.uses_splits else None}


def _output_sizes(out_dir: Path) -> dict[str, int]:
    return {name: (out_dir / name).stat().st_size for name in _OUTPUTS}


def is_verified(out_dir: Path, info: DatasetInfo, split: int = 1) -> bool:
    """Whether out_dir holds this dataset (and split), written and verified by `download`.

    Args:
      out_dir: the dataset folder, root/NAME.
      info: the registry entry.
      split: the split column it was written with (ignored for train + test layouts).

    Returns:
      True when `MARKER` names this entry and split and the outputs still have its sizes.
    """
    try:
        marker = json.loads((out_dir / MARKER).read_text())
        sizes = _output_sizes(out_dir)
    except (OSError, ValueError):
        return False
    return marker.get("dataset") == _summary(info, split) and marker.get("bytes") == sizes


@dataclasses.dataclass(frozen=True)
class _Fetched:
    """One downloaded file: where it is, where it came from, its name as data, and its
    checksums as the marker records them (`_check`)."""

    path: Path
    url: str
    single_name: str
    record: dict


def _local_name(info: DatasetInfo, item: Download, index: int) -> str:
    """The URL's file name, or NAME-index.download when it has no extension or is ``..``."""
    name = PurePosixPath(urllib.parse.urlparse(item.url).path).name
    return name if "." in name.strip(".") else f"{info.name}-{index}.download"


def _as_url(text: str) -> str:
    """A URL as it is; anything without ``://`` is a local file, as a file:// URL."""
    if "://" not in text and not os.path.isfile(text):
        problem = "is a folder, not a file" if os.path.isdir(text) else "no such file"
        raise DatasetError(f"{text}: {problem}; --url takes a downloaded file or a URL with its "
                           "scheme (https://...)")
    return text if "://" in text else Path(text).resolve().as_uri()


def _downloads(info: DatasetInfo, urls: Sequence[str] | None) -> tuple[Download, ...]:
    """The entry's downloads, or `urls` instead (with the entry's checksums when as many)."""
    items = info.downloads
    if urls:
        urls = [_as_url(u) for u in urls]
        items = (tuple(dataclasses.replace(d, url=u) for d, u in zip(items, urls))
                 if len(urls) == len(items) else tuple(Download(u) for u in urls))
    return items


def _check(item: Download, dest: Path, say: Callable[[str], None], accept_mismatch: bool) -> dict:
    """Checks dest against the item's sha256, else its md5; returns the marker's record.

    Raises:
      DatasetError: a mismatch, unless accepted (then a warning); the file is kept either way.
    """
    digests = file_digests(dest, ("sha256", "md5"))
    algorithm = "sha256" if item.sha256 else "md5" if item.md5 else None
    record = {"url": item.url, **digests, "checksum": "unknown", "algorithm": algorithm,
              "expected": None}
    if algorithm is None:
        say(f"{dest}: no sha256 or md5 known, not checked (the headers still are)")
        return record
    expected, actual = getattr(item, algorithm).lower(), digests[algorithm]
    record["expected"] = expected
    if actual == expected:
        record["checksum"] = "verified"
        return record
    if not accept_mismatch:
        raise DatasetError(f"{dest}: {algorithm} mismatch, expected {expected}, got {actual} "
                           f"(from {item.url}); remove {dest} to fetch it again, or pass "
                           "--accept-checksum-mismatch to use it anyway")
    logger.warning(f"warning: {dest}: {algorithm} mismatch, expected {expected}, got {actual}; "
                   "using it anyway (--accept-checksum-mismatch)")
    record["checksum"] = "mismatch accepted"
    return record


def _fetch_all(info: DatasetInfo, items: Sequence[Download], folder: Path,
               say: Callable[[str], None], progress: bool, accept_mismatch: bool
               ) -> list[_Fetched]:
    """Fetches each item into folder (unless an earlier run did) and checks its checksum."""
    fetched = []
    for index, item in enumerate(items):
        dest = folder / _local_name(info, item, index)
        if not dest.exists():
            say(f"{info.name}: fetching {item.url}")
            fetch(item.url, dest, progress=progress)
        record = _check(item, dest, say, accept_mismatch)
        single = item.filename or PurePosixPath(urllib.parse.urlparse(item.url).path).name
        fetched.append(_Fetched(dest, item.url, single, record))
    return fetched


def _unpack(info: DatasetInfo, fetched: list[_Fetched], out_dir: Path, split: int,
            limits: Limits) -> None:
    """Writes out_dir/{train,test}.txt from the fetched files; removes them if damaged."""
    try:
        members = [m for f in fetched for m in list_members(f.path, f.single_name)]
        convert_members(info, locate_members(members, info), out_dir, split, limits)
    except DAMAGED as e:
        for f in fetched:
            f.path.unlink(missing_ok=True)
        raise DatasetError(f"{info.name}: damaged or truncated download ({e}); removed "
                           f"{', '.join(str(f.path) for f in fetched)}, run again to fetch it "
                           "afresh") from None
    except NotImplementedError as e:  # e.g. a zip compression method Python lacks
        raise DatasetError(f"{info.name}: cannot unpack {fetched[0].path} ({e}); unpack it by "
                           "hand and pass the data files with --url") from None


def _make_folder(folder: Path, out_dir: Path) -> list[Path]:
    """Creates folder, or says which file on its path stands in the way.

    Returns:
      The folders it created, deepest first (`_remove_empty` takes them back after a failure).
    """
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return created
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        problem = f"{blocker}: is a file" if blocker else f"{folder}: {e.strerror or e}"
        raise DatasetError(f"{problem}, cannot create the folder {out_dir}; pass another "
                           "--dir") from None


def _already_verified(info: DatasetInfo, out_dir: Path, split: int, say: Callable[[str], None]) -> bool:
    """Whether out_dir holds this dataset already (`is_verified`); says so."""
    if not is_verified(out_dir, info, split):
        return False
    sources = json.loads((out_dir / MARKER).read_text()).get("sources", [])
    accepted = any(s.get("checksum") == "mismatch accepted" for s in sources)
    say(f"{info.name}: already downloaded and verified in {out_dir}"
        + (" (with a checksum mismatch accepted)" if accepted else ""))
    return True


def _remove_empty(folders: Sequence[Path]) -> None:
    """Removes the folders a failed download created, deepest first, where they are still empty
    (a ``.part`` file that a re-run resumes keeps its folder)."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def download(dataset: str | DatasetInfo, root: str | os.PathLike, *, urls=None, split: int = 1,
             progress: bool = True, keep_archive: bool = False, registry=None,
             accept_checksum_mismatch: bool = False, limits: Limits = Limits()) -> Path:
    """Fetches, unpacks and verifies a dataset into ``root/NAME/{train,test}.txt``.

    Args:
      dataset: a registry name (any case) or an entry.
      root: parent folder; the dataset goes to root/NAME.
      urls: fetch these instead of the entry's URLs (a mirror, or local files); the entry's
        checksums still apply when there are as many URLs as the entry has downloads.
      split: 1-based split column for data + split-file layouts.
      progress: show a progress bar and log what happens (logger "mach_jax", INFO).
      keep_archive: keep the downloaded files after a successful conversion.
      registry: entries to look `dataset` up in; default `REGISTRY`.
      accept_checksum_mismatch: use a file whose checksum does not match (a warning is logged,
        even without `progress`, and the marker records it) instead of raising.
      limits: the longest line and the largest unpacked file, checked while they stream.

    Returns:
      The dataset folder, holding train.txt (num_train points) and test.txt (num_test points)
      of D features and L labels.

    Raises:
      DatasetError: network, file, archive, layout, header, checksum or size problems (one line).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset, registry)
    if split < 1:
        raise DatasetError(f"split must be 1 or more, got {split}")
    split = split if info.layout.uses_splits else 1
    items = _downloads(info, urls)
    say = logger.info if progress else (lambda message: None)
    out_dir = Path(root) / info.name
    if _already_verified(info, out_dir, split, say):
        return out_dir
    folder = out_dir / "downloads"  # apart from the outputs, which may share their names
    created = _make_folder(folder, out_dir)
    (out_dir / MARKER).unlink(missing_ok=True)  # half-replaced outputs must not look verified
    try:
        fetched = _fetch_all(info, items, folder, say, progress, accept_checksum_mismatch)
        _unpack(info, fetched, out_dir, split, limits)
    except OSError as e:  # disk full, no permission... (damaged archives are DatasetErrors)
        _remove_empty(created)
        raise DatasetError(f"{info.name}: {e.filename or out_dir}: {e.strerror or e}") from None
    except DatasetError:
        _remove_empty(created)
        raise
    write_json_atomically(out_dir / MARKER, {
        "dataset": _summary(info, split), "bytes": _output_sizes(out_dir),
        "sources": [f.record for f in fetched],
        "propensity": {"a": info.propensity_a, "b": info.propensity_b}})
    if not keep_archive:
        shutil.rmtree(folder)
    say(f"{info.name}: wrote {out_dir / 'train.txt'} ({info.num_train} points) and "
        f"test.txt ({info.num_test} points), D={info.num_features}, L={info.num_labels}")
    return out_dir
