"""Pure, module-level step functions, jitted once by the trainer and the predictor.

``train_step(state, batch, seeds) -> (state, metrics)`` updates all R members in one step;
``predict_step`` and ``eval_step`` read the ensemble out through the count-min take-and-sum.
``state`` is ``{"step": int32 [], "params": [R, ...] pytree, "opt_state": ...}``; ``seeds`` is
``{"labels": uint32 [R]}`` plus ``"features": uint32 [R]`` with feature hashing: every bucket
and hashed feature slot is computed on device from them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mach_jax.readout import approx_decode, decode, metrics
from mach_jax.core import hashing, losses, model, sparse_update

State = dict[str, Any]
Batch = dict[str, jax.Array]
Seeds = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static side of a step: what is compiled in, not passed as arrays.

    Attributes:
      graphdef: one member's structure (``model.member_graphdef``).
      loss_name: "softmax" or "sigmoid".
      num_buckets: B.
      feat_hash_dim: slots of the hashed input (0: features are not hashed).
      learning_rate: Adam's step size.
      lazy_embedding: update the embedding tables row-sparsely (``sparse_update``).
      rep_shards: devices along the mesh's ``reps`` axis (see ``model.apply_ensemble``).
      embedding_optimizer: "adam" or "rowwise_adagrad" for the lazy embedding update, with
        ``embedding_learning_rate`` (None: ``learning_rate``).
      touched_rows_cap, entries_cap: U and T of the lazy step (``input_pipeline.batch_caps``;
        0: N * K). The caller feeds it only batches within them (``input_pipeline.batch_fits``),
        the others to the step without caps.
      lr_schedule, warmup_steps, total_steps: the step size's schedule (``learning_rate_schedule``).
      dropout, weight_decay, label_smoothing: as ``config.TrainConfig``'s.
    """

    graphdef: nnx.GraphDef
    loss_name: str
    num_buckets: int
    learning_rate: float
    feat_hash_dim: int = 0
    lazy_embedding: bool = False
    rep_shards: int = 1
    touched_rows_cap: int = 0
    entries_cap: int = 0
    embedding_optimizer: str = "adam"
    embedding_learning_rate: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    @property
    def schedule(self) -> optax.Schedule:
        """The step size after ``count`` updates, as a fraction of its peak (1 when constant)."""
        return learning_rate_schedule(self.lr_schedule, self.warmup_steps, self.total_steps)

    @property
    def optimizer(self) -> optax.GradientTransformation:
        """Adam (AdamW with weight decay), elementwise over the stacked R axis: nothing couples
        the members. Decay applies to the weight matrices ([R, in, out] leaves), not to biases."""
        if self.lr_schedule == "constant" and not self.warmup_steps and not self.weight_decay:
            # Plain Adam: the optimiser state of runs made before schedules and decay existed.
            return optax.adam(self.learning_rate, b1=sparse_update.B1, b2=sparse_update.B2,
                              eps=sparse_update.EPS)
        learning_rate = lambda count: self.learning_rate * self.schedule(count)  # noqa: E731
        return optax.adamw(learning_rate, b1=sparse_update.B1, b2=sparse_update.B2, eps=sparse_update.EPS,
                           weight_decay=self.weight_decay,
                           mask=lambda params: jax.tree.map(lambda leaf: leaf.ndim >= 3, params))


def learning_rate_schedule(name: str, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """The multiplier of the peak step size after ``count`` updates.

    "constant": 1; "cosine" / "linear": decays from 1 after the warm-up to 0 at ``total_steps``.
    With ``warmup_steps`` W > 0 it first rises linearly from 0 over W updates, whatever the name.
    """
    decay_steps = max(total_steps - warmup_steps, 1)
    decay = {"constant": optax.constant_schedule(1.0),
             "cosine": optax.cosine_decay_schedule(1.0, decay_steps),
             "linear": optax.linear_schedule(1.0, 0.0, decay_steps)}[name]
    if not warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps), decay], [warmup_steps])


def create_state(params: model.Params, spec: StepSpec) -> State:
    """Step 0: Adam moments at zero (for the embedding kept apart when it is updated lazily)."""
    if not spec.lazy_embedding:
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": spec.optimizer.init(params)}
    table = params["embedding"]  # [R, D, H]
    rest = spec.optimizer.init(_without_embedding(params))
    if spec.embedding_optimizer == "rowwise_adagrad":  # one accumulator per row: [R, D]
        opt_state = {"rest": rest, "embedding_accumulator": jnp.zeros(table.shape[:2], table.dtype)}
    else:  # Adam's two moments side by side: [R, D, 2, H]
        opt_state = {"rest": rest, "embedding_moments": jnp.zeros(table.shape[:2] + (2,) + table.shape[2:],
                                                                  table.dtype)}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}


def _without_embedding(tree: dict[str, Any]) -> dict[str, Any]:
    """The parameters (or gradients) that dense Adam updates when the embedding is lazy."""
    return {name: value for name, value in tree.items() if name != "embedding"}


