"""What a run is (``identity``: its config, what the data fixed, the data's fingerprint) and by
what a new run may not continue it: the comparison ``config.json`` and every checkpoint's record
are checked with (``storage.workdir``, ``storage.checkpoints``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mach_jax.config import Config, resumable_fields
from mach_jax.config.tree import RETIRED_FIELDS
from mach_jax.data.prepare import RunInfo
from mach_jax.storage import migration


def identity(config: Config, info: RunInfo, data_fingerprint: str | None) -> dict[str, Any]:
    """What a run is, as JSON (config.json and every checkpoint's record hold it): the config,
    what the data fixed, and the data's fingerprint."""
    return json.loads(json.dumps({"config": config.to_dict(), "run_info": dataclasses.asdict(info),
                                  "data_fingerprint": data_fingerprint}))


def identity_difference(saved: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first ``(what, saved, new)`` by which run ``new`` may not continue run ``saved`` (both
    from ``identity``): a config field a resumed run may not change (``train.epochs`` too under a
    decaying schedule), the data's shape (``"data"``) or content (``"data_fingerprint"``; skipped
    when either lacks one: older workdirs)."""
    saved = migration.current_identity(saved)  # a record written by an older format
    saved_flat, new_flat = _flatten(saved["config"]), _flatten(new["config"])
    check = {"train.epochs"} if saved_flat.get("train.lr_schedule", "constant") != "constant" else set()
    difference = _first_difference(saved_flat, new_flat, check=check)
    if difference:
        return difference
    saved_info, new_info = _comparable(saved["run_info"], new["run_info"])
    if saved_info != new_info:
        return "data", saved_info, new_info
    fingerprints = saved.get("data_fingerprint"), new.get("data_fingerprint")
    if None not in fingerprints and fingerprints[0] != fingerprints[1]:
        return "data_fingerprint", *fingerprints
    return None


def describe_difference(who: str, saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The refusal of a run ``new`` in a folder trained as ``saved`` (``who`` names the folder or
    the checkpoint), or None when it may continue it."""
    difference = identity_difference(saved, new)
    if difference is None:
        return None
    what, saved_value, new_value = difference
    if what == "data":
        return (f"{who} was trained on data with {_shape(saved_value)}, this run's data gives "
                f"{_shape(new_value)}; use another --workdir")
    if what == "data_fingerprint":
        return (f"{who} was trained on other data: same N, D, L and widths, other content (training data "
                f"fingerprint {saved_value[:19]}..., this run's {new_value[:19]}...); use another --workdir")
    return (f"{who} was trained with {what}={saved_value!r}, this run asks for {new_value!r}; use "
            "another --workdir or the same settings")


def _shape(run_info: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in run_info.items())


def _same_data(a: RunInfo, b: RunInfo) -> bool:
    """Whether two runs saw the same data shape (``_comparable``)."""
    first, second = _comparable(dataclasses.asdict(a), dataclasses.asdict(b))
    return first == second


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two runs' ``run_info`` as they are compared: without the training file's name (the file
    may have moved) and the training rows' entries (they follow from the data, whose fingerprint
    is compared; a run migrated from format 1 has none recorded)."""
    drop = {"train_source", "feature_entries"}
    return ({k: v for k, v in a.items() if k not in drop}, {k: v for k, v in b.items() if k not in drop})


def _first_difference(saved_flat: dict[str, Any], new_flat: dict[str, Any],
                      ignore: frozenset[str] = frozenset(), check: set[str] = frozenset()):
    """The first (field, saved value, new value) that a resumed run or a group may not change.

    The fields a resumed run may change (``config.resumable_fields``), retired fields and
    ``ignore`` are skipped, unless in ``check``.
    """
    for key in sorted(saved_flat):
        skipped = key in resumable_fields() or key in ignore or key in RETIRED_FIELDS
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
