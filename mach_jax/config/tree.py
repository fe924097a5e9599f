"""The whole config tree: ``Config(data, model, train, eval, parallel, rerank, partition)``.

It round-trips through ``to_dict()`` / ``Config.from_dict()`` so that ``config.json`` in a
workdir is enough to rebuild the model, its hashes and its evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from mach_jax.config.partition import PartitionConfig
from mach_jax.config.rerank import RerankConfig
from mach_jax.config.evaluation import EvalConfig
from mach_jax.config.sections import (_RESUME, DataConfig, ModelConfig, ParallelConfig,
                                      TrainConfig)
from mach_jax.errors import ConfigError

# The workdir format (config.json): its versions and the one migration are storage/migration.py.
FORMAT_VERSION = 2

# Fields that older config.json files may hold but that no longer exist, with why; dropped on load.
RETIRED_FIELDS = {"eval.top_k": "P@1, P@3 and P@5 are always reported; larger k changed nothing"}


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole tree. ``validate()`` checks every section before anything is compiled."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    parallel: ParallelConfig = ParallelConfig()
    rerank: RerankConfig = RerankConfig()
    partition: PartitionConfig = PartitionConfig()

    def __post_init__(self):
        # A list given for a tuple field becomes a tuple, whether the config is read from a dict
        # (from_dict, replace) or built with dataclasses.replace: the config stays hashable, and
        # runs with equal configs share their compiled steps (core.compiled).
        for section in dataclasses.fields(self):
            part = getattr(self, section.name)
            lists = {field.name: tuple(getattr(part, field.name)) for field in dataclasses.fields(part)
                     if isinstance(field.default, tuple) and isinstance(getattr(part, field.name), list)}
            if lists:
                object.__setattr__(self, section.name, dataclasses.replace(part, **lists))

    def validate(self) -> "Config":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.eval.validate(self.model.num_repetitions)
        self.parallel.validate(self.model.num_repetitions, self.train.batch_size)
        self.rerank.validate()
        self.partition.validate()
        if self.rerank.enabled and self.parallel.rep_range:
            raise ConfigError("rerank.shortlist_size: a group (parallel.rep_range) cannot train the re-ranker, "
                              "which reads out every member; once all groups have finished, run "
                              "python -m mach_jax.rerank --workdir W", field="rerank.shortlist_size")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> "Config":
        return _from_dict(cls, tree, "config")

    def replace(self, **sections: dict[str, Any]) -> "Config":
        """Returns a copy with fields overridden per section, e.g. ``replace(model={"num_buckets": 64})``."""
        tree = self.to_dict()
        for section, fields in sections.items():
            if section not in tree:
                raise ConfigError(f"unknown config section {section!r}")
            _merge(tree[section], fields, section)
        return Config.from_dict(tree)


def _merge(tree: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for key, value in fields.items():
        if key not in tree:
            raise ConfigError(f"unknown config field {where}.{key}")
        if isinstance(tree[key], dict) and isinstance(value, dict):
            _merge(tree[key], value, f"{where}.{key}")
        else:
            tree[key] = value


def _from_dict(cls, tree: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    tree = {name: value for name, value in tree.items() if f"{where}.{name}".removeprefix("config.")
            not in RETIRED_FIELDS}
    unknown = set(tree) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config field(s) in {where}: {sorted(unknown)}")
    kwargs = {}
    for name, value in tree.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


@functools.cache  # of the classes alone: the workdir checks read it for every field they compare
def resumable_fields(cls: type = Config, prefix: str = "") -> frozenset[str]:
    """The dotted names of the fields declared ``may_change_on_resume``."""
    names = set()
    for field in dataclasses.fields(cls):
        default = getattr(cls(), field.name)
        if dataclasses.is_dataclass(default):
            names |= resumable_fields(type(default), f"{prefix}{field.name}.")
        elif field.metadata.get(_RESUME):
            names.add(f"{prefix}{field.name}")
    return frozenset(names)