def member_feature_ids(batch: Batch, seeds: Seeds, spec: StepSpec) -> jax.Array:
    """Input ids [N, K] shared by the members, or [R, N, K] hashed per member."""
    if not spec.feat_hash_dim:
        return batch["feat_ids"]
    return hashing.hash_to_range(batch["feat_ids"], seeds["features"], spec.feat_hash_dim, xp=jnp)


def logits(params: model.Params, batch: Batch, seeds: Seeds, spec: StepSpec) -> jax.Array:
    """[R, N, B] bucket logits of every member."""
    ids = member_feature_ids(batch, seeds, spec)
    return model.apply_ensemble(spec.graphdef, params, ids, batch["feat_vals"], spec.rep_shards)


def dropout_keys(seeds: Seeds, count: jax.Array, spec: StepSpec) -> jax.Array | None:
    """One PRNG key per member for the update after ``count`` steps, [R] (None without dropout).

    Member r's key depends on its seed (``ensemble.member_seeds``) and the step only, so its
    masks are the same whichever device holds it.
    """
    if not spec.dropout:
        return None
    return jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), count))(seeds["dropout"])


def _member_losses(params, feat_ids, batch: Batch, buckets: jax.Array, keys, spec: StepSpec):
    member_logits = model.apply_ensemble(spec.graphdef, params, feat_ids, batch["feat_vals"],
                                         spec.rep_shards, spec.dropout, keys)
    member_loss = losses.member_losses(spec.loss_name, member_logits, buckets, batch["label_mask"],
                                       batch["point_mask"], spec.label_smoothing)
    return member_loss.sum(), member_loss


def train_step(state: State, batch: Batch, seeds: Seeds, *, spec: StepSpec) -> tuple[State, dict]:
    """One optimiser step of every member on the same batch: Adam, with the embedding tables
    updated densely or row-sparsely, by Adam or row-wise Adagrad (``StepSpec``).

    The objective is the sum of the R member losses; member r's loss depends only on member r's
    parameters and buckets, so its gradient is exactly that of member r trained alone.

    Returns:
      ``(new_state, {"member_loss": float32 [R]})``.
    """
    buckets = hashing.hash_to_range(batch["label_ids"], seeds["labels"], spec.num_buckets, xp=jnp)
    feat_ids = member_feature_ids(batch, seeds, spec)  # [N, K] or [R, N, K]
    params, step = state["params"], state["step"] + 1
    keys = dropout_keys(seeds, state["step"], spec)
    if not spec.lazy_embedding:
        grads, member_loss = jax.grad(_member_losses, has_aux=True)(params, feat_ids, batch, buckets, keys, spec)
        updates, opt_state = spec.optimizer.update(grads, state["opt_state"], params)
        return ({"step": step, "params": optax.apply_updates(params, updates), "opt_state": opt_state},
                {"member_loss": member_loss})

    # Lazy: only the U rows a batch touches are read and written (see ``_lazy_update``).
    num_rows = params["embedding"].shape[1]
    if feat_ids.ndim == 3:  # hashed features: each member touches its own rows
        rows, local_ids = jax.vmap(sparse_update.touched_rows, in_axes=(0, None, None))(
            feat_ids, batch["feat_vals"], num_rows)
    else:
        rows, local_ids = sparse_update.touched_rows(feat_ids, batch["feat_vals"], num_rows)
    full = batch["feat_vals"].size
    sizes = (min(spec.touched_rows_cap or full, full), min(spec.entries_cap or full, full))
    return _lazy_update(state, batch, buckets, feat_ids, rows, local_ids, keys, sizes=sizes, spec=spec)


