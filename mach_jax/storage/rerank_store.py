"""Where a workdir keeps its re-ranker: ``rerank/rerank.json`` (a record) and ``rerank/checkpoints/``.

The record says what the re-ranker was trained for and with (D, L, the ``rerank`` settings, the
read-out that proposed its shortlists) and how far its training got (``epochs_done``,
``finished``); the checkpoints hold its parameters and optimizer state after each epoch, written
by Orbax like the members' (``storage.checkpoints``). A finished re-ranker whose members trained on
since (``members_step`` of its record behind their newest checkpoint) is not used: evaluate and
predict read out with the members alone, with a warning. A run with groups keeps it in the top
workdir, beside the ``reps-START-STOP/`` folders: it is trained on the merged ensemble.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mach_jax.config.files import read_json_object
from mach_jax.data.files import write_json_atomically
from mach_jax.errors import WorkdirError
from mach_jax.storage.checkpoint_records import training_progress
from mach_jax.storage.run_file import CONFIG_FILE
from mach_jax.storage.workdir import GROUP_PREFIX, storage_errors

RERANK_DIR = "rerank"
RECORD_FILE = "rerank.json"

log = logging.getLogger("mach_jax")


def rerank_dir(workdir: Path) -> Path:
    return Path(workdir) / RERANK_DIR


def record_path(workdir: Path) -> Path:
    return rerank_dir(workdir) / RECORD_FILE


def read_record(workdir: Path, current_only: bool = True) -> dict[str, Any] | None:
    """The saved record, or None when the workdir has no re-ranker, or (``current_only``) has a
    finished one fitted to members that trained on since: then a warning says the read-out goes
    on without it (``members_moved_on``)."""
    record = _read(workdir)
    if record is not None and current_only and record.get("finished"):
        newer = members_moved_on(workdir, record)
        if newer is not None:
            log.warning(f"warning: {rerank_dir(workdir)}: the re-ranker was fitted to the members of step "
                        f"{record.get('members_step')}, they are at step {newer} now: reading out without it "
                        f"(members only); delete {rerank_dir(workdir)} and run python -m mach_jax.rerank "
                        f"--workdir {workdir} to fit it again")
            return None
    return record


def members_moved_on(workdir: Path, record: dict[str, Any]) -> int | None:
    """The members' newest checkpoint step (of the workdir, or of its newest group) where it is past
    the step the re-ranker was fitted to (its record's ``members_step``), else None."""
    folders = [Path(workdir)] if (Path(workdir) / CONFIG_FILE).exists() else sorted(
        Path(workdir).glob(f"{GROUP_PREFIX}*"))
    steps = [training_progress(folder).step for folder in folders]
    newest = max((step for step in steps if step is not None), default=None)
    fitted = record.get("members_step")
    return newest if isinstance(fitted, int) and newest is not None and newest > fitted else None


def _read(workdir: Path) -> dict[str, Any] | None:
    path = record_path(workdir)
    if not path.exists():
        return None
    return read_json_object(path, WorkdirError,
                            remedy=f"delete {rerank_dir(workdir)} to train the re-ranker again")


def write_record(workdir: Path, record: dict[str, Any] | None) -> None:
    """Writes the record atomically (a failed write: WorkdirError); None (a stale re-ranker, as
    ``read_record`` gives it) writes nothing."""
    if record is None:
        return
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
