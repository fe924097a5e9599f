"""Where a workdir keeps its re-ranker: ``rerank/rerank.json`` (a record) and ``rerank/checkpoints/``.

The record says what the re-ranker was trained for and with (D, L, the ``rerank`` settings, the
read-out that proposed its shortlists) and how far its training got (``epochs_done``,
``finished``); the checkpoints hold its parameters and optimizer state after each epoch, written
by Orbax like the members' (``storage.checkpoints``). A run with groups keeps it in the top
workdir, beside the ``reps-START-STOP/`` folders: it is trained on the merged ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mach_jax.data.files import write_json_atomically
from mach_jax.errors import WorkdirError
from mach_jax.storage.workdir import storage_errors

RERANK_DIR = "rerank"
RECORD_FILE = "rerank.json"


def rerank_dir(workdir: Path) -> Path:
    return Path(workdir) / RERANK_DIR


def record_path(workdir: Path) -> Path:
    return rerank_dir(workdir) / RECORD_FILE


def read_record(workdir: Path) -> dict[str, Any] | None:
    """The saved record, or None when the workdir has no re-ranker."""
    path = record_path(workdir)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = (f"not valid JSON ({error.msg}, line {error.lineno})" if isinstance(error, json.JSONDecodeError)
                   else f"not UTF-8 text (byte {error.start})")
        raise WorkdirError(f"{path}: {problem}; delete {rerank_dir(workdir)} to train the re-ranker "
                           "again") from None
    if not isinstance(record, dict):
        raise WorkdirError(f"{path}: expected a JSON object, got {type(record).__name__}; delete "
                           f"{rerank_dir(workdir)} to train the re-ranker again")
    return record


def write_record(workdir: Path, record: dict[str, Any]) -> None:
    """Writes the record atomically (a failed write: WorkdirError)."""
    with storage_errors(rerank_dir(workdir), "writing the re-ranker's record"):
        rerank_dir(workdir).mkdir(parents=True, exist_ok=True)
        write_json_atomically(record_path(workdir), record)


def check_resumable(workdir: Path, record: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """A started re-ranker resumes only for the same members, data and settings (``expected``
    holds the record's identifying fields: D, L, the members' number and checkpoint step, N, the
    ``rerank`` settings and the decoder that proposed the shortlists)."""
    if record is None:
        return
    for key, value in expected.items():
        if record.get(key) != value:
            raise WorkdirError(
                f"{record_path(workdir)}: the re-ranker here was started with {key}="
                f"{record.get(key)!r}, this run asks for {value!r}; delete {rerank_dir(workdir)} to "
                "train it again with the new settings")
