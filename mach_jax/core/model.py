"""The MACH ensemble: R independent members stacked on a leading R axis.

One member (a Flax NNX module) maps a sparse input to B bucket logits:
embedding bag (gather rows of a [D, H] table, weight by the values, sum) -> ReLU -> further
hidden layers with ReLU -> a [H, B] output layer. The ensemble is the member's parameter pytree
with a leading R axis, initialised by ``jax.vmap`` over per-member keys. ``apply_ensemble``
runs the embedding bags member by member within each device's shard (``lax.map``, the "loop"
kernel form) or vmapped over them (the "batched" form, ``backend.batched_forms``) and the dense
layers vmapped over R: nothing is shared between members.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mach_jax.config import ModelConfig
from mach_jax.core import backend
from mach_jax.core import mesh as mesh_lib
from mach_jax.core import precision as precision_lib

Params = Any  # a pure dict of arrays (nnx.to_pure_dict), every leaf [R, ...]


class MachMember(nnx.Module):
    """One repetition's classifier: sparse [N, K] input -> [N, B] bucket logits."""

    def __init__(self, input_dim: int, hidden_sizes: tuple[int, ...], num_buckets: int, *,
                 dense_input: bool, rngs: nnx.Rngs, precision: str = "float32"):
        self.dense_input = dense_input
        self.compute_dtype = precision_lib.compute_dtype(precision)  # None: float32, no casts
        embed_init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        table = embed_init(rngs.params(), (input_dim, hidden_sizes[0]))  # drawn in float32 always
        self.embedding = nnx.Param(table.astype(precision_lib.table_dtype(precision)))
        self.embedding_bias = nnx.Param(jnp.zeros((hidden_sizes[0],)))
        # Named attributes rather than a list: parameter paths stay strings in checkpoints.
        self.num_extra_hidden = len(hidden_sizes) - 1
        for index, (h_in, h_out) in enumerate(zip(hidden_sizes[:-1], hidden_sizes[1:])):
            setattr(self, f"hidden_{index}", nnx.Linear(h_in, h_out, dtype=self.compute_dtype, rngs=rngs))
        self.output = nnx.Linear(hidden_sizes[-1], num_buckets, dtype=self.compute_dtype, rngs=rngs)

    def bag(self, feat_ids: jax.Array, feat_vals: jax.Array) -> jax.Array:
        """The embedding bag plus bias: [N, K] ids and values -> [N, H] (before the ReLU).

        Args: feat_ids int32 [N, K] in [0, D); feat_vals float32 [N, K] (0 = padding).
        Returns float32 [N, H] whatever the precision: a bfloat16 matmul accumulates in float32,
        and gathered bfloat16 rows are summed as float32 products.
        """
        table = self.embedding[...]
        if self.dense_input:
            # The same bag as a [N, D] x [D, H] matmul: for small D this beats gathering [N, K, H]
            # rows, and its weight gradient is a matmul rather than a scatter.
            mixed = self.compute_dtype is not None
            dtype = self.compute_dtype if mixed else table.dtype
            points = jnp.arange(feat_ids.shape[0])[:, None]
            dense = jnp.zeros((feat_ids.shape[0], table.shape[0]), dtype).at[points, feat_ids].add(
                feat_vals.astype(dtype))
            hidden = jnp.matmul(dense, table.astype(dtype), preferred_element_type=jnp.float32 if mixed else None)
        else:
            hidden = jnp.einsum("nk,nkh->nh", feat_vals, jnp.take(table, feat_ids, axis=0))
        return hidden + self.embedding_bias[...]

    def head(self, bag: jax.Array, dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
        """ReLU, the further hidden layers, the output layer: [N, H] -> [N, B] logits.

        With ``key`` (training), every hidden layer's output is dropped out at rate ``dropout``.
        The activations are in ``compute_dtype``; the logits are float32 (``core.precision``).
        """
        if self.compute_dtype is not None:
            bag = bag.astype(self.compute_dtype)
        hidden = _dropout(jax.nn.relu(bag), dropout, key, 0)
        for index in range(self.num_extra_hidden):
            hidden = _dropout(jax.nn.relu(getattr(self, f"hidden_{index}")(hidden)), dropout, key, index + 1)
        return self.output(hidden).astype(jnp.float32)


def _dropout(hidden: jax.Array, rate: float, key: jax.Array | None, layer: int) -> jax.Array:
    """Inverted dropout of [N, H] activations: kept units are scaled by 1 / (1 - rate)."""
    if key is None or not rate:
        return hidden
    keep = jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - rate, hidden.shape)
    return jnp.where(keep, hidden / (1.0 - rate), 0.0)


