"""Row-sparse ("lazy") Adam for the [R, D, H] embedding tables.

A batch touches at most N * K of the D rows of each member's table. Dense Adam reads and writes
all D rows (and both moments) every step; lazy Adam gathers the touched rows, differentiates
through them only, and scatters the updated rows and moments back, as TensorFlow's LazyAdam
does: a row's moments decay only on the steps that touch it, and the bias correction uses the
global step. A feature with value 0 (padding included) does not touch its row.

Gathers and scatters on CPU cost about as much per padded slot as per real one, so the step
works on capped sizes: U touched rows and T nonzero entries per batch (``batch_caps`` measures
them on the host); the trainer checks each epoch's batches once, ahead of the steps
(``training.lazy_caps.epoch_fits``), and sends a batch that exceeds either cap to an uncapped
step (U = T = N * K), so no row is ever dropped.

Every function here has two kernel forms with the same arithmetic (``backend.batched_forms``):
"loop" visits the members one by one (``lax.map`` / ``lax.fori_loop``, the faster form on CPU),
"batched" handles all R at once (``jax.vmap``, one gather and one scatter over [R, U] indices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mach_jax.core import backend

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults, shared by the dense parameters


def touched_rows(feat_ids: jax.Array, feat_vals: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
    """The distinct rows a batch touches, and each feature's position among them.

    Args:
      feat_ids: int32 [N, K] row ids in [0, num_rows).
      feat_vals: float32 [N, K]; 0 marks padding (and touches nothing).
      num_rows: D, the table's rows; it doubles as the padding sentinel.

    Returns:
      ``(rows, local_ids)``: int32 [N * K] sorted distinct rows, padded with ``num_rows``; and
      int32 [N, K], the index into ``rows`` of each feature (padding points at a sentinel slot).
      The touched rows come first, so ``rows[:U]`` holds them all when there are at most U.
    """
    keys = jnp.where(feat_vals != 0, feat_ids, num_rows)
    rows = jnp.unique(keys.ravel(), size=keys.size, fill_value=num_rows)
    return rows, jnp.searchsorted(rows, keys).astype(jnp.int32)


def flat_entries(feat_ids: jax.Array, feat_vals: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The nonzero entries of a batch as a flat list, row-major order (a bag without padding).

    Args:
      feat_ids: int32 [N, K], or [R, N, K] per member.
      feat_vals: float32 [N, K].
      size: T >= the number of nonzero values; entries past them are padding.

    Returns:
      ``(ids, vals, points)``: int32 [T] (or [R, T]) ids, float32 [T] values and int32 [T] point
      ids; padding has id 0, value 0 and point N (outside the batch: dropped when summed).
    """
    num_points, width = feat_vals.shape
    positions = jnp.nonzero(feat_vals.ravel() != 0, size=size, fill_value=num_points * width)[0]
    vals = jnp.take(feat_vals.ravel(), positions, mode="fill", fill_value=0)
    flat_ids = feat_ids.reshape(feat_ids.shape[:-2] + (-1,))
    ids = jnp.take(flat_ids, positions, axis=-1, mode="fill", fill_value=0)
    return ids, vals, (positions // width).astype(jnp.int32)


def entry_bags(tables: jax.Array, ids: jax.Array, vals: jax.Array, points: jax.Array,
               num_points: int, batched: bool | None = None, scan_tables: bool = False) -> jax.Array:
    """The embedding bags (no bias) of every member, read straight from the tables.

    Args:
      tables: [R, D, H], float32 or bfloat16 (``core.precision``: rows are read as stored, the
        products and sums are float32, as in ``MachMember.bag``).
      ids, vals, points: flat entries (``flat_entries``): [T] or [R, T] ids, [T] values and
        points.
      num_points: N.
      batched: the kernel form (None: the current backend's, ``backend.batched_forms``).
      scan_tables: the loop form maps over the members' tables themselves, for autodiff: each
        member's table gradient is then its own [D, H] slice, not a scatter into the whole
        [R, D, H] at every member. Otherwise it indexes them: no copy of a member's table.

    Returns:
      [R, N, H]: ``bag[r, n] = sum of vals[t] * tables[r, ids[t]] over the entries of point n``.
    """
    def member_bag(rows):  # [T, H] rows of one member's table -> its [N, H] bags
        rows = vals[:, None] * rows
        return jnp.zeros((num_points, rows.shape[1]), rows.dtype).at[points].add(rows, mode="drop")

    if _batched(batched):
        return jax.vmap(member_bag)(tables[jnp.arange(tables.shape[0])[:, None], ids])  # [R, T, H] rows
    if scan_tables:
        if ids.ndim == 1:
            return jax.lax.map(lambda table: member_bag(table[ids]), tables)
        return jax.lax.map(lambda args: member_bag(args[0][args[1]]), (tables, ids))
    # A 2-D gather per member: no copy of member r's table.
    return jax.lax.map(lambda r: member_bag(tables[r, ids if ids.ndim == 1 else ids[r]]),
                       jnp.arange(tables.shape[0]))


def row_gradients(bag_grads: jax.Array, local_ids: jax.Array, feat_vals: jax.Array, num_rows: int,
                  batched: bool | None = None) -> jax.Array:
    """The gradients of the U touched rows, from those of the bags (the bag is linear in them).

    Args:
      bag_grads: [R, N, H] d loss / d bag.
      local_ids: int32 [N, K] (or [R, N, K]) positions of the features among the touched rows.
      feat_vals: float32 [N, K]; zeros (padding) contribute nothing.
      num_rows: U.
      batched: the kernel form (None: the current backend's, ``backend.batched_forms``).

    Returns:
      [R, U, H]: ``sum over the features (n, k) on row u of feat_vals[n, k] * bag_grads[r, n]``.
    """
    def member_grads(member_bag_grads, member_ids):
        member_ids = jnp.where(feat_vals != 0, member_ids, num_rows)  # padding: dropped
        # [N, K, H] without a gather, materialised (a scatter with the product fused into it is
        # several times slower on CPU).
        updates = jax.lax.optimization_barrier(feat_vals[..., None] * member_bag_grads[:, None, :])
        return jnp.zeros((num_rows, bag_grads.shape[2]), bag_grads.dtype).at[member_ids].add(
            updates, mode="drop")

    if _batched(batched):
        return jax.vmap(member_grads, in_axes=(0, None if local_ids.ndim == 2 else 0))(bag_grads, local_ids)
    return jax.lax.map(lambda r: member_grads(bag_grads[r], local_ids if local_ids.ndim == 2 else local_ids[r]),
                       jnp.arange(bag_grads.shape[0]))


def lazy_adam(table: jax.Array, moments: jax.Array, rows: jax.Array, grads: jax.Array,
              step: jax.Array, learning_rate: float | jax.Array, weight_decay: float = 0.0,
              batched: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """One lazy Adam step on the touched rows of every member's table.

    Args:
      table: [R, D, H] the tables.
      moments: [R, D, 2, H] Adam's first and second moments of every row, side by side (one
        gather and one scatter move both).
      rows: int32 [U] distinct touched rows shared by the members, or [R, U] per member
        (sentinel D for padding: not written).
      grads: [R, U, H] gradients of those rows.
      step: the global step count after this update (1 on the first step).
      learning_rate: Adam's step size (this step's, when scheduled).
      weight_decay: AdamW's decoupled decay, applied lazily too: to the touched rows only.
      batched: the kernel form (None: the current backend's, ``backend.batched_forms``).

    Returns:
      The new ``(table, moments)``, changed only on the touched rows.
    """
    step = step.astype(grads.dtype)

    def rule(old, member_grads, old_rows):  # [..., U, 2, H] moments -> new moments, row updates
        m = B1 * old[..., 0, :] + (1 - B1) * member_grads
        v = B2 * old[..., 1, :] + (1 - B2) * member_grads * member_grads
        update = learning_rate * (m / (1 - B1 ** step)) / (jnp.sqrt(v / (1 - B2 ** step)) + EPS)
        if weight_decay:
            update = update + learning_rate * weight_decay * old_rows
        return jnp.stack([m, v], axis=-2), update

    return _update_rows(rule, table, moments, rows, grads, weight_decay, batched)


def rowwise_adagrad(table: jax.Array, accumulator: jax.Array, rows: jax.Array, grads: jax.Array,
                    learning_rate: float | jax.Array, weight_decay: float = 0.0,
                    batched: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """One row-wise Adagrad step on the touched rows of every member's table.

    Each row keeps one accumulator of its mean squared gradient: ``a += mean(g * g)``, then
    ``row -= learning_rate * g / (sqrt(a) + EPS)`` (as FBGEMM's row-wise Adagrad). A row with a
    zero gradient would not move, so updating only the touched rows is exact.

    Args:
      table: [R, D, H] the tables.
      accumulator: [R, D] the rows' accumulators.
      rows: int32 [U] distinct touched rows shared by the members, or [R, U] per member
        (sentinel D for padding: not written).
      grads: [R, U, H] gradients of those rows.
      learning_rate: the step size (this step's, when scheduled).
      weight_decay: decoupled decay ``row -= learning_rate * weight_decay * row``, of the touched
        rows only.
      batched: the kernel form (None: the current backend's, ``backend.batched_forms``).

    Returns:
      The new ``(table, accumulator)``.
    """
    def rule(old, member_grads, old_rows):  # [..., U] accumulators -> new ones, row updates
        total = old + jnp.mean(member_grads * member_grads, axis=-1)
        update = learning_rate * member_grads / (jnp.sqrt(total)[..., None] + EPS)
        if weight_decay:
            update = update + learning_rate * weight_decay * old_rows
        return total, update

    return _update_rows(rule, table, accumulator, rows, grads, weight_decay, batched)


def _update_rows(rule, table: jax.Array, row_state: jax.Array, rows: jax.Array, grads: jax.Array,
                 weight_decay: float, batched: bool | None) -> tuple[jax.Array, jax.Array]:
    """Gathers the touched rows' state ([R, D, ...] -> [U, ...] per member), applies
    ``rule(old_state, grads, old_rows) -> (new_state, update)``, and scatters ``row -= update``
    and the new state back; sentinel rows (D) read zeros and are not written.

    "loop": member by member, each update scattered in place into the [R, D, ...] buffers (on
    CPU a batched gather or a stacked per-member output was several times slower or copied whole
    tables). "batched": the same gather, rule and scatters once, with [R, U] indices.
    """
    def apply(table, row_state, r, member_rows, member_grads):  # r: a member, or [R, 1] all of them
        # The barriers keep XLA from fusing the gather into (and repeating it in) every consumer,
        # and the arithmetic into both scatters: 1.7x faster on CPU (lazy Adam).
        old = jax.lax.optimization_barrier(row_state.at[r, member_rows].get(mode="fill", fill_value=0))
        old_rows = table.at[r, member_rows].get(mode="fill", fill_value=0) if weight_decay else None
        new, update = jax.lax.optimization_barrier(rule(old, member_grads, old_rows))
        # A bfloat16 table (``core.precision``) takes its float32 update rounded to bfloat16.
        return (table.at[r, member_rows].add(-update.astype(table.dtype), mode="drop"),
                row_state.at[r, member_rows].set(new, mode="drop"))

    if _batched(batched):
        reps = jnp.arange(table.shape[0])[:, None]
        return apply(table, row_state, reps, jnp.broadcast_to(rows, grads.shape[:2]), grads)

    def update_member(r, carry):
        return apply(*carry, r, rows if rows.ndim == 1 else rows[r], grads[r])

    return jax.lax.fori_loop(0, table.shape[0], update_member, (table, row_state))


def _batched(batched: bool | None) -> bool:
    return backend.batched_forms() if batched is None else batched
