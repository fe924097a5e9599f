"""A training workdir: ``config.json``, ``label_counts.npy``, ``checkpoints/`` and ``metrics.json``.

``config.json`` holds the config tree and what the data fixed (D, L, the batch geometry, the
training-set size), so that evaluation and prediction need nothing but the workdir: the hashes
are recomputed from the seeds in the config. Checkpoints are written by Orbax's
CheckpointManager, atomically (a step folder appears only once it is complete).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mach_jax.config import FORMAT_VERSION, Config, resumable_fields
from mach_jax.data.files import write_json_atomically
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import WorkdirError

CONFIG_FILE = "config.json"
LABEL_COUNTS_FILE = "label_counts.npy"
FEATURE_IDF_FILE = "feature_idf.npy"
METRICS_FILE = "metrics.json"

GROUP_PREFIX = "reps-"


def group_dir(workdir: Path, rep_range: tuple[int, ...]) -> Path:
    """Where a run keeps its files: the workdir itself, or ``reps-START-STOP`` for a group."""
    return Path(workdir) / f"{GROUP_PREFIX}{rep_range[0]}-{rep_range[1]}" if rep_range else Path(workdir)


def write_run(workdir: Path, config: Config, info: RunInfo, label_counts: np.ndarray,
              feature_idf: np.ndarray | None = None) -> None:
    """Writes config.json, label_counts.npy (and feature_idf.npy for a tf-idf input), or checks
    them against an earlier run.

    With several processes (multi-host), process 0 writes and the others wait for it.
    """
    path = workdir / CONFIG_FILE
    if path.exists():
        saved_config, saved_info = read_run(workdir)
        _check_resumable(workdir, saved_config, saved_info, config, info)
        if not np.array_equal(read_label_counts(workdir), label_counts):
            raise WorkdirError(f"{workdir} was trained on other data (its label counts differ from "
                               "this run's training file); use another --workdir")
        saved_idf = read_feature_idf(workdir)
        if not (saved_idf is feature_idf is None or np.array_equal(saved_idf, feature_idf)):
            raise WorkdirError(f"{workdir} was trained on other data (its feature idf differs from "
                               "this run's training file); use another --workdir")
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(workdir / LABEL_COUNTS_FILE, label_counts.astype(np.int64), allow_pickle=False)
        if feature_idf is not None:
            np.save(workdir / FEATURE_IDF_FILE, feature_idf.astype(np.float32), allow_pickle=False)
        payload = {"format_version": FORMAT_VERSION, "config": config.to_dict(),
                   "run_info": dataclasses.asdict(info)}
        write_json_atomically(path, payload)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"mach_jax.write_run:{workdir}")


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
        difference = _first_difference(first_config, config, frozenset({"parallel.rep_range"}),
                                       check={"train.epochs"})
        if difference:
            key, first_value, value = difference
            raise WorkdirError(f"inconsistent groups: {folder} has {key}={value!r} but {first_folder} "
                               f"has {first_value!r}; they are not one ensemble")
        if not _same_data(info, first_info):
            raise WorkdirError(f"inconsistent groups: {folder} was trained on data with {info}, "
                               f"{first_folder} on {first_info}")
        if not np.array_equal(read_label_counts(folder), read_label_counts(first_folder)):
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
    """Reads config.json; a clear WorkdirError when it is missing or of another format."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise WorkdirError(f"{path}: not found; is {workdir} a mach_jax workdir that was trained?")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WorkdirError(f"{path}: not valid JSON ({error})") from None
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise WorkdirError(f"{path}: format_version {version!r}, this mach_jax reads {FORMAT_VERSION}")
    return Config.from_dict(payload["config"]), RunInfo(**payload["run_info"])


def read_label_counts(workdir: Path) -> np.ndarray:
    """Training label counts [L] (for the propensity-scored metrics)."""
    return np.load(Path(workdir) / LABEL_COUNTS_FILE, allow_pickle=False)


def read_feature_idf(workdir: Path) -> np.ndarray | None:
    """The training features' idf, float32 [D], of a run with a tf-idf input (else None)."""
    path = Path(workdir) / FEATURE_IDF_FILE
    return np.load(path, allow_pickle=False) if path.exists() else None


def write_metrics(workdir: Path, metrics: dict[str, Any]) -> Path:
    path = Path(workdir) / METRICS_FILE
    write_json_atomically(path, metrics)
    return path


def _check_resumable(workdir: Path, saved: Config, saved_info: RunInfo, config: Config,
                     info: RunInfo) -> None:
    # A decaying schedule is drawn over the run's total steps: more epochs would change its past.
    check = {"train.epochs"} if saved.train.lr_schedule != "constant" else set()
    difference = _first_difference(saved, config, check=check)
    if difference:
        key, saved_value, new_value = difference
        raise WorkdirError(f"{workdir} was trained with {key}={saved_value!r}, this run asks for "
                           f"{new_value!r}; use another --workdir or the same settings")
    if not _same_data(saved_info, info):
        raise WorkdirError(f"{workdir} was trained on data with {saved_info}, this run's data gives "
                           f"{info}; use another --workdir")


def _same_data(a: RunInfo, b: RunInfo) -> bool:
    """Whether two runs saw the same data shape (the file may have moved)."""
    return dataclasses.replace(a, train_source=b.train_source) == b


def _first_difference(saved: Config, config: Config, ignore: frozenset[str] = frozenset(),
                      check: set[str] = frozenset()):
    """The first (field, saved value, new value) that a resumed run or a group may not change.

    The fields a resumed run may change (``config.resumable_fields``) and ``ignore`` are skipped,
    unless in ``check``.
    """
    saved_flat, new_flat = _flatten(saved.to_dict()), _flatten(config.to_dict())
    for key in sorted(saved_flat):
        skipped = key in resumable_fields() or key in ignore
        if skipped and key not in check:
            continue
        if saved_flat[key] != new_flat.get(key):
            return key, saved_flat[key], new_flat.get(key)
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
