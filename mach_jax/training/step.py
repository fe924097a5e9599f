"""The pure train step: ``train_step(state, batch, seeds, spec=...) -> (state, metrics)``.

One step updates all R members on the same batch; it is jitted once by ``program`` with
donation and explicit shardings. ``state`` is ``optimizer.State``; ``seeds`` are the members'
hash (and dropout) seeds, ``ensemble_spec.member_seeds``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mach_jax.core import losses, model, sparse_update
from mach_jax.core.ensemble_spec import Batch, Seeds, flat_bags, label_buckets, member_feature_ids
from mach_jax.training.optimizer import State, without_embedding
from mach_jax.training.spec import StepSpec


def dropout_keys(seeds: Seeds, count: jax.Array, spec: StepSpec) -> jax.Array | None:
    """One PRNG key per member for the update after ``count`` steps, [R] (None without dropout).

    Member r's key depends on its seed (``ensemble_spec.member_seeds``) and the step only, so its
    masks are the same whichever device holds it.
    """
    if not spec.dropout:
        return None
    return jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), count))(seeds["dropout"])


def _member_losses(params, feat_ids, batch: Batch, buckets: jax.Array, keys, spec: StepSpec):
    member_logits = model.apply_ensemble(spec.member.graphdef, params, feat_ids, batch["feat_vals"],
                                         spec.member.rep_shards, spec.dropout, keys,
                                         batched=spec.member.batched_forms)
    member_loss = losses.member_losses(spec.member.loss_name, member_logits, buckets, batch["label_mask"],
                                       batch["point_mask"], spec.label_smoothing)
    return member_loss.sum(), member_loss


def _entry_member_losses(params, feat_ids, batch: Batch, buckets: jax.Array, keys, spec: StepSpec):
    """``_member_losses`` with the bags summed over the T nonzero entries (``spec.entries_cap``)
    rather than the N x K padded slots: the gathered bag's cost follows the nonzeros."""
    bags = flat_bags(params["embedding"], feat_ids, batch["feat_vals"], spec.entries_cap, spec.member,
                     scan_tables=True)
    return _head_losses(without_embedding(params), bags, table=params["embedding"], batch=batch,
                        buckets=buckets, keys=keys, spec=spec)


def train_step(state: State, batch: Batch, seeds: Seeds, *, spec: StepSpec) -> tuple[State, dict]:
    """``member_step`` with the members' class -> bucket map: their hash seeds, or the learned
    table the state carries (``state["label_table"]`` int [R, L], unchanged by the step)."""
    if "label_table" not in state:
        return member_step(state, batch, seeds, spec=spec)
    table = state["label_table"]
    members = {name: value for name, value in state.items() if name != "label_table"}
    new_state, metrics = member_step(members, batch, dict(seeds, labels=table), spec=spec)
    return {**new_state, "label_table": table}, metrics


def member_step(state: State, batch: Batch, seeds: Seeds, *, spec: StepSpec) -> tuple[State, dict]:
    """One optimiser step of every member on the same batch: Adam, with the embedding tables
    updated densely or row-sparsely, by Adam or row-wise Adagrad (``StepSpec``).

    The objective is the sum of the R member losses; member r's loss depends only on member r's
    parameters and buckets, so its gradient is exactly that of member r trained alone.

    Returns:
      ``(new_state, {"member_loss": float32 [R]})``.
    """
    buckets = label_buckets(batch, seeds, spec.member)  # [R, N, M]
    feat_ids = member_feature_ids(batch, seeds, spec.member)  # [N, K] or [R, N, K]
    params, step = state["params"], state["step"] + 1
    keys = dropout_keys(seeds, state["step"], spec)
    if not spec.lazy_embedding:
        member_losses = _entry_member_losses if spec.entries_cap else _member_losses
        grads, member_loss = jax.grad(member_losses, has_aux=True)(params, feat_ids, batch, buckets, keys, spec)
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
    bags = flat_bags(table, feat_ids, feat_vals, max_entries, spec.member)
    rest = without_embedding(params)
    head_losses = functools.partial(_head_losses, table=table, batch=batch, buckets=buckets, keys=keys,
                                    spec=spec)
    loss, head_vjp, member_loss = jax.vjp(head_losses, rest, bags, has_aux=True)
    rest_grads, bag_grads = head_vjp(jnp.ones_like(loss))
    row_grads = model.by_shard(
        functools.partial(sparse_update.row_gradients, feat_vals=feat_vals, num_rows=max_rows,
                          batched=spec.member.batched_forms),
        (bag_grads, local_ids), spec.member.rep_shards, shared=(False, local_ids.ndim == 2))
    updates, rest_state = spec.optimizer.update(rest_grads, state["opt_state"]["rest"], rest)
    learning_rate = (spec.embedding_learning_rate or spec.learning_rate) * spec.schedule(state["step"])
    if spec.embedding_optimizer == "rowwise_adagrad":
        name, update = "embedding_accumulator", functools.partial(
            sparse_update.rowwise_adagrad, learning_rate=learning_rate, weight_decay=spec.weight_decay)
    else:
        name, update = "embedding_moments", functools.partial(
            sparse_update.lazy_adam, step=step, learning_rate=learning_rate, weight_decay=spec.weight_decay)
    update = functools.partial(update, batched=spec.member.batched_forms)
    table, embedding_state = model.by_shard(update, (table, state["opt_state"][name], rows, row_grads),
                                            spec.member.rep_shards, shared=(False, False, rows.ndim == 1, False))
    new_params = dict(optax.apply_updates(rest, updates), embedding=table)
    new_opt = {"rest": rest_state, name: embedding_state}
    return {"step": step, "params": new_params, "opt_state": new_opt}, {"member_loss": member_loss}


def _head_losses(rest: model.Params, bags: jax.Array, *, table: jax.Array, batch: Batch, buckets: jax.Array,
                 keys: jax.Array | None, spec: StepSpec):
    """Summed and per-member losses from the bags [R, N, H] (before the bias) up."""
    params = dict(rest, embedding=table)
    member_logits = model.apply_heads(spec.member.graphdef, params, bags + rest["embedding_bias"][:, None, :],
                                      spec.dropout, keys)
    member_loss = losses.member_losses(spec.member.loss_name, member_logits, buckets, batch["label_mask"],
                                       batch["point_mask"], spec.label_smoothing)
    return member_loss.sum(), member_loss
