"""What the training state holds, in entries and bytes, before anything is allocated.

A member's parameters are its weight matrices and biases (``member_matrices``); the optimiser
keeps Adam's two moments per parameter, or, for a table updated by row-wise Adagrad, one
accumulator per embedding row. Bytes follow ``model.precision`` (``core.precision``): every
array is float32 except, with "bfloat16_tables", the [R, D, H] embedding tables and, under
dense Adam, their first moments (2 bytes an entry). ``resources`` adds these up per phase; the
tests compare them with the real pytree (``optimizer.create_state``).
"""

from __future__ import annotations

import itertools

from mach_jax.config import Config, ModelConfig
from mach_jax.core import model, precision

FLOAT32 = precision.FLOAT32_BYTES


def member_matrices(config: ModelConfig, num_features: int) -> list[tuple[int, int]]:
    """A member's weight matrices, [in, out] each: [D or feat_hash_dim, H1], [H1, H2], ..., [H, B]."""
    widths = [model.member_input_dim(config, num_features), *config.hidden_sizes, config.num_buckets]
    return list(itertools.pairwise(widths))


def member_parameters(config: ModelConfig, num_features: int) -> int:
    """One member's parameters: every weight matrix and its bias."""
    return sum(rows * cols + cols for rows, cols in member_matrices(config, num_features))


def _table_entries(config: ModelConfig, num_features: int) -> int:
    rows, width = member_matrices(config, num_features)[0]
    return rows * width


def parameter_bytes(config: ModelConfig, num_features: int) -> int:
    """One member's parameter bytes: the embedding table at its precision, the rest float32."""
    table = _table_entries(config, num_features)
    rest = member_parameters(config, num_features) - table
    return table * precision.table_bytes(config.precision) + rest * FLOAT32


def moment_bytes(config: Config, num_features: int, lazy: bool) -> int:
    """One member's optimiser state bytes (``optimizer.create_state``): Adam's two moments per
    parameter, the table's first one at the table's precision under dense Adam (float32 in the
    lazy step's [R, D, 2, H]); row-wise Adagrad's one float32 accumulator per embedding row
    instead of the table's two moments."""
    table = _table_entries(config.model, num_features)
    rest = member_parameters(config.model, num_features) - table
    if config.train.embedding_optimizer == "rowwise_adagrad":
        return (2 * rest + member_matrices(config.model, num_features)[0][0]) * FLOAT32
    first = FLOAT32 if lazy else precision.table_bytes(config.model.precision)
    return 2 * rest * FLOAT32 + table * (first + FLOAT32)


def moments_name(config: Config) -> str:
    if config.train.embedding_optimizer == "rowwise_adagrad":
        return "Adam moments and row-wise Adagrad accumulators"
    return "Adam moments"
