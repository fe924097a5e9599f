"""Backend-specific performance choices, in one place.

Every threshold that picks one implementation over another was measured on one backend; this
module names each, with the backend it was measured on and how, so that other backends can get
their own numbers without touching the model or the training step. A backend with no
measurement of its own uses the CPU's figures.
"""

from __future__ import annotations

import jax

# A member's embedding bag runs as a dense [N, D] x [D, H] matmul when D <= this ratio times the
# padded row width K. CPU (2-core Xeon): the dense bag was about 10x faster per element than the
# row gather, so for small D the dense matmul wins even though it touches every row.
_DENSE_INPUT_RATIO = {"cpu": 16}

# Row-sparse ("lazy") embedding updates pay off when the table has at least this many times the
# rows a batch can touch (N K). CPU (``scripts/bench.py --only train``, N K ~ 35,000): dense/lazy
# step time was 0.95x at D = 30,000 and 2.15x at D = 100,000, since a gathered row costs several
# streamed ones.
_LAZY_MIN_RATIO = {"cpu": 1.5}


def current_backend() -> str:
    """The default JAX backend's platform name: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def _measured(table: dict[str, float], backend: str | None) -> float:
    return table.get(backend or current_backend(), table["cpu"])


def dense_input_pays_off(num_rows: int, max_nnz: int, backend: str | None = None) -> bool:
    """Whether a [num_rows, H] table's bag is faster as a dense matmul than as a row gather."""
    return num_rows <= _measured(_DENSE_INPUT_RATIO, backend) * max_nnz


def lazy_update_pays_off(num_rows: int, batch_size: int, max_nnz: int, backend: str | None = None) -> bool:
    """Whether row-sparse updates of a [num_rows, H] table beat dense Adam for N x K batches."""
    return num_rows >= _measured(_LAZY_MIN_RATIO, backend) * batch_size * max_nnz


# Grain's 2 threads built batches of 1,024 Amazon-670K-shaped rows 1.41-1.53x as fast as our one
# prefetch thread on a quiet 2-core CPU host, and 0.86-1.03x as fast while the cores were busy,
# as they are when the CPU itself trains (docs/host_loader.md). So Grain pays off where an
# accelerator leaves the host's cores free; measured on the CPU host only.
_GRAIN_PAYS_OFF = {"cpu": False, "gpu": True, "tpu": True}


def grain_pays_off(backend: str | None = None) -> bool:
    """Whether ``data.host_loader="auto"`` should build the host batches with Grain."""
    return _GRAIN_PAYS_OFF.get(backend or current_backend(), False)
