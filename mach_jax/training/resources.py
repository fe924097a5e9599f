"""How much memory a run needs, from its config and the data's shape, before anything is allocated.

``estimate(config, shape)`` adds up what each phase of a run holds at once (every array is 4
bytes an entry: float32 values, int32 ids) and returns the largest, part by part:

- training: the parameters, the optimiser's moments (Adam: 2 per parameter; row-wise Adagrad:
  1 per embedding row), the gradients (only the touched rows of a lazily updated table), the
  activations (the dense input layer keeps one [N, D] matrix per member), the batches on the
  device and on the host (the prefetcher holds up to 3 of [N, K] ids + values, [N, M] labels);
- evaluation: the same state, one [N_eval, K_eval] batch, the bucket scores and the exact
  decoder's class chunks (``readout.decode``), or the approximate decoder's [R, L] index;
- re-ranking: the members' parameters and the re-ranker's [D, h] and [L, h] tables, with their
  Adam moments and gradients;
- creating the state: the state as it is created, beside the random draws of one member's weight
  matrices (``INIT_DRAWS`` entries a weight: XLA's generator bits and their transforms; each device
  draws its members one at a time, ``model.init_params_by_member``);
- restoring a checkpoint (a resumed run): the state, and Orbax's host buffers of it as it reads a checkpoint;
- in every phase the label arrays: the training label counts [L] (int64) and the propensities.

On an accelerator a checkpoint is also a host copy of the state while it is written, beside the
training steps (``accelerator=True``); on the CPU Orbax reads the arrays in place. What the process
holds before any of this (Python, JAX and XLA: some 210 MiB on the CPU) is not counted: it is
already in use when the free memory is measured (``resource_check``).

Device parts are those of one device: ``rep_shards`` devices split the R members and
``data_shards`` split each training batch (``parallel.rep_devices`` / ``data_devices``). The
figures are upper bounds of what XLA allocates (it may fuse some away); the tests check the
state's against the real pytree.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mach_jax.config import Config
from mach_jax.core import backend, hashing, model
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.training.spec import uses_lazy_update
from mach_jax.training.state_size import (member_matrices, member_parameters, moment_bytes, moments_name,
                                          parameter_bytes)

ENTRY = 4  # bytes of one float32 value or int32 id (the state's own bytes: ``state_size``)
PREFETCHED_BATCHES = 3  # the prefetcher's queue (2) and the batch in the step (data/batches.py)
# Temporary entries per weight of one member while the state is created (members drawn one at a
# time, ``model.init_params_by_member``): XLA's temporaries on the CPU were 133 MiB for one member's
# 6.14 M weights (D = 20,000, H = 256, B = 4,000), 5.7 entries a weight.
INIT_DRAWS = 6
# The parts that grow with the weight matrices as the state does (a refusal blames the matrices).
STATE_SIZED = ("random draws of the weights", "checkpoint read buffers", "checkpoint's host copy of the state")


@dataclasses.dataclass(frozen=True)
class RunShape:
    """What the data fixes that memory depends on.

    Attributes:
      num_features, num_labels, num_train_points: D, L and N_train.
      widest_features, widest_labels: the widest training row's features and labels.
      widest_features_row: which training point that widest feature row is (0-based).
      eval_widest_features, eval_widest_labels, eval_widest_features_row: the same of the
        evaluation data.
      train_bytes: the training CSR's bytes (preparing the data copies it once).
      feature_entries: the training rows' feature entries, each row cut to ``data.max_nnz``
        (0: unknown, where the rules use the widest row).
      label_entries: the training rows' label entries, nnz(Y) (0: unknown).
    """

    num_features: int
    num_labels: int
    num_train_points: int
    widest_features: int
    widest_labels: int
    widest_features_row: int
    eval_widest_features: int
    eval_widest_labels: int
    eval_widest_features_row: int
    train_bytes: int
    feature_entries: int = 0
    label_entries: int = 0

    def mean_nnz(self, width: int) -> float | None:
        """The mean training row's feature entries within ``width`` (K), or None where unknown."""
        if not self.feature_entries or not self.num_train_points:
            return None
        return min(self.feature_entries / self.num_train_points, width)


