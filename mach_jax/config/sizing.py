"""Sizing from the data: B and the loss for a new data set, when the config leaves them to it.

``model.num_buckets = 0`` and ``train.loss = "auto"`` (as ``--preset large`` sets) are filled in
from the training data's shape before anything is built, and the choice is printed with why.

The rule (measured on the four real sets in ../shared/data; docs/large_labels.md):

- **loss**: softmax when L >= 2,000, else sigmoid. Sigmoid was better on every set with L <= 983
  (bibtex, corel5k, delicious presets); softmax on citeulike-users (L = 7,947) and on the
  52,946-label set of the issue (sigmoid 8.8 points of P@1 behind). Between, it is not measured.
- **B** = min(L / 2, N / 4), two significant digits, within [64, 20,000] and below L: about two classes per
  bucket (B = 4,000 beat 2,000 on citeulike-users, L = 7,947), and at least about 4 training points
  per bucket so that each bucket's logit sees data. The cap keeps the output layer R x H x B
  within a few GB.
- **R** stays what the config says; the count-min bound R >= ln(L / delta) / ln(B / labels per
  point) (a wrong class shares all R buckets of a point's true ones with probability delta) is
  printed: it is a handful at these sizes, so R beyond it averages estimation noise (R = 16 -> 32
  added 1.0 of P@5 on citeulike-users).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from mach_jax.config.tree import Config

SOFTMAX_FROM_LABELS = 2_000
MIN_BUCKETS, MAX_BUCKETS = 64, 20_000


class DataShape(NamedTuple):
    """What the rule reads: L, N (training points) and the mean labels per point."""

    num_labels: int
    num_points: int
    labels_per_point: float


def needs_sizing(config: Config) -> bool:
    return config.model.num_buckets == 0 or config.train.loss == "auto"


def rule_buckets(shape: DataShape) -> int:
    raw = min(shape.num_labels / 2, shape.num_points / 4)
    rounded = _two_significant_digits(raw)
    return int(min(max(rounded, MIN_BUCKETS), MAX_BUCKETS, max(shape.num_labels - 1, 2)))


def rule_loss(shape: DataShape) -> str:
    return "softmax" if shape.num_labels >= SOFTMAX_FROM_LABELS else "sigmoid"


def count_min_repetitions(shape: DataShape, num_buckets: int, delta: float = 0.01) -> float:
    """The smallest R with L (p / B)^R <= delta, p = labels per point: R members rarely all
    put a wrong class in one of a point's true buckets (``math.inf`` when B <= p: no R does)."""
    ratio = num_buckets / max(shape.labels_per_point, 1.0)
    if ratio <= 1.0:
        return math.inf
    return max(1, math.ceil(math.log(shape.num_labels / delta) / math.log(ratio)))


def size_from_data(config: Config, shape: DataShape) -> tuple[Config, list[str]]:
    """Fills the fields left to the data. Returns the config and one line per choice, with why."""
    lines = [(f"sizing from the data: L={shape.num_labels}, N={shape.num_points}, "
              f"{shape.labels_per_point:.1f} labels per point")]
    model, train = {}, {}
    if config.model.num_buckets == 0:
        model["num_buckets"] = rule_buckets(shape)
        lines.append(f"  B = {model['num_buckets']}: min(L/2, N/4) = min({shape.num_labels / 2:.0f}, "
                     f"{shape.num_points / 4:.0f}), two digits, within [{MIN_BUCKETS}, {MAX_BUCKETS}]")
    if config.train.loss == "auto":
        train["loss"] = rule_loss(shape)
        lines.append(f"  loss = {train['loss']}: softmax from L >= {SOFTMAX_FROM_LABELS}, sigmoid below")
    buckets = model.get("num_buckets", config.model.num_buckets)
    bound = count_min_repetitions(shape, buckets)
    lines.append(f"  R = {config.model.num_repetitions} (the count-min bound for delta = 0.01 is R >= {bound}; "
                 "more members average out estimation noise)")
    return config.replace(model=model, train=train), lines


def _two_significant_digits(value: float) -> float:
    if value <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return round(value / scale) * scale
