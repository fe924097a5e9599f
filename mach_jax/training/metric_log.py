"""Training metrics on disk: ``metrics.jsonl`` in the workdir, and TensorBoard event files.

Every record is one JSON line with a ``kind``:

- ``start``: a training session began at ``step`` (0, or the step of the restored checkpoint);
- ``train``: one log interval: ``loss`` (mean over this process's members), ``member_loss``
  ({repetition id: loss}), both averaged over the interval's steps, ``examples_per_sec``,
  ``learning_rate``, ``train_seconds`` (the training time so far, over every session: a resumed
  run adds its time to the restored step's);
- ``eval``: P@k, nDCG@k, PSP@k of the ensemble on the test set after ``epoch`` epochs (every
  ``train.eval_every_epochs``, and always at the end: ``final`` is true there).

Each record also has ``step``, ``epoch`` (step / steps per epoch, so fractional inside an epoch)
and ``wall_time`` (Unix seconds). The same numbers go to ``tensorboard/`` as scalars (tags
``loss/mean``, ``loss/member_R``, ``train/...``, ``eval/...``).

Resuming appends; nothing is ever truncated. What a crashed session logged after its last
checkpoint is not deleted but *superseded*: the new session writes a ``start`` record at the
restored step s, and ``read_records`` drops every earlier record with step > s (TensorBoard does
the same on the event files, through a SessionLog.START at step s + 1). A record for a step
already logged by an earlier session and not superseded (the final evaluation of a run that is
re-run after it finished) is not written again: the first one stands.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from mach_jax.data.files import open_state_file
from mach_jax.training.tensorboard_writer import EventFileWriter

METRICS_LOG = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def metrics_log_file(workdir: str | Path, process_index: int = 0) -> Path:
    """Process 0 logs to ``metrics.jsonl``; other processes (multi-host) to their own file."""
    name = METRICS_LOG if process_index == 0 else f"metrics.process{process_index}.jsonl"
    return Path(workdir) / name


def tensorboard_dir(workdir: str | Path, process_index: int = 0) -> Path:
    """``tensorboard/`` for process 0; ``tensorboard/process<i>/`` (a run of its own) for others."""
    base = Path(workdir) / TENSORBOARD_DIR
    return base if process_index == 0 else base / f"process{process_index}"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics log, superseded ones removed (see the module docstring).

    A torn last line (a crash while writing) is skipped. Returns [] for a missing file.
    """
    path = Path(path)
    return _parse_records(path.read_text()) if path.exists() else []


def _parse_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "start":
            records = [r for r in records if r["step"] <= record["step"]]
        records.append(record)
    return records


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of a record: {tag: value}."""
    kind = record.get("kind")
    if kind == "train":
        out = {"loss/mean": record["loss"]}
        out.update({f"loss/member_{rep}": value for rep, value in record["member_loss"].items()})
        out.update({f"train/{key}": record[key] for key in ("examples_per_sec", "learning_rate", "epoch")
                    if key in record})
        return out
    if kind == "eval":  # the metrics (P@k, nDCG@k, PSP@k), not the settings
        return {f"eval/{key}": value for key, value in record.items() if "@" in key}
    return {}


class MetricLog:
    """Writes records to ``metrics.jsonl`` and a TensorBoard event file, for one session.

    Args:
      workdir: the run's folder (a repetition group's folder for a group).
      start_step: the step training starts from (the restored checkpoint's, or 0).
      process_index: ``jax.process_index()``; each process writes its own files.
      steps_per_epoch: to turn steps into (fractional) epochs.
    """

    def __init__(self, workdir: str | Path, start_step: int, process_index: int = 0,
                 steps_per_epoch: int = 1):
        self.path = metrics_log_file(workdir, process_index)
        self.steps_per_epoch = steps_per_epoch
        text = self.path.read_text() if self.path.exists() else ""
        kept = [r for r in _parse_records(text) if r["step"] <= start_step]
        # The newest step each kind has logged (and that stays valid): later ones are new.
        self._last_step: dict[str, int] = {}
        # The training time of the sessions before, up to the restored step (0 for a new run), and
        # as of the newest train record (``write``).
        self.train_seconds_before = next((r["train_seconds"] for r in reversed(kept)
                                          if r.get("kind") == "train" and "train_seconds" in r), 0.0)
        self.train_seconds = self.train_seconds_before
        for record in kept:
            kind = record.get("kind")
            self._last_step[kind] = max(self._last_step.get(kind, -1), record["step"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_state_file(self.path)
        if text and not text.endswith("\n"):  # a crash cut the last line: end it
            self._file.write("\n")
        self._events = EventFileWriter(tensorboard_dir(workdir, process_index))
        self._events.add_session_start(start_step + 1)  # purges steps > start_step in older files
        self._append({"kind": "start", "step": start_step, "wall_time": time.time()})

    def write(self, kind: str, step: int, **fields: Any) -> dict[str, Any] | None:
        """Logs one record (``epoch`` and ``wall_time`` are added); None if its step was logged."""
        if step <= self._last_step.get(kind, -1):
            return None
        record = {"kind": kind, "step": step, "epoch": step / self.steps_per_epoch,
                  "wall_time": time.time(), **fields}
        self._last_step[kind] = step
        if kind == "train" and "train_seconds" in fields:
            self.train_seconds = fields["train_seconds"]
        self._append(record)
        self._events.add_scalars(step, {tag: value for tag, value in scalars(record).items()
                                        if math.isfinite(value)}, record["wall_time"])
        return record

    def _append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self._events.close()

    def __enter__(self) -> "MetricLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