def member_input_dim(config: ModelConfig, num_features: int) -> int:
    """The rows of a member's embedding table: D, or feat_hash_dim when features are hashed."""
    return config.feat_hash_dim or num_features


def uses_dense_input(config: ModelConfig, num_features: int, max_nnz: int, mean_nnz: float | None = None) -> bool:
    """Whether the embedding bag runs as a dense matmul: ``input_layer``, or for "auto" where
    the backend's measurements say it pays off (``backend.dense_input_pays_off``) for rows of
    ``mean_nnz`` nonzeros (the training rows' mean; None: unknown, the widest row's ``max_nnz``)."""
    if config.input_layer != "auto":
        return config.input_layer == "dense"
    return backend.dense_input_pays_off(member_input_dim(config, num_features), mean_nnz, max_nnz)


def _build_member(config: ModelConfig, num_features: int, key: jax.Array,
                  dense_input: bool = False) -> MachMember:
    return MachMember(member_input_dim(config, num_features), tuple(config.hidden_sizes),
                      config.num_buckets, dense_input=dense_input, rngs=nnx.Rngs(params=key),
                      precision=config.precision)


def member_graphdef(config: ModelConfig, num_features: int, max_nnz: int,
                    mean_nnz: float | None = None) -> nnx.GraphDef:
    """The static structure of one member (no arrays are allocated); the same object for equal
    arguments on the same backend.

    Args:
      config: the model section.
      num_features: D.
      max_nnz, mean_nnz: K, the padded feature width of the training batches, and the mean
        training row's nonzeros (None: unknown): they pick the input layer.
    """
    return _graphdef(config, num_features, uses_dense_input(config, num_features, max_nnz, mean_nnz))


@functools.lru_cache(maxsize=64)  # tracing a member's construction costs more than the run's small steps
def _graphdef(config: ModelConfig, num_features: int, dense: bool) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: _build_member(config, num_features, jax.random.key(0), dense))
    return nnx.graphdef(abstract)


