"""Pure, module-level step functions, jitted once by the trainer and the predictor.

``train_step(state, batch, tables) -> (state, metrics)`` updates all R members in one step;
``predict_step`` and ``eval_step`` read the ensemble out through the count-min take-and-sum.
``state`` is a dict ``{"step": int32 [], "params": [R, ...] pytree, "opt_state": optax state}``;
``tables`` is a dict ``{"labels": int32 [R, L], "features": int32 [R, D] or absent}``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mach_jax import decode, losses, metrics, model

State = dict[str, Any]
Batch = dict[str, jax.Array]


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam, elementwise over the stacked R axis: nothing couples the members."""
    return optax.adam(learning_rate)


def create_state(params: model.Params, optimizer: optax.GradientTransformation) -> State:
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def _logits(graphdef, params, batch: Batch, tables: dict[str, jax.Array]) -> jax.Array:
    feat_ids = model.member_feature_ids(batch["feat_ids"], tables.get("features"))
    return model.apply_ensemble(graphdef, params, feat_ids, batch["feat_vals"])  # [R, N, B]


def train_step(state: State, batch: Batch, tables: dict[str, jax.Array], *, graphdef,
               optimizer: optax.GradientTransformation, loss_name: str) -> tuple[State, dict]:
    """One Adam step of every member on the same batch.

    The objective is the sum of the R member losses; member r's loss depends only on member r's
    parameters and buckets, so its gradient is exactly that of member r trained alone.

    Returns:
      ``(new_state, {"member_loss": float32 [R]})``.
    """
    buckets = jnp.take(tables["labels"], batch["label_ids"], axis=1)  # [R, N, M]

    def objective(params):
        logits = _logits(graphdef, params, batch, tables)
        member_loss = losses.member_losses(loss_name, logits, buckets, batch["label_mask"],
                                           batch["point_mask"])
        return member_loss.sum(), member_loss

    grads, member_loss = jax.grad(objective, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    return new_state, {"member_loss": member_loss}


def predict_step(params: model.Params, batch: Batch, tables: dict[str, jax.Array], *, graphdef,
                 loss_name: str, aggregation: str, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Top-k classes of a batch. Returns ``(scores, ids)``, [N, k] each, best first."""
    logits = _logits(graphdef, params, batch, tables)
    scores = decode.bucket_scores_to_probs(logits, loss_name, aggregation)
    return decode.decode_topk(scores, tables["labels"], k, chunk_size)


def eval_step(params: model.Params, batch: Batch, tables: dict[str, jax.Array],
              inv_propensity: jax.Array, **predict_kwargs) -> dict[str, jax.Array]:
    """Metric sums of a batch (see ``metrics.metric_sums``); the host adds and divides."""
    _, topk_ids = predict_step(params, batch, tables, **predict_kwargs)
    return metrics.metric_sums(topk_ids, batch["label_ids"], batch["label_mask"],
                               batch["point_mask"], inv_propensity)
