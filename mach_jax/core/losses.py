"""The bucket losses: each trains a member and says how its logits are read out.

A ``Loss`` is one object with both sides: ``per_point`` (the training loss of one member) and
``probs`` / ``log_probs`` (the member's P(bucket | x) that the count-min read-out aggregates).
Adding a loss is one entry in ``LOSSES`` here (plus its test): the config, the command line and
the read-out look it up by name.

Member r sees a point's labels only through their buckets ``h_r(label)``:

- ``softmax`` (the paper): cross-entropy against the labels spread uniformly over their buckets,
  each label carrying 1/|y| of the target mass (two labels in one bucket give it 2/|y|);
- ``sigmoid`` (the reference code): binary cross-entropy against the multi-hot bucket vector,
  averaged over the B buckets.

Points with no labels and padding points get weight 0: they are masked out, never fed as
all-zero targets.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mach_jax.errors import ConfigError


def softmax_bucket_loss(logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
    """Args: logits [N, B]; buckets int32 [N, M]; label_mask float32 [N, M]. Returns: [N].

    ``label_smoothing`` eps: the target is (1 - eps) t + eps / B for the label distribution t.
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, buckets, axis=-1)  # [N, M]
    num_labels = jnp.maximum(label_mask.sum(-1), 1.0)
    loss = -(picked * label_mask).sum(-1) / num_labels
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * log_probs.mean(-1)
    return loss


def sigmoid_bucket_loss(logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
    """Args: logits [N, B]; buckets int32 [N, M]; label_mask float32 [N, M]. Returns: [N].

    ``label_smoothing`` eps: every bucket's target t in {0, 1} becomes t (1 - eps) + eps / 2.
    """
    points = jnp.arange(logits.shape[0])[:, None]
    targets = jnp.zeros_like(logits).at[points, buckets].max(label_mask)  # multi-hot [N, B]
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / 2
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A bucket loss and the read-out transform that matches it.

    Attributes:
      per_point: ``(logits [N, B], buckets int32 [N, M], label_mask [N, M], label_smoothing)``
        -> [N] losses.
      probs: logits [..., B] -> P(bucket | x) [..., B], the member's estimate that the read-out sums.
      log_probs: logits [..., B] -> log P(bucket | x) [..., B].
    """

    per_point: Callable[..., jax.Array]
    probs: Callable[[jax.Array], jax.Array]
    log_probs: Callable[[jax.Array], jax.Array]


LOSSES: dict[str, Loss] = {
    # The paper: one distribution over the B buckets.
    "softmax": Loss(softmax_bucket_loss, functools.partial(jax.nn.softmax, axis=-1),
                    functools.partial(jax.nn.log_softmax, axis=-1)),
    # The reference code: B independent binary classifiers.
    "sigmoid": Loss(sigmoid_bucket_loss, jax.nn.sigmoid, jax.nn.log_sigmoid),
}


def require_known(name: str) -> None:
    """Refuses a ``train.loss`` that names no loss here ("auto" is left to the data)."""
    if name != "auto" and name not in LOSSES:
        raise ConfigError(f"train.loss={name!r}: must be one of {tuple(LOSSES)}, or auto (from the data: "
                          "config.sizing)", field="train.loss")


def get_loss(name: str) -> Loss:
    """The loss called ``name`` (``train.loss``); the error lists the known names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[name]


def point_weights(label_mask: jax.Array, point_mask: jax.Array) -> jax.Array:
    """1 for real points with at least one label, else 0. Args: [N, M], [N]. Returns: [N]."""
    return point_mask * (label_mask.sum(-1) > 0)


def member_losses(loss_name: str, logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
                  point_mask: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Masked mean loss of every member.

    Args:
      loss_name: a key of ``LOSSES``.
      logits: [R, N, B].
      buckets: int32 [R, N, M], the label buckets under each member's hash.
      label_mask: float32 [N, M].
      point_mask: float32 [N].
      label_smoothing: eps of the per-point losses (0: none).

    Returns:
      float32 [R]: member r's loss depends on member r's logits and buckets only.
    """
    per_point = jax.vmap(get_loss(loss_name).per_point, in_axes=(0, 0, None, None))(
        logits, buckets, label_mask, label_smoothing)
    weights = point_weights(label_mask, point_mask)
    return (per_point * weights).sum(-1) / jnp.maximum(weights.sum(), 1.0)
