"""Refuses a run that cannot fit in memory before anything is allocated or written, saying what fits.

``require_fits(config, shape, data_file)`` logs the model's size and compares ``resources.estimate``
with the memory free now: on a GPU or TPU each device's (``memory_stats()``: bytes_limit less
bytes_in_use, the members split over the mesh's ``reps`` devices) and the host's RAM for the
host's parts; on the CPU the host's RAM for everything (the CPU device is host memory). A tenth
is kept spare for XLA's own buffers. A table that cannot be allocated would otherwise hang the
first step or crash with a memory traceback; here it is one line: the estimate by part, what is
free, what takes the most and why (the header's D or L, the widest row), and the values of the
flags that would fit, each the largest the estimate accepts (found by bisection).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

import jax

from mach_jax.config import Config
from mach_jax.core import mesh as mesh_lib
from mach_jax.errors import ConfigError, ResourceError
from mach_jax.training import resources
from mach_jax.training.resources import Estimate, RunShape, format_bytes

log = logging.getLogger("mach_jax")

FIT_FRACTION = 0.9  # of the free memory a run may plan to use
MEMINFO = Path("/proc/meminfo")
CGROUP_FILES = ((Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),  # v2
                (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # v1
                 Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")))


@dataclasses.dataclass(frozen=True)
class Budget:
    """Memory free now: ``device`` bytes on each device (None where the device's memory is the
    host's RAM, as on the CPU), ``host`` bytes of RAM; ``device_name`` names the device."""

    device: int | None
    host: int
    device_name: str = "host RAM"


def host_available() -> int:
    """Bytes of RAM free now: MemAvailable of /proc/meminfo, within a cgroup's limit, else sysconf's."""
    free = None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            free = min(free, max(int(limit) - usage, 0))
    return free


def memory_budget() -> Budget:
    """What this process's first device and the host have free."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return Budget(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), host_available(),
                      f"each {device.platform.upper()} ({device.device_kind})")
    return Budget(None, host_available())


def require_fits(config: Config, shape: RunShape, data_file: str | None = None,
                 budget: Budget | None = None) -> Estimate:
    """Logs the model's size and refuses (ResourceError) a run that does not fit in ``budget``.

    Args:
      config: the run's config, sized for the data (``prepare.filled_from_data``).
      shape: the data's ``resources.RunShape``.
      data_file: the training file its header's D and L come from (for the message), if any.
      budget: what is free (default: ``memory_budget()``, measured now).

    Returns:
      The estimate of the run's peak.
    """
    budget = budget or memory_budget()
    estimate = resources.estimate(config, shape, *_shards(config, budget), accelerator=budget.device is not None)
    need, free, where = _overflow(estimate, budget) or _usage(estimate, budget)
    log.info(f"model: {resources.describe_state(config, shape)}; peak memory about {format_bytes(need)} "
             f"(in {estimate.phase}) of {format_bytes(free)} free ({where}); {resources.describe_rules(config, shape)}")
    if _overflow(estimate, budget):
        raise ResourceError(_refusal(config, shape, estimate, budget, data_file))
    return estimate


def _shards(config: Config, budget: Budget) -> tuple[int, int]:
    """(rep devices, data devices) of the run's mesh; (1, 1) on the CPU, whose devices share the RAM."""
    if budget.device is None:
        return 1, 1
    parallel = config.parallel
    mesh = mesh_lib.make_mesh(parallel.num_members(config.model.num_repetitions), parallel.rep_devices,
                              parallel.data_devices)
    return mesh.shape[mesh_lib.REPS_AXIS], mesh.shape[mesh_lib.DATA_AXIS]


def _usage(estimate: Estimate, budget: Budget) -> tuple[int, int, str]:
    if budget.device is None:
        return estimate.total(), budget.host, "host RAM"
    return estimate.total(True), budget.device, budget.device_name


def _overflow(estimate: Estimate, budget: Budget) -> tuple[int, int, str] | None:
    """(bytes needed, bytes free, where) of the first memory the estimate does not fit in."""
    pools = [(estimate.total(), budget.host, "host RAM")] if budget.device is None else [
        (estimate.total(True), budget.device, budget.device_name), (estimate.total(False), budget.host, "host RAM")]
    return next((pool for pool in pools if pool[0] > FIT_FRACTION * pool[1]), None)


def fits(config: Config, shape: RunShape, budget: Budget, shards: tuple[int, int] | None = None) -> bool:
    """Whether the run fits in ``budget`` (False too where the config cannot run on this data)."""
    try:
        estimate = resources.estimate(config, shape, *(shards or _shards(config, budget)),
                                      accelerator=budget.device is not None)
        return _overflow(estimate, budget) is None
    except ConfigError:
        return False


def _refusal(config: Config, shape: RunShape, estimate: Estimate, budget: Budget, data_file: str | None) -> str:
    need, free, where = _overflow(estimate, budget)
    on_device = None if budget.device is None else where != "host RAM"
    parts = sorted((p for p in estimate.parts if on_device is None or p.on_device == on_device),
                   key=lambda p: -p.bytes)
    shown = " + ".join(f"{p.name} {format_bytes(p.bytes)}" for p in parts[:4])
    rest = sum(p.bytes for p in parts[4:])
    shown += f" + others {format_bytes(rest)}" if rest else ""
    head = (f"not enough memory: this run needs about {format_bytes(need)} at its peak (in {estimate.phase}: "
            f"{shown}), but {where} has {format_bytes(free)} free")
    labels_alone = sum(p.bytes for p in parts if p.name.startswith("label arrays"))
    if labels_alone > FIT_FRACTION * free:
        return (f"{head}; L={shape.num_labels} labels{_header(data_file)}: its [L] label counts and "
                f"propensities alone need {format_bytes(labels_alone)} and no setting makes L smaller; "
                "check that header")
    batches = sum(p.bytes for p in parts if "batch" in p.name)
    causes = [_cause(config, shape, parts[0].name, data_file)]
    if batches >= need / 4 and "batch" not in parts[0].name:
        causes.append(_cause(config, shape, "batch", data_file))
    options = suggestions(config, shape, budget)
    what_fits = ("it fits with " + ", or ".join(options) if options
                 else "no single setting makes it fit here: a machine with more memory is needed")
    return f"{head}; {'; '.join(causes)}; {what_fits}"


def _header(data_file: str | None) -> str:
    return f" (the header of {data_file}:1)" if data_file else ""


def _cause(config: Config, shape: RunShape, largest: str, data_file: str | None) -> str:
    """Why the largest part is large: the matrix, the padded width or the input layer behind it."""
    matrices = resources.member_matrices(config.model, shape.num_features)
    width, _, eval_width, _ = resources.batch_widths(config, shape)
    if "batch" in largest:
        return (f"rows are padded to K={width} features (training) and {eval_width} (evaluation): "
                f"{_widest(config, shape)}")
    if "activations" in largest:
        if resources.resolved_rules(config, shape)[0]:
            return (f"the dense input layer (--input-layer {config.model.input_layer}) holds an [N, "
                    f"{matrices[0][0]}] matrix per member")
        return f"the embedding bag gathers [N, K={width}, H={matrices[0][1]}] rows"
    if "re-ranker" in largest:
        return (f"the re-ranker's tables are [D={shape.num_features} + L={shape.num_labels}, "
                f"h={config.rerank.rerank_dim}]")
    if largest.startswith("feature idf"):
        return f"D={shape.num_features} features{_header(data_file)} and a tf-idf input, whose idf is [D]"
    if largest.startswith("label arrays") or largest == "decoding":
        return f"L={shape.num_labels} labels{_header(data_file)} ({config.eval.decoder} decoder)"
    if largest not in ("parameters", "gradients", resources.moments_name(config), *resources.STATE_SIZED):
        return f"the largest part is the {largest}"
    members = config.parallel.num_members(config.model.num_repetitions)
    rows, cols = max(matrices, key=lambda m: m[0] * m[1])
    if (rows, cols) != matrices[0]:
        return f"the largest weight matrices are R={members} x [{rows} x {cols}]"
    source = f" from the header of {data_file}:1" if data_file else ""
    hashed = f", D={shape.num_features} hashed" if config.model.feat_hash_dim else f" (D={shape.num_features}{source})"
    return f"the embedding tables are R={members} x [{rows} x {cols}]{hashed}"


def _widest(config: Config, shape: RunShape) -> str:
    """'training point 0 (train.txt:2) has 1000000': the widest row, where a file line names it."""
    in_files = not config.data.valid_frac  # a validation split renumbers the points
    if shape.eval_widest_features > shape.widest_features:
        what, row, count, path = ("evaluation", shape.eval_widest_features_row, shape.eval_widest_features,
                                  config.data.test_path if in_files else None)
    else:
        what, row, count, path = ("training", shape.widest_features_row, shape.widest_features,
                                  config.data.train_path if in_files else None)
    return f"{what} point {row}{f' ({path}:{row + 2})' if path else ''} has {count}"


# The settings that shrink a run: (flag, config field, the largest value below the current one).
_SHRINKING: tuple[tuple[str, str, Callable[[Config, RunShape], int]], ...] = (
    ("--feat-hash-dim", "model.feat_hash_dim",
     lambda c, s: resources.member_matrices(c.model, s.num_features)[0][0] - 1),
    ("--hidden", "model.hidden_sizes", lambda c, s: max(c.model.hidden_sizes) - 1),
    ("-R", "model.num_repetitions", lambda c, s: 0 if c.parallel.rep_range else c.model.num_repetitions - 1),
    ("--max-nnz", "data.max_nnz", lambda c, s: resources.batch_widths(c, s)[0] - 1),
    ("--batch-size", "train.batch_size", lambda c, s: c.train.batch_size - 1),
    ("--eval-batch-size", "eval.eval_batch_size", lambda c, s: c.eval.eval_batch_size - 1),
)
_EXACT = ("model.hidden_sizes", "model.num_repetitions")  # the others are rounded to two digits


def suggestions(config: Config, shape: RunShape, budget: Budget) -> list[str]:
    """'--feat-hash-dim 850000', ...: for each setting that can shrink the run, the largest value
    with which it fits (rounded down to two significant digits where that still fits)."""
    found = []
    for flag, field, highest in _SHRINKING:
        def fits_at(value: int, field: str = field) -> bool:
            return fits(_set(config, field, value), shape, budget)

        value = _largest(fits_at, 1, highest(config, shape))
        if value is not None and field not in _EXACT and fits_at(_two_digits(value)):
            value = _two_digits(value)
        if value is not None and field == "train.batch_size":  # a whole share for each data device
            value = value // config.parallel.data_devices * config.parallel.data_devices or None
        if value is not None:
            hidden = ",".join([str(value)] * len(config.model.hidden_sizes))
            found.append(f"{flag} {hidden if field == 'model.hidden_sizes' else value}")
    choices = (("--input-layer", "model.input_layer", "sparse",  # instead of dense [N, D] bags
                resources.resolved_rules(config, shape)[0]),
               ("--input-transform", "data.input_transform", "log1p_l2",  # no [D] idf
                config.data.input_transform == "tfidf_l2"))
    for flag, field, value, applies in choices:
        if applies and fits(_set(config, field, value), shape, budget):
            found.append(f"{flag} {value}")
    return found + _device_suggestion(config, shape, budget)


def _set(config: Config, field: str, value: int | str) -> Config:
    """The config with one field changed (hidden sizes: every layer ``value`` wide); not validated."""
    section_name, name = field.split(".")
    section = getattr(config, section_name)
    if field == "model.hidden_sizes":
        value = (value,) * len(section.hidden_sizes)
    return dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{name: value})})


def _device_suggestion(config: Config, shape: RunShape, budget: Budget) -> list[str]:
    """On accelerators: the fewest devices of this size that the members could be split over."""
    if budget.device is None:
        return []
    members = config.parallel.num_members(config.model.num_repetitions)
    data_devices = config.parallel.data_devices
    for count in range(_shards(config, budget)[0] + 1, members + 1):
        if members % count == 0 and fits(config, shape, budget, (count, data_devices)):
            usable = count * data_devices <= jax.device_count()
            return [f"{count} devices (--rep-devices {count})" if usable else f"{count} devices of this size"]
    return []


def _largest(fits_at: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest v in [low, high] with ``fits_at(v)``, which holds up to some v and not past it."""
    if high < low or not fits_at(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits_at(middle) else (low, middle - 1)
    return low


def _two_digits(value: int) -> int:
    """``value`` rounded down to two significant digits: 8,589,934 -> 8,500,000."""
    scale = 10 ** max(len(str(value)) - 2, 0)
    return value // scale * scale
