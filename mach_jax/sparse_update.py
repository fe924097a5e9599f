"""Row-sparse ("lazy") Adam for the [R, D, H] embedding tables.

A batch touches at most N * K of the D rows of each member's table. Dense Adam reads and writes
all D rows (and both moments) every step; lazy Adam gathers the touched rows, differentiates
through them only, and scatters the updated rows and moments back, as TensorFlow's LazyAdam
does: a row's moments decay only on the steps that touch it, and the bias correction uses the
global step. A feature with value 0 (padding included) does not touch its row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
    """
    keys = jnp.where(feat_vals != 0, feat_ids, num_rows)
    rows = jnp.unique(keys.ravel(), size=keys.size, fill_value=num_rows)
    return rows, jnp.searchsorted(rows, keys).astype(jnp.int32)


def gather_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
    """Rows [U, H] of a [D, H] table; the sentinel row id D reads zeros."""
    return jnp.take(table, rows, axis=0, mode="fill", fill_value=0)


def lazy_adam(table: jax.Array, mu: jax.Array, nu: jax.Array, rows: jax.Array, grads: jax.Array,
              step: jax.Array, learning_rate: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One lazy Adam step on the touched rows of one member's table.

    Args:
      table, mu, nu: [D, H] the table and its first and second moments.
      rows: int32 [U] distinct touched rows (sentinel D for padding: not written).
      grads: [U, H] gradients of those rows.
      step: the global step count after this update (1 on the first step).
      learning_rate: Adam's step size.

    Returns:
      The new ``(table, mu, nu)``, changed only on the touched rows.
    """
    m = B1 * gather_rows(mu, rows) + (1 - B1) * grads
    v = B2 * gather_rows(nu, rows) + (1 - B2) * grads * grads
    step = step.astype(grads.dtype)
    update = learning_rate * (m / (1 - B1 ** step)) / (jnp.sqrt(v / (1 - B2 ** step)) + EPS)
    return (table.at[rows].add(-update, mode="drop"), mu.at[rows].set(m, mode="drop"),
            nu.at[rows].set(v, mode="drop"))
