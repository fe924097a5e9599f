"""Learned partitions during training: the members' class -> bucket table re-assigned at epoch ends.

With ``partition.label_buckets`` "learned" the state carries ``"label_table"`` int [R, L] (the
hashes at step 0). At the end of every ``repartition_every_epochs``-th epoch up to
``repartition_last_epoch`` (before the next epoch's first update), ``Repartitioner`` reads each member's m best buckets for every
training point (one forward pass, on device: [R, N, m] indices and probabilities come to the
host, nothing [L, B]), re-assigns each member's row (``core.label_partition.repartition``, seeded
by the training seed, the step and the member's repetition id) and puts the new table in the
state, sharded like the parameters. The weights and moments are kept.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax import lax

from mach_jax.config import Config
from mach_jax.core import label_partition, losses, mesh as mesh_lib
from mach_jax.core.compiled import shared_jit
from mach_jax.core.ensemble_spec import Batch, MemberSpec, Seeds, logits
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.errors import ConfigError
from mach_jax.training.optimizer import State
from mach_jax.training.program import TrainingProgram

log = logging.getLogger("mach_jax")


def member_top_buckets(params, batch: Batch, seeds: Seeds, *, spec: MemberSpec,
                       num_top: int) -> tuple[jax.Array, jax.Array]:
    """Every member's ``num_top`` = m best buckets for a batch, from its own probabilities
    P_r(b | x) (the loss's transform). Returns ``(buckets int32 [R, N, m], probs float32 [R, N, m])``."""
    probs = losses.get_loss(spec.loss_name).probs(logits(params, batch, seeds, spec).astype(np.float32))
    top_probs, top_buckets = lax.top_k(probs, num_top)
    return top_buckets, top_probs


class Repartitioner:
    """``repartition(step, state) -> state``: the class -> bucket table re-assigned from the
    members' predictions on ``train_data`` (the training points as the step sees them).

    Raises:
      ConfigError: a multi-process run (the table is re-assigned on one host).
    """

    def __init__(self, config: Config, program: TrainingProgram, train_data: XCDataset):
        if jax.process_count() > 1:
            raise ConfigError("partition.label_buckets=learned runs in one process (the class -> bucket "
                              "table is re-assigned on one host); use hashed buckets across processes",
                              field="partition.label_buckets")
        self.settings, self.seed = config.partition, config.train.seed
        self.program, self.data = program, train_data
        self.num_buckets = config.model.num_buckets
        self.num_top = min(self.settings.affinity_buckets, self.num_buckets)
        self.shape = batches.BatchShape(config.eval.eval_batch_size * program.mesh.shape[mesh_lib.DATA_AXIS],
                                        max(batches.widest_row(train_data.features), 1),
                                        max(batches.widest_row(train_data.labels), 1))
        self._top = shared_jit(member_top_buckets, {"spec": program.spec.member, "num_top": self.num_top},
                               out_shardings=mesh_lib.stacked(program.mesh))

    def top_buckets(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """The members' m best buckets for every training point: [R, N, m] buckets and probabilities."""
        seeds = dict(self.program.seeds, labels=state["label_table"])
        found = [self._top(state["params"], mesh_lib.put(batch, self.program.batch_sharding), seeds)
                 for batch in batches.eval_batches(self.data, self.shape)]
        buckets, probs = (np.concatenate(parts, axis=1)[:, :self.data.num_points]
                          for parts in zip(*jax.device_get(found)))
        return buckets, probs

    def __call__(self, step: int, state: State) -> State:
        top, probs = self.top_buckets(state)
        table = np.asarray(jax.device_get(state["label_table"]))
        labels = self.data.labels
        new = np.stack([label_partition.repartition(
            top[r], probs[r], labels.indptr, labels.indices, table[r], num_buckets=self.num_buckets,
            choices=self.settings.bucket_choices, load_cap=self.settings.bucket_load_cap,
            seed=(self.seed, step, rep_id)) for r, rep_id in enumerate(self.program.rep_ids)])
        loads = np.stack([np.bincount(row, minlength=self.num_buckets) for row in new.astype(np.int64)])
        log.info("step %d: classes re-assigned to buckets: %.1f%% moved, largest bucket %d classes "
                 "(mean %.1f)", step, 100 * float(np.mean(new != table)), int(loads.max()),
                 new.shape[1] / self.num_buckets)
        return {**state, "label_table": jax.device_put(new, state["label_table"].sharding)}

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the classes are re-assigned at the end of epoch ``epoch`` (before the next
        one's first update): every ``repartition_every_epochs``-th epoch up to
        ``repartition_last_epoch``, never after the last (a table no update would train)."""
        return (1 <= epoch <= self.settings.last_epoch(epochs) and epoch < epochs
                and epoch % self.settings.repartition_every_epochs == 0)
