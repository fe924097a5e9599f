"""Config files: ``python -m mach_jax.train --config FILE`` starts from one, flags override it.

A file is either a workdir's ``config.json`` (``{"format_version": ..., "config": {...},
"run_info": {...}}``: its config is taken, the rest ignored) or a config tree written by hand,
whole or in part: ``{"model": {"num_buckets": 2000}, "train": {"epochs": 5}}``. Fields it leaves
out keep the default preset's values. Every key and value is checked before anything runs: an
unknown or misspelt key is refused with its dotted path (and the closest known key), a value of
the wrong type with its path and the type expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from pathlib import Path
from typing import Any

from mach_jax.config.tree import FORMAT_VERSION, RETIRED_FIELDS, Config
from mach_jax.errors import ConfigError

_WORKDIR_KEYS = {"format_version", "config", "run_info"}


def read_config_file(path: str | Path, base: Config | None = None) -> Config:
    """The config a file describes, over ``base`` (default: the default preset).

    Raises:
      ConfigError: the file cannot be read, is not a JSON object, or has an unknown key or a
        value of the wrong type (the message names the file and the key's dotted path).
    """
    tree = _load(Path(path))
    check_config_tree(tree, str(path))
    for retired in RETIRED_FIELDS:
        section, _, name = retired.partition(".")
        if isinstance(tree.get(section), dict):
            tree[section] = {key: value for key, value in tree[section].items() if key != name}
    return (base or Config()).replace(**tree)


def read_json_object(path: str | Path, error: type[Exception] = ConfigError, expected: str = "a JSON object",
                     remedy: str = "") -> dict[str, Any]:
    """The JSON object in ``path``: the one reader of the package's JSON files (config files,
    ``config.json``, the re-ranker's record).

    Raises:
      ``error``: the file cannot be read, is not UTF-8 text (a byte-order mark is allowed), not
        valid JSON or not an object: one line naming the file, where, what, then ``remedy``.
    """
    after = f"; {remedy}" if remedy else ""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}){after}") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e}){after}") from None
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}){after}") from None
    if not isinstance(tree, dict):
        raise error(f"{path}: expected {expected}, got {type(tree).__name__}{after}")
    return tree


def _load(path: Path) -> dict[str, Any]:
    tree = read_json_object(path, expected="a JSON object of config sections")
    if "config" in tree and set(tree) <= _WORKDIR_KEYS:  # a workdir's config.json
        version = tree.get("format_version")
        if version is not None and version not in range(1, FORMAT_VERSION + 1):  # its config: any version
            raise ConfigError(f"{path}: format_version {version!r}, this mach_jax reads 1 to {FORMAT_VERSION}")
        tree = tree["config"]
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: \"config\" must be a JSON object")
    return tree


def check_config_tree(tree: dict[str, Any], source: str | None = None, note_retired: bool = True) -> None:
    """Checks a config tree as JSON holds it, whole or in part: every key known, every value of its
    field's type (a number is not a string). Retired keys are skipped, with a note if
    ``note_retired``.

    Raises:
      ConfigError: naming the key's dotted path (after ``source: `` when given).
    """
    _check_tree(tree, Config, "", f"{source}: " if source else "", note_retired)


def _check_tree(tree: dict[str, Any], cls: type, where: str, prefix: str, note_retired: bool) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    for key, value in tree.items():
        path = f"{where}{key}"
        if path in RETIRED_FIELDS:
            if note_retired:
                logging.getLogger("mach_jax").warning(f"{prefix}{path} is ignored: {RETIRED_FIELDS[path]}")
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{prefix}unknown key {path}{hint}")
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{path} must be a JSON object of its fields, got {value!r}")
            _check_tree(value, type(default), f"{path}.", prefix, note_retired)
        else:
            _check_value(value, fields[key].type, path, prefix)


_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string",
             "tuple[int, ...]": "a list of integers"}


def _check_value(value: Any, annotation: str, path: str, prefix: str) -> None:
    base = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return
    fits = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "tuple[int, ...]": lambda v: isinstance(v, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v)}[base]
    if not fits(value):
        expected = _EXPECTED[base] + (" or null" if "None" in annotation else "")
        raise ConfigError(f"{prefix}{path} must be {expected}, got {json.dumps(value)}")
