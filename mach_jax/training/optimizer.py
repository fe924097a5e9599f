"""The optimisers of the dense parameters, the step-size schedules, and the initial state.

``state`` is ``{"step": int32 [], "params": [R, ...] pytree, "opt_state": ...}``. Everything is
elementwise over the stacked R axis: nothing couples the members. The embedding tables, when
updated row-sparsely, keep their own state beside the dense optimiser's (``sparse_update``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mach_jax.core import model, sparse_update

State = dict[str, Any]


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


def dense_optimizer(learning_rate: float, schedule: optax.Schedule, schedule_name: str, warmup_steps: int,
                    weight_decay: float) -> optax.GradientTransformation:
    """Adam (AdamW with weight decay), elementwise over the stacked R axis. Decay applies to the
    weight matrices ([R, in, out] leaves), not to biases."""
    if schedule_name == "constant" and not warmup_steps and not weight_decay:
        # Plain Adam: a constant step size needs no schedule state (and keeps the state's layout).
        return optax.adam(learning_rate, b1=sparse_update.B1, b2=sparse_update.B2, eps=sparse_update.EPS)
    scheduled = lambda count: learning_rate * schedule(count)  # noqa: E731
    return optax.adamw(scheduled, b1=sparse_update.B1, b2=sparse_update.B2, eps=sparse_update.EPS,
                       weight_decay=weight_decay,
                       mask=lambda params: jax.tree.map(lambda leaf: leaf.ndim >= 3, params))


def without_embedding(tree: dict[str, Any]) -> dict[str, Any]:
    """The parameters (or gradients) that the dense optimiser updates when the embedding is lazy."""
    return {name: value for name, value in tree.items() if name != "embedding"}


def create_state(params: model.Params, spec) -> State:
    """Step 0 for a ``spec.StepSpec``: moments at zero (for the embedding kept apart when it is
    updated lazily: Adam's two moments [R, D, 2, H], or row-wise Adagrad's accumulator [R, D]).

    Adam's first moment takes its parameter's dtype (bfloat16 for a bfloat16 table); second
    moments, lazy moments and accumulators are float32 whatever the precision (``core.precision``).
    """
    if not spec.lazy_embedding:
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": _second_moments_in_float32(spec.optimizer.init(params))}
    table = params["embedding"]  # [R, D, H]
    rest = _second_moments_in_float32(spec.optimizer.init(without_embedding(params)))
    if spec.embedding_optimizer == "rowwise_adagrad":
        opt_state = {"rest": rest, "embedding_accumulator": jnp.zeros(table.shape[:2], jnp.float32)}
    else:
        opt_state = {"rest": rest, "embedding_moments": jnp.zeros(table.shape[:2] + (2,) + table.shape[2:],
                                                                  jnp.float32)}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}


def _second_moments_in_float32(opt_state: Any) -> Any:
    """optax's Adam state with ``nu`` in float32 (optax makes it its parameter's dtype; its update
    then keeps the state's dtype, ``optax.tree.cast_like``). A no-op for float32 parameters."""
    def cast(state):
        if not isinstance(state, optax.ScaleByAdamState):
            return state
        return state._replace(nu=jax.tree.map(lambda leaf: leaf.astype(jnp.float32), state.nu))

    return jax.tree.map(cast, opt_state, is_leaf=lambda node: isinstance(node, optax.ScaleByAdamState))