def member_keys(seed: int, rep_ids: jax.Array) -> jax.Array:
    """Per-member init keys [R]: member r's key depends on (seed, r) only, not on R."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(rep_ids)


def init_params(config: ModelConfig, num_features: int, rep_ids: jax.Array, seed: int) -> Params:
    """Initialises the stacked ensemble (call under jit with out_shardings to create it sharded).

    Args:
      config: the model section.
      num_features: D of the data.
      rep_ids: int32 [R], the repetition ids of these members (0..R-1 for a whole ensemble).
      seed: the training seed.

    Returns:
      Parameter pytree, every leaf [R, ...].
    """
    def init_one(key):
        return nnx.to_pure_dict(nnx.state(_build_member(config, num_features, key), nnx.Param))

    return jax.vmap(init_one)(member_keys(seed, rep_ids))


def init_params_by_member(config: ModelConfig, num_features: int, rep_ids: jax.Array, seed: int,
                          mesh: Mesh) -> Params:
    """``init_params``'s very values, drawn member by member: each device draws its own members
    (``jax.shard_map`` over the mesh's R axis), one at a time (``jax.lax.map``), so XLA's
    temporaries hold one member's draws rather than all R's (call under jit).

    Returns:
      Parameter pytree, every leaf [R, ...], split over the mesh's R axis.
    """
    def init_one(key):
        return nnx.to_pure_dict(nnx.state(_build_member(config, num_features, key), nnx.Param))

    def local_members(ids):  # this device's members [R / devices]
        return jax.lax.map(init_one, member_keys(seed, ids))

    members = P(mesh_lib.REPS_AXIS)
    return jax.shard_map(local_members, mesh=mesh, in_specs=members, out_specs=members)(rep_ids)


@functools.lru_cache(maxsize=32)  # tracing the members' construction costs more than a small load
def param_shapes(config: ModelConfig, num_features: int, rep_ids: tuple[int, ...]) -> Params:
    """``init_params``'s shapes and dtypes for these members, nothing allocated (the seed does not
    change them): the same object for equal arguments, so callers must not modify it."""
    return jax.eval_shape(lambda: init_params(config, num_features, jnp.asarray(rep_ids), 0))


def apply_ensemble(graphdef: nnx.GraphDef, params: Params, feat_ids: jax.Array,
                   feat_vals: jax.Array, rep_shards: int = 1, dropout: float = 0.0,
                   dropout_keys: jax.Array | None = None, batched: bool | None = None) -> jax.Array:
    """Bucket logits of every member.

    Args:
      graphdef: from ``member_graphdef``.
      params: stacked parameters, leaves [R, ...].
      feat_ids: int32 [N, K] shared by all members, or [R, N, K] per member (feature hashing).
      feat_vals: float32 [N, K].
      rep_shards: S, the devices along the mesh's ``reps`` axis (R is split into S groups).
      dropout, dropout_keys: training only: the rate and one PRNG key per member, [R].
      batched: the embedding bags' kernel form: vmapped over each shard's members (True) or
        member by member (False); None: the current backend's (``backend.batched_forms``).

    Returns:
      float32 [R, N, B] logits.
    """
    batched = backend.batched_forms() if batched is None else batched
    shard_bags = functools.partial(_batched_bags if batched else _looped_bags, graphdef, feat_vals)
    # Each shard's members only: the step stays free of communication (a scan over the sharded
    # R axis itself would all-gather the tables).
    bags = by_shard(shard_bags, (params, feat_ids), rep_shards, shared=(False, feat_ids.ndim != 3))
    return apply_heads(graphdef, params, bags, dropout, dropout_keys)


def _bag_one(graphdef: nnx.GraphDef, feat_vals: jax.Array, member_params: Params, ids: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, member_params).bag(ids, feat_vals)


def _looped_bags(graphdef: nnx.GraphDef, feat_vals: jax.Array, params: Params, feat_ids: jax.Array) -> jax.Array:
    """The "loop" form: [R', N, H] bags of R' members, one member at a time (``lax.map``).

    On CPU an unbatched row gather is about 4x faster than the batched gather vmap makes of it.
    ``feat_ids`` is [N, K] shared or [R', N, K] per member.
    """
    bag_one = functools.partial(_bag_one, graphdef, feat_vals)
    if feat_ids.ndim == 3:
        return lax.map(lambda args: bag_one(*args), (params, feat_ids))
    return lax.map(lambda member_params: bag_one(member_params, feat_ids), params)


def _batched_bags(graphdef: nnx.GraphDef, feat_vals: jax.Array, params: Params, feat_ids: jax.Array) -> jax.Array:
    """The "batched" form: the same [R', N, H] bags as one gather (or scatter and matmul) over
    all R' members (``jax.vmap``), with no loop over them."""
    bag_one = functools.partial(_bag_one, graphdef, feat_vals)
    return jax.vmap(bag_one, in_axes=(0, 0 if feat_ids.ndim == 3 else None))(params, feat_ids)


def apply_heads(graphdef: nnx.GraphDef, params: Params, bags: jax.Array, dropout: float = 0.0,
                dropout_keys: jax.Array | None = None) -> jax.Array:
    """[R, N, H] bags (bias included, before the ReLU) -> [R, N, B] logits, vmapped over the members.

    With ``dropout_keys`` (one PRNG key per member, [R]) the hidden layers are dropped out.
    """
    def head(member_params, bag, key):  # key is None (an empty pytree under vmap) without dropout
        return nnx.merge(graphdef, member_params).head(bag, dropout, key)

    return jax.vmap(head)(params, bags, dropout_keys)


def by_shard(fn, args: tuple, rep_shards: int, shared: tuple[bool, ...] | None = None):
    """fn(*args) run on each shard's members: [R, ...] -> [S, R / S, ...], vmapped over S (the
    sharded axis, so nothing crosses devices), the result back to [R, ...]. An arg may be a
    pytree of [R, ...] leaves (parameters); ``shared[i]`` marks an arg without an R axis. With
    one shard, fn(*args) itself (no vmap of size 1: it would batch a loop form's gathers again)."""
    if rep_shards == 1:
        return fn(*args)
    is_shared = shared or (False,) * len(args)
    num_reps = jax.tree.leaves(args[0])[0].shape[0]

    def split(tree):
        return jax.tree.map(lambda x: x.reshape((rep_shards, num_reps // rep_shards) + x.shape[1:]), tree)

    out = jax.vmap(fn, in_axes=tuple(None if s else 0 for s in is_shared))(
        *[a if s else split(a) for a, s in zip(args, is_shared)])
    return jax.tree.map(lambda x: x.reshape((num_reps,) + x.shape[2:]), out)
