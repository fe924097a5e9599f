"""Which registry dataset a training file is, for the conventions that follow the dataset.

The Extreme Classification Repository's evaluation tools score PSP@k with a propensity model
whose A, B depend on the dataset (`registry.DatasetInfo.propensity_a`/`propensity_b`). A run
on a registry dataset uses them: the dataset is known from the ``.verified.json`` marker that
``python -m mach_jax.datasets download`` leaves beside the files, or else from its shape (D and
L, which no two registry entries share).
"""

from __future__ import annotations

import json
from pathlib import Path

from mach_jax.config.evaluation import DEFAULT_PROPENSITY
from mach_jax.data.download import MARKER
from mach_jax.data.registry import REGISTRY, DatasetInfo


def _from_marker(train_path: str, num_features: int, num_labels: int) -> DatasetInfo | None:
    try:
        marker = json.loads((Path(train_path).parent / MARKER).read_text())
        entry = REGISTRY.get(str(marker["dataset"]["name"]).lower())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry is None or (entry.num_features, entry.num_labels) != (num_features, num_labels):
        return None
    return entry


def identify(train_path: str | None, num_features: int, num_labels: int) -> tuple[DatasetInfo, str] | None:
    """The registry entry the training data is, and how it was known, or None.

    Args:
      train_path: the training file (its folder may hold the downloader's marker), or None.
      num_features, num_labels: D and L of the data.

    Returns:
      ``(entry, "downloaded")`` when the marker names an entry of this D and L, ``(entry,
      "shape")`` when an entry has this D and L, else None.
    """
    if train_path:
        entry = _from_marker(train_path, num_features, num_labels)
        if entry is not None:
            return entry, "downloaded"
    for entry in REGISTRY.values():
        if (entry.num_features, entry.num_labels) == (num_features, num_labels):
            return entry, "shape"
    return None


def propensity_for(train_path: str | None, num_features: int, num_labels: int) -> tuple[float, float, str]:
    """(A, B, where they come from) of PSP@k for this training data."""
    found = identify(train_path, num_features, num_labels)
    if found is None:
        return (*DEFAULT_PROPENSITY, "the repository's default")
    entry, how = found
    known = "its download record" if how == "downloaded" else f"D = {num_features:,}, L = {num_labels:,}"
    return entry.propensity_a, entry.propensity_b, f"{entry.name}'s convention, known by {known}"