def run_shape(train: XCDataset, eval_data: XCDataset | None, max_nnz: int | None = None) -> RunShape:
    """The ``RunShape`` of a run's loaded data (its row widths: no array is built); ``max_nnz``
    is ``data.max_nnz``, the width training rows are cut to (None: not cut). A run with no
    evaluation data has eval widths 0."""
    nnz = train.features.row_nnz()
    eval_nnz = eval_data.features.row_nnz() if eval_data is not None else np.zeros(0, np.int64)
    eval_labels = eval_data.labels.row_nnz() if eval_data is not None else np.zeros(0, np.int64)
    matrices = (train.features, train.labels)
    return RunShape(
        num_features=train.num_features, num_labels=train.num_labels, num_train_points=train.num_points,
        widest_features=int(nnz.max(initial=0)), widest_labels=int(train.labels.row_nnz().max(initial=0)),
        widest_features_row=int(nnz.argmax()) if nnz.size else 0,
        eval_widest_features=int(eval_nnz.max(initial=0)),
        eval_widest_labels=int(eval_labels.max(initial=0)),
        eval_widest_features_row=int(eval_nnz.argmax()) if eval_nnz.size else 0,
        train_bytes=sum(m.indptr.nbytes + m.indices.nbytes + m.values.nbytes for m in matrices),
        feature_entries=int(np.minimum(nnz, max_nnz).sum() if max_nnz else nnz.sum()),
        label_entries=int(train.labels.indptr[-1]))


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a phase's memory: ``name``, ``bytes``, and whether it lives on the device."""

    name: str
    bytes: int
    on_device: bool


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The phase of a run that needs the most memory, and what it holds."""

    phase: str
    parts: tuple[Part, ...]

    def total(self, on_device: bool | None = None) -> int:
        """All parts' bytes, or only the device's (True) or the host's (False)."""
        return sum(p.bytes for p in self.parts if on_device is None or p.on_device == on_device)


def batch_widths(config: Config, shape: RunShape) -> tuple[int, int, int, int]:
    """(K, M, K_eval, M_eval): the padded widths of the training and evaluation batches, as
    ``data.prepare`` and ``readout.ensemble`` pick them (the evaluation's rounded up to a power of 2)."""
    data = config.data
    eval_width = batches.next_power_of_two(shape.eval_widest_features)
    if data.max_nnz:
        eval_width = min(eval_width, data.max_nnz)
    return (data.max_nnz or max(shape.widest_features, 1), data.max_labels or max(shape.widest_labels, 1),
            eval_width, batches.next_power_of_two(shape.eval_widest_labels))