def _lazy_update(state: State, batch: Batch, buckets: jax.Array, feat_ids: jax.Array, rows: jax.Array,
                 local_ids: jax.Array, keys: jax.Array | None, *, sizes: tuple[int, int],
                 spec: StepSpec) -> tuple[State, dict]:
    """The lazy step with U touched rows and T entries (``sizes``; the batch must fit them).

    The bag is linear in the table, so it is not differentiated by autodiff (whose gradient is a
    dense [D, H] scatter): its forward reads the T entries straight from the tables, autodiff
    covers the layers above it, and the gradients of the U touched rows are formed by hand.

    Args: feat_ids int32 [N, K] or [R, N, K]; rows int32 [N K] or [R, N K] (touched rows
    first); local_ids int32 [N, K] or [R, N, K], the features' positions in ``rows``.
    """
    max_rows, max_entries = sizes
    params, step = state["params"], state["step"] + 1
    table, feat_vals = params["embedding"], batch["feat_vals"]
    rows = rows[..., :max_rows]
    ids, vals, points = sparse_update.flat_entries(feat_ids, feat_vals, max_entries)
    bags = _by_shard(functools.partial(sparse_update.entry_bags, vals=vals, points=points,
                                       num_points=feat_vals.shape[0]),
                     (table, ids), spec.rep_shards, shared=(False, ids.ndim == 1))
    rest = _without_embedding(params)
    head_losses = functools.partial(_head_losses, table=table, batch=batch, buckets=buckets, keys=keys,
                                    spec=spec)
    loss, head_vjp, member_loss = jax.vjp(head_losses, rest, bags, has_aux=True)
    rest_grads, bag_grads = head_vjp(jnp.ones_like(loss))
    row_grads = _by_shard(
        functools.partial(sparse_update.row_gradients, feat_vals=feat_vals, num_rows=max_rows),
        (bag_grads, local_ids), spec.rep_shards, shared=(False, local_ids.ndim == 2))
    updates, rest_state = spec.optimizer.update(rest_grads, state["opt_state"]["rest"], rest)
    learning_rate = (spec.embedding_learning_rate or spec.learning_rate) * spec.schedule(state["step"])
    if spec.embedding_optimizer == "rowwise_adagrad":
        name, update = "embedding_accumulator", functools.partial(
            sparse_update.rowwise_adagrad, learning_rate=learning_rate, weight_decay=spec.weight_decay)
    else:
        name, update = "embedding_moments", functools.partial(
            sparse_update.lazy_adam, step=step, learning_rate=learning_rate, weight_decay=spec.weight_decay)
    table, embedding_state = _by_shard(update, (table, state["opt_state"][name], rows, row_grads),
                                       spec.rep_shards, shared=(False, False, rows.ndim == 1, False))
    new_params = dict(optax.apply_updates(rest, updates), embedding=table)
    new_opt = {"rest": rest_state, name: embedding_state}
    return {"step": step, "params": new_params, "opt_state": new_opt}, {"member_loss": member_loss}


def _head_losses(rest: model.Params, bags: jax.Array, *, table: jax.Array, batch: Batch, buckets: jax.Array,
                 keys: jax.Array | None, spec: StepSpec):
    """Summed and per-member losses from the bags [R, N, H] (before the bias) up."""
    params = dict(rest, embedding=table)
    member_logits = model.apply_heads(spec.graphdef, params, bags + rest["embedding_bias"][:, None, :],
                                      spec.dropout, keys)
    member_loss = losses.member_losses(spec.loss_name, member_logits, buckets, batch["label_mask"],
                                       batch["point_mask"], spec.label_smoothing)
    return member_loss.sum(), member_loss


def _by_shard(fn, args: tuple, rep_shards: int, shared: tuple[bool, ...] | None = None):
    """fn(*args) run on each shard's members: [R, ...] -> [S, R / S, ...], vmapped over S (the
    sharded axis, so nothing crosses devices); ``shared[i]`` marks an arg without an R axis."""
    if rep_shards == 1:
        return fn(*args)
    is_shared = shared or (False,) * len(args)
    num_reps = args[0].shape[0]

    def split(x):
        return x.reshape((rep_shards, num_reps // rep_shards) + x.shape[1:])

    out = jax.vmap(fn, in_axes=tuple(None if s else 0 for s in is_shared))(
        *[a if s else split(a) for a, s in zip(args, is_shared)])
    return jax.tree.map(lambda x: x.reshape((num_reps,) + x.shape[2:]), out)


@dataclasses.dataclass(frozen=True)
class ApproxReadOut:
    """Static settings of approximate decoding (``approx_decode.approx_decode_topk``)."""

    top_buckets: int
    bucket_cap: int
    min_votes: int = 1


def predict_step(params: model.Params, batch: Batch, seeds: Seeds,
                 index: approx_decode.InverseIndex | None = None, *, spec: StepSpec, aggregation: str,
                 num_labels: int, k: int, chunk_size: int,
                 approx: ApproxReadOut | None = None) -> tuple[jax.Array, jax.Array]:
    """Top-k classes of a batch. Returns ``(scores, ids)``, [N, k] each, best first.

    Exact decoding without ``approx``; with it, only the candidates of the members' top buckets
    are scored, using ``index`` (``approx_decode.build_inverse_index`` of the same members).
    """
    scores = decode.bucket_scores_to_probs(logits(params, batch, seeds, spec), spec.loss_name, aggregation)
    if approx is None:
        return decode.decode_topk(scores, seeds["labels"], num_labels, k, chunk_size)
    return approx_decode.approx_decode_topk(scores, seeds["labels"], index, k=k, **dataclasses.asdict(approx))


def eval_step(params: model.Params, batch: Batch, seeds: Seeds, inv_propensity: jax.Array,
              index: approx_decode.InverseIndex | None = None, **predict_kwargs) -> dict[str, jax.Array]:
    """Metric sums of a batch (see ``metrics.metric_sums``); the host adds and divides."""
    _, topk_ids = predict_step(params, batch, seeds, index, **predict_kwargs)
    return metrics.metric_sums(topk_ids, batch["label_ids"], batch["label_mask"],
                               batch["point_mask"], inv_propensity)
