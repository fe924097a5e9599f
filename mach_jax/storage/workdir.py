"""A training workdir: ``config.json``, ``label_counts.npy``, ``checkpoints/`` and ``metrics.json``.

``config.json`` holds the config tree and what the data fixed (D, L, the batch geometry, the
training-set size, the data's fingerprint), so that evaluation and prediction need nothing but
the workdir: the hashes are recomputed from the seeds in the config. Checkpoints are written by
Orbax's CheckpointManager, atomically (a step folder appears only once it is complete), each with
a record of the run's identity (``identity``) and its arrays' checksums (``storage.checkpoints``).
A run is checked (``check_run``) before anything is written, and every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mach_jax.config import Config
from mach_jax.data.files import atomic_output, describe_kind, write_json_atomically
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import WorkdirError
from mach_jax.storage.run_identity import (_first_difference, _flatten, _same_data,  # noqa: F401
                                           describe_difference, identity, identity_difference)
from mach_jax.storage.run_file import (CONFIG_FILE, FEATURE_IDF_FILE, LABEL_COUNTS_FILE, payload, read_array,
                                       read_run_file)

METRICS_FILE = "metrics.json"
# The errors of a write that the user can act on: no space, no permission, a read-only disk.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}

GROUP_PREFIX = "reps-"


def group_dir(workdir: Path, rep_range: tuple[int, ...]) -> Path:
    """Where a run keeps its files: the workdir itself, or ``reps-START-STOP`` for a group."""
    return Path(workdir) / f"{GROUP_PREFIX}{rep_range[0]}-{rep_range[1]}" if rep_range else Path(workdir)


# Every path a run writes in its folder, by kind (``checkpoints``, ``metric_log``, ``lock`` and
# ``rerank_store`` name them too; a test checks they agree).
RUN_FOLDERS = {"checkpoints": "checkpoints", "damaged_checkpoints": "damaged checkpoints",
               "tensorboard": "TensorBoard events", "rerank": "re-ranker"}
RUN_FILES = (CONFIG_FILE, LABEL_COUNTS_FILE, FEATURE_IDF_FILE, METRICS_FILE, "metrics.jsonl", "train.lock")


def check_layout(workdir: Path) -> None:
    """Refuses a workdir where a path the run will write is of the wrong kind: a file where a
    folder goes (``checkpoints`` a file), or anything but a regular file where a file goes (a
    link, device, FIFO or socket); checked before the run starts, so no step is lost to it.

    Raises:
      WorkdirError: naming the path, what it is and what the run keeps there.
    """
    for name, what in RUN_FOLDERS.items():
        path = Path(workdir) / name
        if os.path.lexists(path) and not path.is_dir():
            kind = describe_kind(os.lstat(path).st_mode) if not path.is_file() or path.is_symlink() else "file"
            raise WorkdirError(f"{path}: is a {kind}, not a folder; the run keeps its {what} there: move it "
                               "away, then run again")
    for name in RUN_FILES:
        path = Path(workdir) / name
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise WorkdirError(f"{path}: is a {describe_kind(os.lstat(path).st_mode)}, not a regular file; the "
                               "run writes it (never through a link or into a device): move it away, then run again")


def check_run(workdir: Path, config: Config, info: RunInfo, label_counts: np.ndarray,
              feature_idf: np.ndarray | None, data_fingerprint: str | None) -> None:
    """Refuses a run that may not continue the one recorded in ``workdir/config.json`` (another
    config, data of another shape or content), or whose folder has a path of the wrong kind where
    the run will write (``check_layout``); writes nothing. A workdir without config.json passes
    (its checkpoints are checked against their own record when restored).
    """
    check_layout(workdir)
    if not (workdir / CONFIG_FILE).exists():
        return
    saved = read_run_file(workdir)
    message = describe_difference(str(workdir), identity(saved.config, saved.info, saved.data_fingerprint),
                                  identity(config, info, data_fingerprint))
    if message:
        raise WorkdirError(message)
    saved_counts = read_array(workdir, LABEL_COUNTS_FILE, "the training label counts", saved.info.num_labels,
                              integer=True)
    if saved_counts is not None and not np.array_equal(saved_counts, label_counts):
        raise WorkdirError(f"{workdir} was trained on other data (its label counts differ from "
                           "this run's training file); use another --workdir")
    saved_idf = read_array(workdir, FEATURE_IDF_FILE, "the training features' idf")
    if saved_idf is not None and feature_idf is not None and not np.array_equal(saved_idf, feature_idf):
        raise WorkdirError(f"{workdir} was trained on other data (its feature idf differs from "
                           "this run's training file); use another --workdir")


def write_run(workdir: Path, config: Config, info: RunInfo, label_counts: np.ndarray,
              feature_idf: np.ndarray | None = None, data_fingerprint: str | None = None) -> None:
    """Writes what the workdir lacks of config.json, label_counts.npy and (tf-idf input)
    feature_idf.npy, each atomically; call it once the run is accepted (``check_run`` and the
    checkpoint's own record). config.json goes last: it marks a complete workdir.

    With several processes (multi-host), process 0 writes and the others wait for it.
    """
    if jax.process_index() == 0:
        with storage_errors(workdir, "writing the run's files"):
            workdir.mkdir(parents=True, exist_ok=True)
            if not (workdir / LABEL_COUNTS_FILE).exists():
                _save_array(workdir / LABEL_COUNTS_FILE, label_counts.astype(np.int64))
            if feature_idf is not None and not (workdir / FEATURE_IDF_FILE).exists():
                _save_array(workdir / FEATURE_IDF_FILE, feature_idf.astype(np.float32))
            if not (workdir / CONFIG_FILE).exists():
                write_json_atomically(workdir / CONFIG_FILE, payload(config, info, data_fingerprint))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"mach_jax.write_run:{workdir}")


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as file:
        np.save(file, array, allow_pickle=False)


@contextlib.contextmanager
def storage_errors(folder: Path, doing: str):
    """Turns a failed write (a full disk, a read-only or foreign folder) into one WorkdirError."""
    try:
        yield
    except OSError as error:
        if isinstance(error, FileNotFoundError) or error.errno not in WRITE_ERRNOS:
            raise
        where = error.filename or folder
        raise WorkdirError(f"{where}: {error.strerror} while {doing}; free space or give --workdir a "
                           "folder you can write to, then run the same command again") from None


@dataclasses.dataclass(frozen=True)
class Group:
    """One trained group of members: its folder and the repetition ids it holds."""

    path: Path
    rep_ids: tuple[int, ...]


def find_groups(workdirs: list[Path]) -> tuple[Config, RunInfo, list[Group]]:
    """Finds every trained group under the workdirs and checks they form one ensemble.

    A workdir is either one run (it has config.json) or holds groups ``reps-START-STOP/``
    trained by independent processes. Groups must agree on everything but their members
    (B, L, D, seeds, hidden sizes, loss, data, ...), must not overlap, and must together hold
    members 0..R-1.

    Returns:
      ``(config, info, groups)``: the shared config (``parallel.rep_range`` cleared), the shared
      RunInfo, and the groups ordered by their first member.
    """
    folders = []
    for workdir in map(Path, workdirs):
        if (workdir / CONFIG_FILE).exists():
            folders.append(workdir)
            continue
        found = sorted(p for p in workdir.glob(f"{GROUP_PREFIX}*") if (p / CONFIG_FILE).exists())
        if not found:
            raise WorkdirError(f"{workdir}: no {CONFIG_FILE} and no trained {GROUP_PREFIX}START-STOP "
                               "groups; is it a workdir written by mach_jax.train?")
        folders.extend(found)
    runs = [(folder, *read_run(folder)) for folder in folders]
    first_folder, first_config, first_info = runs[0]
    groups, owner = [], {}
    for folder, config, info in runs:
        # Unlike a resumed run, groups must also agree on the epochs they were trained for.
        difference = _first_difference(_flatten(first_config.to_dict()), _flatten(config.to_dict()),
                                       frozenset({"parallel.rep_range"}), check={"train.epochs"})
        if difference:
            key, first_value, value = difference
            raise WorkdirError(f"inconsistent groups: {folder} has {key}={value!r} but {first_folder} "
                               f"has {first_value!r}; they are not one ensemble")
        if not _same_data(info, first_info):
            raise WorkdirError(f"inconsistent groups: {folder} was trained on data with {info}, "
                               f"{first_folder} on {first_info}")
        if not np.array_equal(read_label_counts(folder, info.num_labels), read_label_counts(first_folder)):
            raise WorkdirError(f"{folder}: trained on other data than {first_folder} (label counts differ)")
        rep_ids = config.parallel.rep_ids(config.model.num_repetitions)
        for rep in rep_ids:
            if rep in owner:
                raise WorkdirError(f"{folder} and {owner[rep]} both hold member {rep}: overlapping groups")
            owner[rep] = folder
        groups.append(Group(folder, rep_ids))
    num_reps = first_config.model.num_repetitions
    missing = sorted(set(range(num_reps)) - set(owner))
    if missing:
        raise WorkdirError(f"members {_ranges(missing)} of the R={num_reps} ensemble are in none of "
                           f"{[str(w) for w in workdirs]}; train them (--reps) or pass their workdirs")
    merged = first_config.replace(parallel={"rep_range": ()})
    return merged, first_info, sorted(groups, key=lambda group: group.rep_ids[0])


def _ranges(ids: list[int]) -> str:
    spans, start = [], ids[0]
    for previous, current in zip(ids, ids[1:] + [None]):
        if current != previous + 1:
            spans.append(f"{start}:{previous + 1}")
            start = current
    return ", ".join(spans)


def read_run(workdir: Path) -> tuple[Config, RunInfo]:
    """Reads config.json (``run_file.read_run_file``); a clear WorkdirError when it is missing,
    damaged or of another format."""
    saved = read_run_file(workdir)
    return saved.config, saved.info


def read_label_counts(workdir: Path, num_labels: int | None = None) -> np.ndarray:
    """Training label counts int [L] (for the propensity-scored metrics)."""
    counts = read_array(workdir, LABEL_COUNTS_FILE, "the training label counts", num_labels, integer=True)
    if counts is None:
        raise WorkdirError(f"{Path(workdir) / LABEL_COUNTS_FILE}: not found; it holds the training label "
                           "counts: re-run the training command to write it again")
    return counts


def read_feature_idf(workdir: Path) -> np.ndarray | None:
    """The training features' idf, float32 [D], of a run with a tf-idf input (else None)."""
    return read_array(workdir, FEATURE_IDF_FILE, "the training features' idf")


def write_metrics(workdir: Path, metrics: dict[str, Any]) -> Path:
    """Writes ``metrics.json`` atomically; a failed write is a WorkdirError."""
    path = Path(workdir) / METRICS_FILE
    with storage_errors(Path(workdir), f"writing {path.name}"):
        write_json_atomically(path, metrics)
    return path



def recorded_config(workdir: Path) -> Config | None:
    """The config the run in ``workdir`` recorded or, for a group not yet started, the first
    recorded by a group beside it (``reps-*``: one ensemble); None where there is none.

    Raises:
      WorkdirError: the run's own config.json is damaged (a sibling's is skipped: its own run
        reports it).
    """
    workdir = Path(workdir)
    if (workdir / CONFIG_FILE).exists():
        return read_run_file(workdir).config
    siblings = workdir.parent.glob(f"{GROUP_PREFIX}*") if workdir.name.startswith(GROUP_PREFIX) else ()
    for folder in sorted(p for p in siblings if p != workdir and (p / CONFIG_FILE).exists()):
        try:
            return read_run_file(folder).config
        except WorkdirError:
            continue
    return None
