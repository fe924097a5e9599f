"""What training and read-out share: the members' static structure, their seeds, their logits.

``MemberSpec`` is the static side of a forward pass (compiled in, not passed as arrays); the
training step extends it with its optimiser settings (``training.spec.StepSpec``), the read-out
uses it as it is. ``seeds`` are ``{"labels": uint32 [R]}`` plus ``"features": uint32 [R]`` with
feature hashing (and ``"dropout": uint32 [R]`` for training with dropout): every bucket and
hashed feature slot is computed on device from them. With learned partitions ``"labels"`` is
the members' class -> bucket table, integer [R, L], instead (``hashing.class_buckets``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mach_jax.config import Config
from mach_jax.core import backend, hashing, model, sparse_update
from mach_jax.core import mesh as mesh_lib

Batch = dict[str, jax.Array]
Seeds = dict[str, jax.Array]

_DROPOUT_STREAM = 0x64726F70  # "drop": keeps the dropout seeds apart from other uses of train.seed


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """The static side of the members' forward pass.

    Attributes:
      graphdef: one member's structure (``model.member_graphdef``).
      loss_name: the training loss (``losses.LOSSES``); it also fixes the read-out transform.
      num_buckets: B.
      feat_hash_dim: slots of the hashed input (0: features are not hashed).
      rep_shards: devices along the mesh's ``reps`` axis (see ``model.apply_ensemble``).
      batched_forms: the members' loops compiled batched over R rather than member by member
        (``model.kernel_forms`` resolved for the backend, ``backend.batched_forms``).
      dense_input: the embedding bag runs as a dense [N, D] x [D, H] matmul
        (``model.uses_dense_input``), not as a gather of the table's rows.
    """

    graphdef: nnx.GraphDef
    loss_name: str
    num_buckets: int
    feat_hash_dim: int = 0
    rep_shards: int = 1
    batched_forms: bool = False
    dense_input: bool = False


def member_spec(config: Config, num_features: int, max_nnz: int, mesh, mean_nnz: float | None = None) -> MemberSpec:
    """The ``MemberSpec`` of this config, data shape (D, padded width K, the mean row's
    nonzeros where known) and mesh."""
    return MemberSpec(graphdef=model.member_graphdef(config.model, num_features, max_nnz, mean_nnz),
                      dense_input=model.uses_dense_input(config.model, num_features, max_nnz, mean_nnz),
                      loss_name=config.train.loss, num_buckets=config.model.num_buckets,
                      feat_hash_dim=config.model.feat_hash_dim,
                      rep_shards=mesh.shape[mesh_lib.REPS_AXIS],
                      batched_forms=backend.batched_forms(config.model.kernel_forms))


def member_seeds(config: Config, rep_ids, mesh, label_table: np.ndarray | jax.Array | None = None) -> Seeds:
    """Device seeds of the members ``rep_ids``: labels uint32 [R] (features [R] if hashed,
    dropout [R] with dropout).

    Buckets and hashed feature slots are computed from them on device (``hashing.class_buckets``).
    ``label_table``: the members' learned class -> bucket table [R, L], used as ``"labels"``.
    """
    labels = hashing.repetition_seeds(config.model.label_hash_seed, np.asarray(rep_ids))
    seeds = {"labels": labels if label_table is None else label_table}
    if config.model.feat_hash_dim:
        seeds["features"] = hashing.repetition_seeds(config.model.feature_hash_seed, np.asarray(rep_ids))
    if config.train.dropout:  # dropout masks: member r's stream depends on train.seed and r only
        seeds["dropout"] = hashing.murmur3_32_of_uint32(np.asarray(rep_ids, np.uint32),
                                                        np.uint32(config.train.seed ^ _DROPOUT_STREAM))
    return mesh_lib.put(seeds, mesh_lib.stacked(mesh))


def member_feature_ids(batch: Batch, seeds: Seeds, spec: MemberSpec) -> jax.Array:
    """Input ids [N, K] shared by the members, or [R, N, K] hashed per member."""
    if not spec.feat_hash_dim:
        return batch["feat_ids"]
    return hashing.hash_to_range(batch["feat_ids"], seeds["features"], spec.feat_hash_dim, xp=jnp)


def label_buckets(batch: Batch, seeds: Seeds, spec: MemberSpec) -> jax.Array:
    """The buckets of a batch's labels under each member's map: int32 [R, N, M]."""
    return hashing.class_buckets(batch["label_ids"], seeds["labels"], spec.num_buckets, xp=jnp)


def logits(params: model.Params, batch: Batch, seeds: Seeds, spec: MemberSpec,
           entries_cap: int = 0) -> jax.Array:
    """[R, N, B] bucket logits of every member (no dropout: the read-out's forward pass).

    ``entries_cap`` T > 0 sums a gathered bag over the batch's T nonzero entries (the batch
    must hold at most T: ``sparse_update.flat_entries``) rather than its N x K padded slots.
    """
    ids = member_feature_ids(batch, seeds, spec)
    if not entries_cap or spec.dense_input:
        return model.apply_ensemble(spec.graphdef, params, ids, batch["feat_vals"], spec.rep_shards,
                                    batched=spec.batched_forms)
    bags = flat_bags(params["embedding"], ids, batch["feat_vals"], entries_cap, spec)
    return model.apply_heads(spec.graphdef, params, bags + params["embedding_bias"][:, None, :])


def flat_bags(tables: jax.Array, feat_ids: jax.Array, feat_vals: jax.Array, entries_cap: int, spec: MemberSpec,
              scan_tables: bool = False) -> jax.Array:
    """[R, N, H] embedding bags (no bias) summed over the batch's T = ``entries_cap`` nonzero
    entries (``sparse_update.flat_entries``, ``entry_bags``), each shard's members on its device.

    Args: tables [R, D, H]; feat_ids int32 [N, K] or [R, N, K]; feat_vals float32 [N, K];
    ``scan_tables`` as ``sparse_update.entry_bags``' (for a bag differentiated by autodiff).
    """
    ids, vals, points = sparse_update.flat_entries(feat_ids, feat_vals, entries_cap)
    bag = functools.partial(sparse_update.entry_bags, vals=vals, points=points, num_points=feat_vals.shape[0],
                            batched=spec.batched_forms, scan_tables=scan_tables)
    return model.by_shard(bag, (tables, ids), spec.rep_shards, shared=(False, ids.ndim == 1))
