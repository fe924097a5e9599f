"""The static side of the train step: the members' forward pass plus the optimiser's settings.

``step_spec(config, info, mesh)`` resolves every "auto" choice of the training config for the
data and backend at hand (the input layer, dense or row-sparse embedding updates) once, before
anything is compiled; the step itself only reads the resolved ``StepSpec``.
"""

from __future__ import annotations

import dataclasses

import optax

from mach_jax.config import Config, ModelConfig, TrainConfig
from mach_jax.core import backend, model
from mach_jax.core.ensemble_spec import MemberSpec, member_spec
from mach_jax.data.batches import num_batches
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import ConfigError
from mach_jax.training import optimizer


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the train step compiles in.

    Attributes:
      member: the members' forward pass (graphdef, loss, B, hashed input, rep shards).
      learning_rate: Adam's peak step size.
      lazy_embedding: update the embedding tables row-sparsely (``sparse_update``).
      embedding_optimizer: "adam" or "rowwise_adagrad" for the lazy embedding update, with
        ``embedding_learning_rate`` (None: ``learning_rate``).
      touched_rows_cap, entries_cap: U and T of the lazy step, T of the gathered bag
        (``lazy_caps.batch_caps``; 0: N * K). The caller feeds it only batches within them (``lazy_caps.CapRouter``),
        the others to the step without caps.
      lr_schedule, warmup_steps, total_steps: the step size's schedule
        (``optimizer.learning_rate_schedule``); total_steps is 1 for a constant one, which never reads it.
      dropout, weight_decay, label_smoothing: as ``config.TrainConfig``'s.
    """

    member: MemberSpec
    learning_rate: float
    lazy_embedding: bool
    touched_rows_cap: int
    entries_cap: int
    embedding_optimizer: str
    embedding_learning_rate: float | None
    lr_schedule: str
    warmup_steps: int
    total_steps: int
    dropout: float
    weight_decay: float
    label_smoothing: float

    @property
    def schedule(self) -> optax.Schedule:
        """The step size after ``count`` updates, as a fraction of its peak (1 when constant)."""
        return optimizer.learning_rate_schedule(self.lr_schedule, self.warmup_steps, self.total_steps)

    @property
    def optimizer(self) -> optax.GradientTransformation:
        """Adam or AdamW over the stacked R axis (``optimizer.dense_optimizer``)."""
        return optimizer.dense_optimizer(self.learning_rate, self.schedule, self.lr_schedule,
                                         self.warmup_steps, self.weight_decay)


def uses_lazy_update(config: ModelConfig, embedding_update: str, num_features: int, max_nnz: int,
                     batch_size: int, embedding_optimizer: str = "adam", *,
                     mean_nnz: float | None = None) -> bool:
    """Whether the embedding tables get row-sparse updates (``train.embedding_update``; always
    with ``embedding_optimizer="rowwise_adagrad"``, which exists only as a row-sparse update).

    Lazy updates need the gathering (sparse) embedding bag. "auto" picks them where the
    backend's measurements say they pay off (``backend.lazy_update_pays_off``) for batches of
    ``batch_size`` typical rows: ``mean_nnz`` nonzeros each (the training rows' mean), or the
    widest row's ``max_nnz`` where the mean is unknown (a run started before it was recorded).
    """
    sparse_input = not model.uses_dense_input(config, num_features, max_nnz, mean_nnz)
    if embedding_optimizer == "rowwise_adagrad":
        if not sparse_input:
            raise ConfigError("train.embedding_optimizer='rowwise_adagrad' needs the sparse input layer, "
                              f"but model.input_layer={config.input_layer!r} resolves to dense here "
                              "(set --input-layer sparse)", field="train.embedding_optimizer")
        return True
    if embedding_update == "lazy" and not sparse_input:
        raise ConfigError("train.embedding_update='lazy' needs the sparse input layer, but "
                          f"model.input_layer={config.input_layer!r} resolves to dense here "
                          "(set --input-layer sparse)", field="train.embedding_update")
    if embedding_update == "auto":
        rows = model.member_input_dim(config, num_features)
        return sparse_input and backend.lazy_update_pays_off(rows, batch_size, mean_nnz, max_nnz)
    return embedding_update == "lazy"


def step_spec(config: Config, info: RunInfo, mesh) -> StepSpec:
    """The static side of the train step for this config, data and mesh (no caps yet:
    ``program.build_program`` sets them from the data)."""
    train = config.train
    lazy = uses_lazy_update(config.model, train.embedding_update, info.num_features, info.max_nnz,
                            train.batch_size, train.embedding_optimizer, mean_nnz=info.mean_nnz)
    # A constant step size never reads the total: runs of other lengths then share the step.
    total_steps = (1 if train.lr_schedule == "constant"
                   else train.epochs * num_batches(info.num_train_points, train.batch_size))
    member = member_spec(config, info.num_features, info.max_nnz, mesh, info.mean_nnz)
    return spec_from_train(member, train, lazy_embedding=lazy, total_steps=total_steps)


def spec_from_train(member: MemberSpec, train: TrainConfig, *, lazy_embedding: bool, total_steps: int = 1,
                    touched_rows_cap: int = 0, entries_cap: int = 0) -> StepSpec:
    """A ``StepSpec`` whose optimiser settings are ``train``'s (the one place their defaults live).

    Args:
      member: the members' forward pass.
      train: the training section.
      lazy_embedding: row-sparse embedding updates (``uses_lazy_update``).
      total_steps: the schedule's length (1 for a constant step size, which never reads it).
      touched_rows_cap, entries_cap: U and T (0: no cap).
    """
    return StepSpec(
        member=member, learning_rate=train.learning_rate, lazy_embedding=lazy_embedding,
        touched_rows_cap=touched_rows_cap, entries_cap=entries_cap,
        embedding_optimizer=train.embedding_optimizer,
        embedding_learning_rate=train.resolved_embedding_learning_rate,
        lr_schedule=train.lr_schedule, warmup_steps=train.warmup_steps, total_steps=total_steps,
        dropout=train.dropout, weight_decay=train.weight_decay, label_smoothing=train.label_smoothing)
