"""Sizing from the data: B, the loss and (for small data) the schedule, when the config leaves them.

``model.num_buckets = 0`` and ``train.loss = "auto"`` (as ``--preset large`` sets) are filled in
from the training data's shape before anything is built, and the choice is printed with why.
``rule_settings`` sizes a whole model (B, R, hidden size, epochs, batch size, loss) from the shape
alone: ``MachClassifier`` uses it for every setting its caller leaves out. Measurements:
docs/sizing.md.

The rule:

- **loss**: softmax when L >= 2,000, else sigmoid. Sigmoid was better on every set with L <= 983
  (bibtex, corel5k, delicious presets); softmax on citeulike-users (L = 7,947) and on a
  52,946-label set (sigmoid 8.8 points of P@1 behind). Between, it is not measured.
- **B** = min(L / 2, N / 4), two significant digits, within [min(64, L / 2), 20,000] (and at
  least 2): about two classes per bucket (B = 4,000 beat 2,000 on citeulike-users, L = 7,947),
  and at least about 4 training points per bucket so that each bucket's logit sees data. The
  floor is 64 buckets, or L / 2 when L < 128, so that B < L always. The cap keeps the output layer
  R x H x B within a few GB.
- **steps**: a run left to the data (B = 0) on a small set (L < 1,000 or N < 256) trains at least
  300 steps (100 at a constant learning rate of 0.01 or more): the batch is cut to ``rule_batch_size`` and
  the epochs raised to reach it (a few hundred points in batches of 256 for 5 epochs are 10
  steps: nothing is learnt).
- **R** stays what the config says; the count-min bound R >= ln(L / delta) / ln(B / labels per
  point) (a wrong class shares all R buckets of a point's true ones with probability delta) is
  printed: it is a handful at these sizes, so R beyond it averages estimation noise (R = 16 -> 32
  added 1.0 of P@5 on citeulike-users).
- **bounds** (``model.max_weights``, ``model.max_epoch_outputs``; 0: none): R is halved (not
  below 4) until the members' weights R·(D·H + H·B) are at most ``max_weights`` (``--preset
  large``: 2^28, 1 GiB of float32, 3 GiB with Adam's moments; D the hashed width where inputs are
  hashed, H the hidden layers), and a B left to the data is lowered until the output layers' work
  an epoch, N·R·B, is at most ``max_epoch_outputs`` (``large``: 3.2·10^9, about 100 s an epoch on
  2 CPU cores at H = 256). Neither moves citeulike-users (R = 32, B = 4,000: 197 M weights,
  2.7·10^9); at N = 100,000 and D = 100,000 they give R = 8, B = 4,000 for any L from 10^4 to
  10^6 (docs/large_labels.md: ahead of every tree at L = 10^6) where R = 32 and B = 20,000 would
  hold 12 GiB of state and train 20x longer. ``rerank.max_epoch_work`` (``large``: 10^10) drops
  the re-ranker where (D + L)·N exceeds it.
- ``rule_settings`` adds: R = 16 below L = 2,000 and 32 from it (the presets' and ``large``'s);
  below N = 2,000 points hidden 128 and a learning rate of 0.01, from it 256 and 0.002; batch
  size and epochs as above.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from mach_jax.config.tree import Config

SOFTMAX_FROM_LABELS = 2_000
MIN_BUCKETS, MAX_BUCKETS = 64, 20_000
MIN_STEPS = 300  # a small set's run left to the data trains at least this many steps,
MIN_STEPS_FAST = 100  # or this many at a step size of FAST_LEARNING_RATE or more
FAST_LEARNING_RATE = 1e-2
SMALL_POINTS = 2_000  # below it: hidden 128 and the fast step size
SMALL_LABELS = 1_000
MIN_BOUNDED_REPETITIONS = 4  # model.max_weights halves R down to this, no further


class DataShape(NamedTuple):
    """What the rule reads: L, N (training points), the mean labels per point and D (the input
    features; 0 where unknown, which the weights bound then leaves out)."""

    num_labels: int
    num_points: int
    labels_per_point: float
    num_features: int = 0


def needs_sizing(config: Config) -> bool:
    model = config.model
    return (model.num_buckets == 0 or config.train.loss == "auto" or model.max_weights > 0
            or model.max_epoch_outputs > 0 or (config.rerank.enabled and config.rerank.max_epoch_work > 0))


def member_weights(config: Config, num_features: int, num_buckets: int) -> int:
    """One member's weights (biases left out): D·H1 + H1·H2 + ... + H_last·B, D the hashed width
    where the inputs are hashed (``model.feat_hash_dim``)."""
    widths = [config.model.feat_hash_dim or num_features, *config.model.hidden_sizes, num_buckets]
    return sum(a * b for a, b in zip(widths, widths[1:]))


def bounded_repetitions(config: Config, shape: DataShape, num_buckets: int) -> int:
    """The config's R, halved (not below ``MIN_BOUNDED_REPETITIONS``) while R members' weights
    exceed ``model.max_weights`` (0: the config's R)."""
    repetitions, most = config.model.num_repetitions, config.model.max_weights
    per_member = member_weights(config, shape.num_features, num_buckets)
    while most and repetitions > MIN_BOUNDED_REPETITIONS and repetitions * per_member > most:
        repetitions = max(repetitions // 2, MIN_BOUNDED_REPETITIONS)
    return repetitions


def bounded_buckets(shape: DataShape, num_buckets: int, repetitions: int, max_epoch_outputs: int) -> int:
    """``num_buckets``, lowered (rounded down to two significant digits, not below the rule's
    floor) until N·R·B is at most ``max_epoch_outputs`` (0: unchanged)."""
    most = max_epoch_outputs / max(shape.num_points * repetitions, 1)
    if not max_epoch_outputs or num_buckets <= most:
        return num_buckets
    return int(max(_two_significant_digits(most, math.floor), min(MIN_BUCKETS, shape.num_labels / 2), 2))


def rule_buckets(shape: DataShape) -> int:
    raw = min(shape.num_labels / 2, shape.num_points / 4)
    rounded = _two_significant_digits(raw)
    floor = min(MIN_BUCKETS, shape.num_labels / 2)
    return int(max(min(max(rounded, floor), MAX_BUCKETS, shape.num_labels - 1), 2))


def rule_batch_size(shape: DataShape) -> int:
    """About N / 16 (16 steps an epoch), a power of two within [32, 256]."""
    return int(min(max(2 ** math.floor(math.log2(max(shape.num_points / 16, 1))), 32), 256))


def min_steps(learning_rate: float, schedule: str = "constant") -> int:
    """The fewest steps a small set trains: ``MIN_STEPS``, a third of it at a constant step size 5x
    larger (a decaying one spends its last steps at small sizes: 100 steps of cosine from 0.01
    reached 93.3 % P@1 on the 40-tag texts, 300 steps 99.2 %)."""
    fast = learning_rate >= FAST_LEARNING_RATE and schedule == "constant"
    return MIN_STEPS_FAST if fast else MIN_STEPS


def rule_epochs(shape: DataShape, batch_size: int, epochs: int = 5, learning_rate: float = 2e-3) -> int:
    """``epochs``, or more when that many are fewer than ``min_steps`` steps (at most 50)."""
    steps = max(math.ceil(shape.num_points / batch_size), 1)
    return int(min(max(epochs, math.ceil(min_steps(learning_rate) / steps)), max(epochs, 50)))


def is_small(shape: DataShape) -> bool:
    """Where the B rule leaves its own range and a large preset's schedule trains too few steps."""
    return shape.num_labels < SMALL_LABELS or shape.num_points < 4 * MIN_BUCKETS


def rule_settings(shape: DataShape) -> dict[str, dict]:
    """A whole model from the shape: ``{"model": {...}, "train": {...}}`` for ``Config.replace``."""
    batch_size = rule_batch_size(shape)
    small = shape.num_points < SMALL_POINTS
    learning_rate = FAST_LEARNING_RATE if small else 2e-3
    return {"model": {"num_buckets": rule_buckets(shape),
                      "num_repetitions": 16 if shape.num_labels < SOFTMAX_FROM_LABELS else 32,
                      "hidden_sizes": (128,) if small else (256,)},
            "train": {"batch_size": batch_size, "learning_rate": learning_rate,
                      "epochs": rule_epochs(shape, batch_size, 5, learning_rate), "loss": rule_loss(shape)}}


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
        lines.append(_buckets_line(shape, model["num_buckets"]))
        if is_small(shape):
            train.update(_small_schedule(config, shape, lines))
    model.update(_bounded(config, shape, model.get("num_buckets", config.model.num_buckets), lines))
    rerank = _rerank_bounded(config, shape, lines)
    if config.train.loss == "auto":
        train["loss"] = rule_loss(shape)
        lines.append(f"  loss = {train['loss']}: softmax from L >= {SOFTMAX_FROM_LABELS}, sigmoid below")
    buckets = model.get("num_buckets", config.model.num_buckets)
    bound = count_min_repetitions(shape, buckets)
    repetitions = model.get("num_repetitions", config.model.num_repetitions)
    lines.append(f"  R = {repetitions} (the count-min bound for delta = 0.01 is R >= {bound}; "
                 "more members average out estimation noise)")
    return config.replace(model=model, train=train, rerank=rerank), lines


def explain_settings(shape: DataShape, settings: dict[str, dict], given: set[str]) -> list[str]:
    """The lines that say what ``rule_settings`` chose and why, but for the dotted fields in ``given``."""
    model, train = settings["model"], settings["train"]
    lines = [(f"sizing from the data: L={shape.num_labels}, N={shape.num_points}, "
              f"{shape.labels_per_point:.1f} labels per point")]
    why = {"model.num_buckets": _buckets_line(shape, model["num_buckets"]),
           "model.num_repetitions": f"  R = {model['num_repetitions']}: 16 below L = {SOFTMAX_FROM_LABELS}, 32 from it",
           "model.hidden_sizes": f"  hidden {list(model['hidden_sizes'])}: 128 below N = {SMALL_POINTS}, 256 from it",
           "train.batch_size": f"  batch size {train['batch_size']}: about N/16, a power of two within [32, 256]",
           "train.learning_rate": (f"  learning rate {train['learning_rate']:g}: {FAST_LEARNING_RATE:g} below "
                                   f"N = {SMALL_POINTS} (fewer steps), 0.002 from it"),
           "train.epochs": (f"  {train['epochs']} epochs: 5, or more to train at least "
                            f"{min_steps(train['learning_rate'])} steps "
                            f"({math.ceil(shape.num_points / train['batch_size'])} steps an epoch)"),
           "train.loss": f"  loss = {train['loss']}: softmax from L >= {SOFTMAX_FROM_LABELS}, sigmoid below"}
    return lines + [line for field, line in why.items() if field not in given]


def _bounded(config: Config, shape: DataShape, buckets: int, lines: list[str]) -> dict:
    """R within ``model.max_weights``, then a B left to the data within ``model.max_epoch_outputs``
    (each 0: no bound); a line for each that moved."""
    model = {}
    repetitions = bounded_repetitions(config, shape, buckets)
    if repetitions != config.model.num_repetitions:
        model["num_repetitions"] = repetitions
        lines.append(f"  R = {repetitions}: {config.model.num_repetitions} halved until R x "
                     f"{member_weights(config, shape.num_features, buckets) / 1e6:.1f} M weights a member "
                     f"<= {config.model.max_weights / 1e6:.0f} M (model.max_weights)")
    if config.model.num_buckets == 0:
        bounded = bounded_buckets(shape, buckets, repetitions, config.model.max_epoch_outputs)
        if bounded != buckets:
            model["num_buckets"] = bounded
            lines.append(f"  B = {bounded}: lowered from {buckets} so that N x R x B = {shape.num_points} x "
                         f"{repetitions} x {bounded} <= {config.model.max_epoch_outputs:.2g} "
                         "(model.max_epoch_outputs)")
    return model


def _rerank_bounded(config: Config, shape: DataShape, lines: list[str]) -> dict:
    """No re-ranker where (D + L)·N exceeds ``rerank.max_epoch_work`` (0: no bound)."""
    most, work = config.rerank.max_epoch_work, (shape.num_features + shape.num_labels) * shape.num_points
    if not (config.rerank.enabled and most and work > most):
        return {}
    lines.append(f"  no re-ranker: (D + L) x N = ({shape.num_features} + {shape.num_labels}) x {shape.num_points} "
                 f"= {work:.2g} > {most:.2g} (rerank.max_epoch_work)")
    return {"shortlist_size": 0}


def _buckets_line(shape: DataShape, buckets: int) -> str:
    raw = min(shape.num_labels / 2, shape.num_points / 4)
    return (f"  B = {buckets}: min(L/2, N/4) = min({shape.num_labels / 2:g}, {shape.num_points / 4:g}) = {raw:g}, "
            f"to two digits, within [min({MIN_BUCKETS}, L/2), {MAX_BUCKETS}] and below L")


def _small_schedule(config: Config, shape: DataShape, lines: list[str]) -> dict:
    """A small set's batch size and epochs: at least ``min_steps`` steps, or the config's own."""
    train = config.train
    steps = train.epochs * math.ceil(shape.num_points / train.batch_size)
    least = min_steps(train.learning_rate, train.lr_schedule)
    if steps >= least:
        return {}
    batch_size = min(train.batch_size, rule_batch_size(shape))
    per_epoch = math.ceil(shape.num_points / batch_size)
    epochs = int(min(max(train.epochs, math.ceil(least / per_epoch)), max(train.epochs, 50)))
    lines.append(f"  batch size {batch_size}, {epochs} epochs: the config's {train.epochs} epochs of "
                 f"{train.batch_size} are {steps} steps on N={shape.num_points}; a small set "
                 f"(L < {SMALL_LABELS} or N < {4 * MIN_BUCKETS}) trains at least {least} "
                 f"(learning rate {train.learning_rate:g}, {train.lr_schedule})")
    return {"batch_size": batch_size, "epochs": epochs}


def _two_significant_digits(value: float, rounding=round) -> float:
    """``value`` to two significant digits, by ``rounding`` (nearest; ``math.floor``: down)."""
    if value <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return rounding(value / scale) * scale