def estimate(config: Config, shape: RunShape, rep_shards: int = 1, data_shards: int = 1,
             accelerator: bool = False) -> Estimate:
    """The phase of the run that needs the most memory (on one device plus the host), part by part.

    Args:
      config: the run's config, sized for the data (``prepare.filled_from_data``: B filled in).
      shape: the data's ``RunShape``.
      rep_shards, data_shards: the devices that split the members and each batch.
      accelerator: whether the device's memory is not the host's (a GPU or TPU): then checkpoints
        copy the state to the host.

    Raises:
      ConfigError: where the config cannot run on this data at all (``spec.uses_lazy_update``).
    """
    members = -(-config.parallel.num_members(config.model.num_repetitions) // rep_shards)
    params, moments = _state_bytes(config, shape)
    state = [Part("parameters", members * params, True), Part(moments_name(config), members * moments, True)]
    # Orbax copies or reads every local device's share on the host: the whole state of the members here.
    host_state = config.parallel.num_members(config.model.num_repetitions) * (params + moments)
    labels = _label_parts(config, shape)
    weights = sum(rows * cols for rows, cols in member_matrices(config.model, shape.num_features))
    host_copy = [Part(STATE_SIZED[2], host_state if accelerator else 0, False)]
    phases = {"training": state + _training_parts(config, shape, members, data_shards) + host_copy + labels,
              "evaluation": state + _evaluation_parts(config, shape, members) + labels,
              "creating the state": state + [Part(STATE_SIZED[0], INIT_DRAWS * weights * ENTRY, True)] + labels,
              "restoring a checkpoint": state + [Part(STATE_SIZED[1], host_state, False)] + labels}
    if config.rerank.enabled:
        phases["re-ranking"] = state[:1] + _rerank_parts(config, shape) + labels
    if config.partition.learned:
        phases = {name: parts + _partition_parts(config, shape, members) for name, parts in phases.items()}
    phase = max(phases, key=lambda name: sum(p.bytes for p in phases[name]))
    return Estimate(phase, tuple(p for p in phases[phase] if p.bytes))


def _training_parts(config: Config, shape: RunShape, members: int, data_shards: int) -> list[Part]:
    """The train step's gradients, activations and batches (``members`` on this device)."""
    width, max_labels, _, _ = batch_widths(config, shape)
    points = -(-config.train.batch_size // data_shards)
    (rows, hidden), *_ = member_matrices(config.model, shape.num_features)
    dense_input, lazy = resolved_rules(config, shape)
    gradients = member_parameters(config.model, shape.num_features)
    if lazy:  # the touched rows only: gathered, their gradients and both moments
        gradients += 4 * min(rows, points * width) * hidden - rows * hidden
    # The gathered bag's [N, K, H] rows and their gradient: one member's at a time in the loop
    # form, every member's at once in the batched one (``backend.batched_forms``).
    bag = members * points * rows if dense_input else 2 * points * width * hidden * _bag_copies(config, members)
    hashed_ids = members * points * width if config.model.feat_hash_dim else 0
    heads = 3 * members * points * (sum(config.model.hidden_sizes) + config.model.num_buckets)
    batch = (2 * width + 2 * max_labels + 1) * ENTRY
    return [Part("gradients", members * gradients * ENTRY, True),
            Part("activations", (bag + hashed_ids + heads) * ENTRY, True),
            Part("training batches", PREFETCHED_BATCHES * points * batch, True),
            Part("host batches", PREFETCHED_BATCHES * config.train.batch_size * batch, False),
            Part("prepared training data", shape.train_bytes, False)]


def _evaluation_parts(config: Config, shape: RunShape, members: int) -> list[Part]:
    """One evaluation batch (replicated on every device), its read-out and the decoder's buffers."""
    _, _, width, max_labels = batch_widths(config, shape)
    points, buckets = config.eval.eval_batch_size, config.model.num_buckets
    (rows, hidden), *_ = member_matrices(config.model, shape.num_features)
    dense_input = resolved_rules(config, shape)[0]
    copies = _bag_copies(config, members)  # the batched forms hold every member's reads at once
    bag = members * points * rows if dense_input else points * width * hidden * copies
    heads = 2 * members * points * (sum(config.model.hidden_sizes) + 2 * buckets)
    if config.eval.decoder == "approx":  # the [R, L] inverse index and each point's candidates
        slots = members * config.eval.top_buckets * -(-3 * shape.num_labels // (2 * buckets))
        decoder = 2 * members * (shape.num_labels + buckets + 1) + 3 * points * slots * copies
    else:  # a chunk of C classes' scores (R chunks batched), the running top-k, the chunk's buckets
        chunk = min(config.eval.class_chunk_size, shape.num_labels)
        decoder = (1 + copies) * chunk * points + 4 * points * (chunk + 5) + members * chunk
    batch = points * (2 * width + 2 * max_labels + 1) * ENTRY
    return [Part("evaluation batch", batch, True),
            Part("evaluation activations", (bag + heads) * ENTRY, True),
            Part("decoding", decoder * ENTRY, True),
            Part("host evaluation batch", batch, False)]


def resolved_rules(config: Config, shape: RunShape) -> tuple[bool, bool]:
    """``(dense_input, lazy)``: whether the bag is a dense matmul (``model.uses_dense_input``) and
    the tables are updated row-sparsely (``spec.uses_lazy_update``), as training resolves them.

    Raises:
      ConfigError: where the config cannot run on this data at all (``spec.uses_lazy_update``).
    """
    width = batch_widths(config, shape)[0]
    dense_input = model.uses_dense_input(config.model, shape.num_features, width, shape.mean_nnz(width))
    lazy = uses_lazy_update(config.model, config.train.embedding_update, shape.num_features, width,
                            config.train.batch_size, config.train.embedding_optimizer,
                            mean_nnz=shape.mean_nnz(width))
    return dense_input, lazy


def _bag_copies(config: Config, members: int) -> int:
    """How many members' gathered rows a step holds at once: 1 in the loop form, all of them in
    the batched one (``model.kernel_forms`` on this backend, ``backend.batched_forms``)."""
    return members if backend.batched_forms(config.model.kernel_forms) else 1


def _rerank_parts(config: Config, shape: RunShape) -> list[Part]:
    """The re-ranker's W [D, h], E [L + 1, h] and biases, each with 2 Adam moments and a gradient."""
    dim, classes = config.rerank.rerank_dim, shape.num_labels + 1
    return [Part("re-ranker state", 4 * (shape.num_features * dim + dim + classes * (dim + 1)) * ENTRY, True)]


def _label_parts(config: Config, shape: RunShape) -> list[Part]:
    """[L] label counts (int64), the propensities computed from them (float64 temporaries, float32
    on the device), and a tf-idf input's [D] idf (float32, from int64 document counts)."""
    idf = 3 * shape.num_features * ENTRY if config.data.input_transform == "tfidf_l2" else 0
    return [Part("label arrays [L]", 7 * shape.num_labels * ENTRY, False),
            Part("label arrays [L] on the device", shape.num_labels * ENTRY, True),
            Part("feature idf [D]", idf, False)]


def _partition_parts(config: Config, shape: RunShape, members: int) -> list[Part]:
    """A learned class -> bucket table [R, L] (``hashing.table_dtype``) and what re-assigning it
    holds on the host: every member's m best buckets and probabilities for the N training points
    (int32 + float32), and one member's sparse affinities, about 48 bytes for each of its
    nnz(Y) x m (class, bucket) entries (``core.label_partition``)."""
    num_buckets, all_members = config.model.num_buckets, config.parallel.num_members(config.model.num_repetitions)
    table = shape.num_labels * np.dtype(hashing.table_dtype(num_buckets)).itemsize
    top = min(config.partition.affinity_buckets, num_buckets)
    label_entries = shape.label_entries or shape.num_train_points * shape.widest_labels
    return [Part("learned class -> bucket table [R, L]", members * table, True),
            Part("re-assigning classes (host)", all_members * (table + 8 * shape.num_train_points * top)
                 + 48 * label_entries * top, False)]


def format_bytes(count: float) -> str:
    """'512 B', '12.3 MiB', '4.0 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" or count >= 100 else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_count(count: int) -> str:
    """'950', '54.9 K', '12.3 M', '274.9 G'."""
    for scale, unit in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def describe_rules(config: Config, shape: RunShape) -> str:
    """'dense-matmul input bag, dense Adam on the embedding tables, forms=loop' or 'gathered input
    bag, row-sparse (lazy) Adam on the embedding tables, forms=batched': the implementations the
    "auto" settings resolve to for this data and backend (``model.input_layer``,
    ``train.embedding_update``, ``model.kernel_forms``)."""
    dense_input, lazy = resolved_rules(config, shape)
    optimiser = "row-wise Adagrad" if config.train.embedding_optimizer == "rowwise_adagrad" else "Adam"
    forms = backend.describe_forms(backend.batched_forms(config.model.kernel_forms))
    return (f"{'dense-matmul' if dense_input else 'gathered'} input bag, "
            f"{'row-sparse (lazy) ' if lazy else 'dense '}{optimiser} on the embedding tables, forms={forms}")


def describe_state(config: Config, shape: RunShape) -> str:
    """'R=4 x (400x32 + 32x32) = 14.0 K parameters, state 164 KiB (params 55 KiB + Adam moments
    109 KiB)': the members trained here, their parameters and optimiser state."""
    members = config.parallel.num_members(config.model.num_repetitions)
    matrices = " + ".join(f"{rows}x{cols}" for rows, cols in member_matrices(config.model, shape.num_features))
    params, moments = (members * part for part in _state_bytes(config, shape))
    precision = "" if config.model.precision == "float32" else f", {config.model.precision}"
    return (f"R={members} x ({matrices}) = {format_count(members * member_parameters(config.model, shape.num_features))}"
            f" parameters{precision}, state {format_bytes(params + moments)} (params {format_bytes(params)} + "
            f"{moments_name(config)} {format_bytes(moments)})")


def _state_bytes(config: Config, shape: RunShape) -> tuple[int, int]:
    """One member's parameter and optimiser state bytes (``state_size``; the moments depend on
    whether the table is updated lazily)."""
    lazy = resolved_rules(config, shape)[1]
    return (parameter_bytes(config.model, shape.num_features),
            moment_bytes(config, shape.num_features, lazy))

