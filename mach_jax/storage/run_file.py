"""A workdir's own files, read strictly: ``config.json`` and the arrays beside it.

``config.json`` is ``{"format_version", "config", "run_info"}``; ``run_info`` holds what the
training data fixed (``RunInfo``) and, since checkpoints carry checksums, the training data's
fingerprint (``integrity.data_fingerprint``; absent in older workdirs). Anything else (a file
that is not UTF-8 JSON, a missing or unknown key, a value of the wrong type, an array file that is
not one) is a ``WorkdirError`` naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from mach_jax.config import FORMAT_VERSION, Config
from mach_jax.config.files import check_config_tree, read_json_object
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import ConfigError, WorkdirError
from mach_jax.storage import migration

CONFIG_FILE = "config.json"
LABEL_COUNTS_FILE = "label_counts.npy"
FEATURE_IDF_FILE = "feature_idf.npy"
FINGERPRINT_KEY = "data_fingerprint"  # in run_info

_PAYLOAD_KEYS = ("format_version", "config", "run_info")
_REWRITE = "re-run the training command to write it again"


@dataclasses.dataclass(frozen=True)
class RunFile:
    """What ``config.json`` says: the config, the RunInfo and the data fingerprint (or None)."""

    config: Config
    info: RunInfo
    data_fingerprint: str | None


def payload(config: Config, info: RunInfo, data_fingerprint: str | None) -> dict[str, Any]:
    """The JSON tree ``config.json`` holds."""
    run_info = dataclasses.asdict(info)
    if data_fingerprint is not None:
        run_info[FINGERPRINT_KEY] = data_fingerprint
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), "run_info": run_info}


def read_run_file(workdir: Path) -> RunFile:
    """Reads and checks ``workdir/config.json``.

    Raises:
      WorkdirError: it is missing, unreadable, or not what training writes (naming the problem).
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise WorkdirError(f"{path}: not found; is {workdir} a mach_jax workdir that was trained?")
    tree = migration.migrate(_load_json(path), path)  # an older format read as the current one
    try:
        check_config_tree(tree["config"], note_retired=False)
        config = Config.from_dict(tree["config"])
    except ConfigError as error:
        raise WorkdirError(f"{path}: {error}; was it edited? put back the run's own config.json") from None
    run_info = dict(tree["run_info"])
    fingerprint = run_info.pop(FINGERPRINT_KEY, None)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise WorkdirError(f"{path}: run_info.{FINGERPRINT_KEY} must be a string, got {json.dumps(fingerprint)}")
    return RunFile(config, _run_info(path, run_info), fingerprint)


def _load_json(path: Path) -> dict[str, Any]:
    tree = read_json_object(path, WorkdirError, expected=f"a JSON object with {', '.join(_PAYLOAD_KEYS)}",
                            remedy="put back the run's own config.json")
    unknown = sorted(set(tree) - set(_PAYLOAD_KEYS))
    missing = [key for key in _PAYLOAD_KEYS if key not in tree]
    if unknown or missing:
        problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
        raise WorkdirError(f"{path}: {problem} (it holds {', '.join(_PAYLOAD_KEYS)}); put back the run's "
                           "own config.json")
    for key in ("config", "run_info"):
        if not isinstance(tree[key], dict):
            raise WorkdirError(f"{path}: {key!r} must be a JSON object, got {json.dumps(tree[key])[:80]}")
    return tree


def _run_info(path: Path, fields: dict[str, Any]) -> RunInfo:
    expected = {field.name: field.type for field in dataclasses.fields(RunInfo)}
    for name in fields:
        if name not in expected:
            raise WorkdirError(f"{path}: unknown key run_info.{name}; put back the run's own config.json")
    for name, kind in expected.items():
        if name not in fields:
            raise WorkdirError(f"{path}: run_info has no {name!r}; put back the run's own config.json")
        value = fields[name]
        fits = isinstance(value, str) if kind == "str" else (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        if not fits:
            wanted = "a string" if kind == "str" else "a non-negative integer"
            raise WorkdirError(f"{path}: run_info.{name} must be {wanted}, got {json.dumps(value)}; put "
                               "back the run's own config.json")
    return RunInfo(**fields)


def read_array(workdir: Path, name: str, what: str, length: int | None = None,
               integer: bool = False) -> np.ndarray | None:
    """A 1-D array file of the workdir (None when it is missing), checked.

    Args:
      workdir: the folder.
      name: the file name (``LABEL_COUNTS_FILE``, ...).
      what: what it holds, for messages ("the training label counts").
      length: the length it must have (L or D), or None.
      integer: whether it must hold non-negative integers (counts).
    """
    path = Path(workdir) / name
    if not path.exists():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise WorkdirError(f"{path}: not a numpy array file: it is damaged; it holds {what}: delete it "
                           f"and {_REWRITE}") from None
    if integer and np.issubdtype(array.dtype, np.integer) and array.ndim == 1 and (array < 0).any():
        first = int(np.argmax(array < 0))
        raise WorkdirError(f"{path}: holds a negative count ({int(array[first])} at index {first}), not {what}: "
                           f"it is damaged; delete it and {_REWRITE}")
    kind_ok = np.issubdtype(array.dtype, np.integer) if integer else np.issubdtype(array.dtype, np.floating)
    if array.ndim != 1 or not kind_ok or (length is not None and len(array) != length):
        expected = f"[{length}]" if length is not None else "1-D"
        raise WorkdirError(f"{path}: holds {array.dtype} values of shape {list(array.shape)}, not {what} "
                           f"({expected}): it is damaged or from another run; delete it and {_REWRITE}")
    return array
