"""``model.precision``: the dtypes the members compute in and keep their tables in.

- "float32": everything float32 (the default; its code path is the one of before the option).
- "bfloat16": the dense input bag's matmul, the hidden activations and every dense layer's
  matmul run in bfloat16, from float32 parameters (``nnx.Linear``'s ``dtype`` vs
  ``param_dtype``); the gathered bags sum float32 products; the logits are cast to float32
  before any loss or read-out; the optimiser state is float32.
- "bfloat16_tables": as "bfloat16", and the [R, D, H] embedding tables, by far the largest
  arrays, are stored in bfloat16 (half their bytes). Their moments go to bfloat16 only where it
  is safe: dense Adam's first moment follows its table (b1 = 0.9 moves it 10 % a step, far above
  bfloat16's 0.4 % resolution); every second moment stays float32 (b2 = 0.999 decays it 0.1 % a
  step, below that resolution: it would never decay), and so do the lazy step's moments
  [R, D, 2, H] (both moments share one array) and row-wise Adagrad's accumulators [R, D] (an
  ever-growing sum whose small increments bfloat16 would drop). The tables keep no float32
  master copy: each step's float32 update is rounded into the bfloat16 table, so an update under
  about 0.4 % of a weight (late in a decaying schedule) is lost.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

FLOAT32_BYTES = 4


def compute_dtype(precision: str) -> np.dtype | None:
    """The dtype of the members' matmuls and activations; None for "float32" (no casts at all)."""
    return None if precision == "float32" else jnp.dtype(jnp.bfloat16)


def table_dtype(precision: str) -> np.dtype:
    """The dtype the [R, D, H] embedding tables are stored in."""
    return jnp.dtype(jnp.bfloat16 if precision == "bfloat16_tables" else jnp.float32)


def table_bytes(precision: str) -> int:
    """Bytes of one embedding table entry (and of its dense Adam first moment)."""
    return table_dtype(precision).itemsize
