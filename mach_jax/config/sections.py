"""The config sections: frozen dataclasses, the only place defaults live.

Each section has ``validate()``, whose errors name the dotted field (``model.num_buckets``) and
the value. A field that may differ when a run is resumed in the same workdir (it changes neither
the model nor the data order) is declared so on the field itself (``may_change_on_resume``);
every other field of a resumed run must match the saved config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import numbers
from typing import Any

from mach_jax.errors import ConfigError

OVERFLOW_POLICIES = ("truncate", "error")
INPUT_TRANSFORMS = ("none", "log1p", "l2", "log1p_l2", "tfidf_l2")  # see data/transforms.py
INPUT_LAYERS = ("auto", "sparse", "dense")
EMBEDDING_UPDATES = ("auto", "lazy", "dense")
EMBEDDING_OPTIMIZERS = ("adam", "rowwise_adagrad")
LR_SCHEDULES = ("constant", "cosine", "linear")
HOST_LOADERS = ("auto", "thread", "grain")  # see data/batches.py (thread) and data/grain_batches.py
DEVICE_DATA = ("auto", "on", "off")  # training data kept on the device (training/device_data.py)
KERNEL_FORMS = ("auto", "loop", "batched")  # see core/backend.py
PRECISIONS = ("float32", "bfloat16", "bfloat16_tables")  # see core/precision.py
ROWWISE_ADAGRAD_LEARNING_RATE = 0.1


_RESUME = "may_change_on_resume"


def may_change_on_resume(default: Any) -> Any:
    """A field with this default that a resumed run may change (see ``resumable_fields``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not config values")
    return dataclasses.field(default=default, metadata={_RESUME: True})


def _require(condition: bool, field: str, value: Any, why: str) -> None:
    if not condition:
        raise ConfigError(f"{field}={value!r}: {why}", field=field)


def _require_seed(field: str, value: Any) -> None:
    """Seeds become uint32 hash and generator seeds: [0, 2**32)."""
    _require(isinstance(value, numbers.Integral) and 0 <= value < 2**32, field, value, "must be in [0, 2**32)")


def _require_finite_positive(field: str, value: Any) -> None:
    _require(isinstance(value, numbers.Real) and 0 < value < float("inf"), field, value, "must be > 0 and finite")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The embedded, deterministic power-law dataset used when no files are given."""

    num_labels: int = 12_000
    num_features: int = 10_000
    num_train: int = 24_000
    num_test: int = 4_000
    mean_labels_per_point: float = 3.0
    label_zipf_exponent: float = 1.0
    signature_features: int = 6
    noise_features: int = 6
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_labels", "num_features", "num_train", "num_test", "signature_features"):
            _require(getattr(self, name) >= 1, f"data.synthetic.{name}", getattr(self, name), "must be >= 1")
        _require(self.noise_features >= 0, "data.synthetic.noise_features", self.noise_features, "must be >= 0")
        _require(self.mean_labels_per_point >= 1.0, "data.synthetic.mean_labels_per_point",
                 self.mean_labels_per_point, "must be >= 1")
        _require(self.label_zipf_exponent > 0, "data.synthetic.label_zipf_exponent",
                 self.label_zipf_exponent, "must be > 0")
        _require_seed("data.synthetic.seed", self.seed)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how rows are cut into fixed-shape batches.

    ``max_nnz`` / ``max_labels`` cap the padded width of a row (None: the widest row of the training
    set). A row past the cap is cut by ``overflow``: "truncate" keeps the ``max_nnz`` features of
    largest |value| (and the first ``max_labels`` labels in file order); "error" refuses the data.

    ``dataset`` = "tfds:NAME" reads the train and test splits of a built TensorFlow Datasets
    source instead of files (see ``mach_jax.data.tfds``; ``tfds_data_dir``: its data_dir).

    ``host_loader``: who builds the training batches on the host: "thread" (our prefetch thread),
    "grain" (Grain's threads, ``pip install grain``) or "auto" (Grain on an accelerator when it is
    installed, else the thread: ``core.backend.grain_pays_off``); the batches, and so the
    results, are the same.

    ``valid_frac`` > 0 holds out that share of the training points (a permutation seeded by
    ``valid_seed``, see ``data.sources.validation_split``): the model trains on the rest and is
    evaluated on them instead of the test set, so settings can be chosen without the test split.

    ``max_line_bytes``: the longest line a data file may have (64 MiB); a longer one, or a file
    with no newline at all (a device, a binary file), is refused naming the file and line as soon
    as it is met, never read whole.
    """

    train_path: str | None = may_change_on_resume(None)
    test_path: str | None = may_change_on_resume(None)
    dataset: str | None = None
    tfds_data_dir: str | None = may_change_on_resume(None)
    max_nnz: int | None = None
    max_labels: int | None = None
    overflow: str = "truncate"
    input_transform: str = "none"
    cache_dir: str | None = may_change_on_resume(None)
    max_line_bytes: int = may_change_on_resume(64 << 20)
    valid_frac: float = 0.0
    valid_seed: int = 0
    host_loader: str = may_change_on_resume("auto")
    device_data: str = may_change_on_resume("auto")
    synthetic: SyntheticConfig = SyntheticConfig()

    def validate(self) -> None:
        _require(self.train_path is not None or self.test_path is None, "data.test_path", self.test_path,
                 "a test file needs a training file (--train); give both, the training file alone, or "
                 "neither (synthetic data)")
        if self.dataset is not None:
            _require(self.dataset.startswith("tfds:") and len(self.dataset) > 5, "data.dataset",
                     self.dataset, "must be tfds:NAME (a TensorFlow Datasets source)")
            _require(self.train_path is None, "data.dataset", self.dataset,
                     "give either --data or --train/--test, not both")
        _require(self.max_line_bytes >= 1, "data.max_line_bytes", self.max_line_bytes, "must be >= 1")
        for name in ("max_nnz", "max_labels"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"data.{name}", value, "must be >= 1 or None")
        _require(self.overflow in OVERFLOW_POLICIES, "data.overflow", self.overflow,
                 f"must be one of {OVERFLOW_POLICIES}")
        _require(self.input_transform in INPUT_TRANSFORMS, "data.input_transform", self.input_transform,
                 f"must be one of {INPUT_TRANSFORMS}")
        _require(isinstance(self.valid_frac, (int, float)) and 0.0 <= self.valid_frac < 1.0,
                 "data.valid_frac", self.valid_frac, "must be in [0, 1) (0: no validation split)")
        _require_seed("data.valid_seed", self.valid_seed)
        _require(self.host_loader in HOST_LOADERS, "data.host_loader", self.host_loader,
                 f"must be one of {HOST_LOADERS}")
        _require(self.device_data in DEVICE_DATA, "data.device_data", self.device_data,
                 f"must be one of {DEVICE_DATA}")
        _require(self.host_loader != "grain" or importlib.util.find_spec("grain") is not None,
                 "data.host_loader", self.host_loader, "needs Grain: pip install grain")
        self.synthetic.validate()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The ensemble: R members, each sparse input -> hidden ReLU layers -> B bucket logits.

    ``feat_hash_dim`` > 0 hashes the D input features into that many slots per member (its own
    seeds), as the reference code did for large D. ``input_layer`` picks how the embedding bag is
    computed ("sparse": gather rows; "dense": a [N, D] matmul; "auto": dense when D <= 16 K); the
    parameters are the same either way. ``num_buckets`` 0: sized from the training data
    (``config.sizing``, as ``--preset large`` does), within ``max_weights`` (R halved to fit) and
    ``max_epoch_outputs`` (N·R·B; a B left to the data lowered to fit), 0: none. ``kernel_forms``:
    "loop" member by member (tuned on CPU), "batched" one kernel over the members (GPUs, TPUs),
    "auto" per backend (``core.backend``); the same results. ``precision``: "float32", "bfloat16"
    (bf16 matmuls, activations), "bfloat16_tables" (and tables; ``core.precision``), kept on resume.
    """

    num_repetitions: int = 8
    num_buckets: int = 1_000
    hidden_sizes: tuple[int, ...] = (256,)
    feat_hash_dim: int = 0
    input_layer: str = "auto"
    kernel_forms: str = may_change_on_resume("auto")
    precision: str = "float32"
    label_hash_seed: int = 0
    feature_hash_seed: int = 1_000_003
    max_weights: int = 0
    max_epoch_outputs: int = 0

    def validate(self) -> None:
        _require(self.num_repetitions >= 1, "model.num_repetitions", self.num_repetitions, "must be >= 1")
        _require(self.num_buckets >= 2 or self.num_buckets == 0, "model.num_buckets", self.num_buckets,
                 "must be >= 2, or 0 to size it from the data (config.sizing)")
        _require(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
                 "model.hidden_sizes", self.hidden_sizes, "need at least one layer, each >= 1")
        for name in ("feat_hash_dim", "max_weights", "max_epoch_outputs"):
            _require(getattr(self, name) >= 0, f"model.{name}", getattr(self, name), "must be >= 0 (0: off)")
        _require(self.input_layer in INPUT_LAYERS, "model.input_layer", self.input_layer,
                 f"must be one of {INPUT_LAYERS}")
        _require(self.kernel_forms in KERNEL_FORMS, "model.kernel_forms", self.kernel_forms,
                 f"must be one of {KERNEL_FORMS}")
        _require(self.precision in PRECISIONS, "model.precision", self.precision,
                 f"must be one of {PRECISIONS}")
        for name in ("label_hash_seed", "feature_hash_seed"):
            _require_seed(f"model.{name}", getattr(self, name))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam over the stacked R axis, one jitted step for all members.

    ``embedding_update``: "lazy" updates only the embedding rows a batch touches (row-sparse Adam,
    see ``sparse_update``), "dense" updates every row, "auto" is lazy where it was measured
    faster: a gathering embedding bag and a table of at least 1.75 N x the mean training row's
    nonzeros (the entries a typical batch touches; ``training.spec.uses_lazy_update``,
    thresholds in ``core.backend``).

    ``embedding_optimizer``: "adam" (as every other parameter), or "rowwise_adagrad": one
    accumulator per embedding row, the usual optimiser of large embedding tables; it is always
    applied to the touched rows only (for Adagrad that is exact: an untouched row would not move)
    and moves a third of lazy Adam's bytes. ``embedding_learning_rate`` is the table's step size
    (None: ``learning_rate`` for Adam, 0.1 for row-wise Adagrad, the better of 0.02 and 0.1 on the
    synthetic set).

    Regularisation and schedule (all off by default): ``dropout`` zeroes each hidden unit of a
    member with that probability during training (inverted dropout, a fresh mask per member and
    step); ``weight_decay`` is AdamW's decoupled decay of the weight matrices (not the biases);
    ``label_smoothing`` eps moves the bucket targets towards uniform (sigmoid: t (1 - eps) +
    eps / 2; softmax: (1 - eps) t + eps / B); ``lr_schedule`` "cosine" or "linear" decays the
    step size to 0 at the last step, after ``warmup_steps`` of linear warm-up from 0 (any schedule).

    ``eval_every_epochs`` > 0 also evaluates on the test set every that many epochs and logs it
    to ``metrics.jsonl``/TensorBoard (each costs an evaluation); 0 evaluates only at the end.
    """

    epochs: int = may_change_on_resume(5)
    batch_size: int = 256
    learning_rate: float = 2e-3
    loss: str = "softmax"
    seed: int = 0
    embedding_update: str = "auto"
    log_every_steps: int = may_change_on_resume(20)
    checkpoint_every_steps: int = may_change_on_resume(0)
    keep_checkpoints: int = may_change_on_resume(2)
    eval_every_epochs: int = may_change_on_resume(0)
    steps_per_call: int = may_change_on_resume(0)  # S train steps per jitted call (0: auto)
    embedding_optimizer: str = "adam"
    embedding_learning_rate: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    @property
    def resolved_embedding_learning_rate(self) -> float:
        """The embedding table's step size, with the default of its optimiser filled in."""
        if self.embedding_learning_rate is not None:
            return self.embedding_learning_rate
        return ROWWISE_ADAGRAD_LEARNING_RATE if self.embedding_optimizer == "rowwise_adagrad" else self.learning_rate

    def validate(self) -> None:
        _require(self.embedding_update in EMBEDDING_UPDATES, "train.embedding_update",
                 self.embedding_update, f"must be one of {EMBEDDING_UPDATES}")
        _require(self.embedding_optimizer in EMBEDDING_OPTIMIZERS, "train.embedding_optimizer",
                 self.embedding_optimizer, f"must be one of {EMBEDDING_OPTIMIZERS}")
        if self.embedding_learning_rate is not None:
            _require_finite_positive("train.embedding_learning_rate", self.embedding_learning_rate)
        _require(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _require(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", self.lr_schedule,
                 f"must be one of {LR_SCHEDULES}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        _require(0.0 <= self.dropout < 1.0, "train.dropout", self.dropout, "must be in [0, 1)")
        _require(0.0 <= self.weight_decay < float("inf"), "train.weight_decay", self.weight_decay,
                 "must be >= 0 and finite")
        _require(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing,
                 "must be in [0, 1)")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _require_finite_positive("train.learning_rate", self.learning_rate)
        _require_seed("train.seed", self.seed)
        # The name itself is checked against the loss registry (core.losses.require_known) when
        # the run is resolved: the configuration knows no model.
        _require(isinstance(self.loss, str) and self.loss != "", "train.loss", self.loss,
                 "must name a loss (core.losses.LOSSES), or auto (from the data: config.sizing)")
        _require(self.log_every_steps >= 1, "train.log_every_steps", self.log_every_steps, "must be >= 1")
        _require(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
                 self.checkpoint_every_steps, "must be >= 0 (0: at the end of every epoch)")
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        _require(self.steps_per_call >= 0, "train.steps_per_call", self.steps_per_call,
                 "must be >= 0 (0: chosen per backend)")
        _require(self.eval_every_epochs >= 0, "train.eval_every_epochs", self.eval_every_epochs,
                 "must be >= 0 (0: evaluate only at the end)")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Which members this process trains, and how they are laid over the devices.

    ``rep_range`` = (start, stop) trains only members start..stop-1 (an independent group; groups
    merge at evaluation); () trains all R. The mesh is ``rep_devices`` x ``data_devices``: members
    split over the first axis (0: the most devices that divide the group evenly), each batch
    split over the second (1: no data parallelism; members never communicate either way).
    """

    rep_range: tuple[int, ...] = ()
    rep_devices: int = may_change_on_resume(0)
    data_devices: int = may_change_on_resume(1)

    def validate(self, num_repetitions: int | None = None, batch_size: int | None = None) -> None:
        _require(len(self.rep_range) in (0, 2), "parallel.rep_range", self.rep_range,
                 "give START:STOP, or nothing for all members")
        if self.rep_range:
            start, stop = self.rep_range
            limit = num_repetitions if num_repetitions is not None else stop
            _require(0 <= start < stop <= limit, "parallel.rep_range", self.rep_range,
                     f"need 0 <= START < STOP <= R = {limit}")
        _require(self.rep_devices >= 0, "parallel.rep_devices", self.rep_devices,
                 "must be >= 0 (0: as many as divide the members evenly)")
        _require(self.data_devices >= 1, "parallel.data_devices", self.data_devices, "must be >= 1")
        if self.rep_devices and num_repetitions is not None:
            group = self.num_members(num_repetitions)
            _require(group % self.rep_devices == 0, "parallel.rep_devices", self.rep_devices,
                     f"the {group} members of this run cannot be split evenly over it")
        if batch_size is not None:
            _require(batch_size % self.data_devices == 0, "parallel.data_devices", self.data_devices,
                     f"must divide train.batch_size = {batch_size}")

    def rep_ids(self, num_repetitions: int) -> tuple[int, ...]:
        """The repetition ids this process trains."""
        return tuple(range(*self.rep_range)) if self.rep_range else tuple(range(num_repetitions))

    def num_members(self, num_repetitions: int) -> int:
        return len(self.rep_ids(num_repetitions))
