"""The record of each checkpoint (``FOLDER/checkpoints/<step>/``): what mach_jax writes into
Orbax's step metadata (checksums, the run's identity, the run's final step and the step itself),
read without touching the arrays.

A checkpoint's step is its record's, never its folder's name: a step folder renamed (``14`` to
``20``) is refused (``_record`` says why), so a run never resumes "at step 20" of a 14-step state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
RECORD_KEY = "mach_jax"
PARAMS_ONLY_KEY = "params_only"  # in the record of a checkpoint that holds the parameters alone
_STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step metadata file (its custom_metadata)


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a folder's training got: its newest checkpoint's step (None: none yet) and the
    step its run ends at (None when the checkpoint predates records)."""

    step: int | None
    final_step: int | None

    @property
    def finished(self) -> bool | None:
        return None if self.step is None or self.final_step is None else self.step >= self.final_step


def training_progress(folder: Path) -> Progress:
    """The newest checkpoint's step of ``folder`` and its run's final step (from its record);
    reads two small files, no arrays."""
    steps = _steps(Path(folder) / CHECKPOINT_DIR)
    if not steps:
        return Progress(None, None)
    record = _record(Path(folder) / CHECKPOINT_DIR, steps[0])
    final = record.get("final_step") if isinstance(record, dict) else None
    step = record.get("step", steps[0]) if isinstance(record, dict) else steps[0]
    return Progress(step if isinstance(step, int) else steps[0], final if isinstance(final, int) else None)


def _steps(directory: Path) -> list[int]:
    """The complete steps, newest first (Orbax writes a step under a temporary name first)."""
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True)


def _record(directory: Path, step: int) -> dict | None | str:
    """A step's record: a dict, None for a checkpoint saved without one, or why it is unreadable."""
    path = directory / str(step) / _STEP_METADATA
    try:
        record = json.loads(path.read_text()).get("custom_metadata", {}).get(RECORD_KEY)
    except FileNotFoundError:
        return f"its metadata file {_STEP_METADATA} is missing"
    except (OSError, ValueError, AttributeError) as error:
        return f"its metadata file {_STEP_METADATA} cannot be read ({str(error)[:100]})"
    return record if isinstance(record, dict) and isinstance(record.get("digests"), dict) else None


def misnamed(directory: Path, step: int, record: dict) -> str | None:
    """Why a step folder is not the step its record holds (None: it is, or the record predates
    steps in records); a message that restoring raises as it stands: renaming it back is all it takes."""
    recorded = record.get("step")
    if recorded is None or recorded == step:
        return None
    return (f"{directory / str(step)}: its record says it is the checkpoint of step {recorded}, not {step}: "
            f"the folder was renamed; rename it back to {directory / str(recorded)} (a checkpoint's step is "
            "read from its own record, never from its folder's name)")


