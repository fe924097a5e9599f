"""The workdir format's versions, and the one migration from the older to the current one.

``config.json`` carries ``format_version``. Version 2 (current) records the training rows'
nonzero entries (``run_info.feature_entries``), from which "auto" picks the input layer and the
embedding update (``core.backend``); version 1 did not, and its "auto" was resolved by the
widest row instead, and its config may hold the retired ``eval.top_k``. ``migrate`` reads a
version-1 file as a version-2 one: the retired keys dropped, and the choices its run was trained
with written into its config (``model.input_layer``, ``train.embedding_update``), so no rule of
today's code ever needs to know how version 1 decided. A resumed run, or a new group beside
recorded ones, then keeps those choices (``keep_recorded_choices``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mach_jax.config import FORMAT_VERSION, Config
from mach_jax.config.tree import RETIRED_FIELDS
from mach_jax.errors import WorkdirError

# Version 1's rules, for runs without recorded entries (the widest row's K stood for the mean):
# the bag is a dense matmul for D' <= 16 K, the embedding updated row-sparsely for D' >= 1.5 N K.
_V1_DENSE_INPUT_RATIO, _V1_LAZY_RATIO = 16, 1.5
# The fields "auto" resolves from the data: a recorded choice is kept on resume.
CHOICES = (("model", "input_layer"), ("train", "embedding_update"))


def migrate(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    """``config.json``'s tree in the current format (the file itself is left as written: it is
    read through this function every time).

    Raises:
      WorkdirError: the version is neither 1 nor the current one (naming the file).
    """
    version = tree.get("format_version")
    if version == FORMAT_VERSION:
        return tree
    if version != 1:
        raise WorkdirError(f"{path}: format_version {version!r}, this mach_jax reads 1 to {FORMAT_VERSION}")
    return _from_version_1(copy.deepcopy(tree))


def current_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint record's run identity (``{"config", "run_info", ...}``, written by the run's
    format) as the current format writes it: what ``migrate`` does to ``config.json``."""
    if isinstance(identity.get("config"), dict) and isinstance(identity.get("run_info"), dict):
        return _as_current(copy.deepcopy(identity))
    return identity


def _from_version_1(tree: dict[str, Any]) -> dict[str, Any]:
    tree = _as_current(tree)
    tree["format_version"] = FORMAT_VERSION
    return tree


def _as_current(tree: dict[str, Any]) -> dict[str, Any]:
    """Retired keys dropped; without recorded entries, the widest row's choices pinned."""
    config, run_info = tree["config"], tree["run_info"]
    for retired in RETIRED_FIELDS:
        section, _, name = retired.partition(".")
        if isinstance(config.get(section), dict):
            config[section].pop(name, None)
    if not run_info.get("feature_entries"):
        _pin_widest_row_choices(config, run_info)
        run_info["feature_entries"] = 0  # unknown: nothing reads it once the choices are pinned
    return tree


def _pin_widest_row_choices(config: dict[str, Any], run_info: dict[str, Any]) -> None:
    """Writes what version 1 resolved "auto" to (by the widest row, K) into the config tree."""
    model, train = config.get("model", {}), config.get("train", {})
    try:
        rows = model.get("feat_hash_dim") or run_info["num_features"]
        widest = run_info["max_nnz"]
        if model.get("input_layer", "auto") == "auto":
            model["input_layer"] = "dense" if rows <= _V1_DENSE_INPUT_RATIO * widest else "sparse"
        if train.get("embedding_update", "auto") == "auto":
            lazy = model["input_layer"] == "sparse" and rows >= _V1_LAZY_RATIO * train["batch_size"] * widest
            train["embedding_update"] = "lazy" if lazy else "dense"
    except (KeyError, TypeError):  # a damaged file: read_run_file's checks name the problem
        return
    config["model"], config["train"] = model, train


def keep_recorded_choices(config: Config, recorded: Config | None) -> Config:
    """``config`` with the choices ``recorded`` made (a workdir's, or a sibling group's) where
    ``config`` leaves them to "auto": a run resumes, and a group joins its ensemble, with the
    implementations they were trained with."""
    if recorded is None:
        return config
    changes: dict[str, dict[str, str]] = {}
    for section, name in CHOICES:
        mine, theirs = getattr(getattr(config, section), name), getattr(getattr(recorded, section), name)
        if mine == "auto" and theirs != "auto":
            changes.setdefault(section, {})[name] = theirs
    return config.replace(**changes) if changes else config
