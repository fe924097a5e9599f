"""Sizing from the data (``config.sizing``): the rule against hand-computed cases, and a
``--preset large`` run that fills B and the loss from its data and saves them."""

import json
import math

import pytest

from mach_jax import get_preset
from mach_jax.config import sizing
from mach_jax.config.sizing import DataShape
from mach_jax.errors import ConfigError
from mach_jax.experiment import train_and_evaluate
from mach_jax.training.resolve import validated


@pytest.mark.parametrize("shape, buckets, loss", [
    (DataShape(7_947, 17_663, 5.2), 4_000, "softmax"),    # citeulike-users, validation split: min(3974, 4416)
    (DataShape(52_946, 20_780, 5.0), 5_200, "softmax"),   # N bounds it: 20780 / 4 = 5195
    (DataShape(159, 4_880, 2.4), 80, "sigmoid"),          # bibtex: L / 2 = 79.5 -> 80 (two digits)
    (DataShape(200, 40, 1.0), 64, "sigmoid"),             # the floor
    (DataShape(100, 40, 1.0), 50, "sigmoid"),             # the floor, L / 2 below L = 128
    (DataShape(40, 480, 2.0), 20, "sigmoid"),             # 40 tags: L / 2, not 39 (the old floor, capped at L - 1)
    (DataShape(10, 100, 1.5), 5, "sigmoid"),
    (DataShape(3, 100, 1.0), 2, "sigmoid"),               # B < L always, and B >= 2
    (DataShape(1_000_000, 1_000_000, 5.0), 20_000, "softmax"),  # the cap
])
def test_rule_by_hand(shape, buckets, loss):
    assert sizing.rule_buckets(shape) == buckets
    assert sizing.rule_loss(shape) == loss


def old_rule(shape):
    """The rule before small shapes were sized: min(L/2, N/4), two digits, within [64, 20000], below L."""
    raw = min(shape.num_labels / 2, shape.num_points / 4)
    scale = 10 ** (math.floor(math.log10(raw)) - 1)
    return int(min(max(round(raw / scale) * scale, 64), 20_000, max(shape.num_labels - 1, 2)))


def test_from_128_labels_the_rule_is_unchanged():
    # What --preset large chose on those shapes stays exactly as it was.
    for num_labels in (128, 159, 500, 983, 1_000, 7_947, 52_946, 10**6):
        for num_points in (100, 255, 256, 480, 4_880, 20_780, 10**6):
            shape = DataShape(num_labels, num_points, 3.0)
            assert sizing.rule_buckets(shape) == old_rule(shape), shape
    large = get_preset("large")
    for shape in (DataShape(1_000, 256, 3.0), DataShape(7_947, 20_780, 5.2), DataShape(52_946, 20_780, 5.0)):
        sized, _ = sizing.size_from_data(large, shape)
        assert sized.replace(model={"num_buckets": 0}, train={"loss": "auto"}) == large


def test_a_small_set_trains_enough_steps():
    sized, lines = sizing.size_from_data(get_preset("large"), DataShape(40, 480, 2.0))
    # 5 epochs of 256 on 480 points are 10 steps: batch 32 (480 / 16 = 30 -> 32), 15 steps an epoch,
    # 20 epochs for 300 steps (large decays its step size); 7 for 100 at a constant 0.01.
    assert (sized.model.num_buckets, sized.train.batch_size, sized.train.epochs) == (20, 32, 20)
    assert "B = 20: min(L/2, N/4) = min(20, 120) = 20" in lines[1]
    assert any("batch size 32, 20 epochs" in line for line in lines)
    constant, _ = sizing.size_from_data(get_preset("large").replace(train={"lr_schedule": "constant"}),
                                        DataShape(40, 480, 2.0))
    assert constant.train.epochs == 7


@pytest.mark.parametrize("shape, settings", [
    (DataShape(10, 100, 1.5), (5, 16, (128,), 32, 0.01, 25, "sigmoid")),
    (DataShape(40, 480, 2.0), (20, 16, (128,), 32, 0.01, 7, "sigmoid")),
    (DataShape(159, 4_880, 2.4), (80, 16, (256,), 256, 2e-3, 15, "sigmoid")),
    (DataShape(7_947, 20_780, 5.2), (4_000, 32, (256,), 256, 2e-3, 5, "softmax")),
    (DataShape(10**6, 10**7, 5.0), (20_000, 32, (256,), 256, 2e-3, 5, "softmax")),
])
def test_whole_model_from_the_shape(shape, settings):
    rule = sizing.rule_settings(shape)
    model, train = rule["model"], rule["train"]
    assert (model["num_buckets"], model["num_repetitions"], model["hidden_sizes"], train["batch_size"],
            train["learning_rate"], train["epochs"], train["loss"]) == settings
    assert model["num_buckets"] < shape.num_labels
    lines = sizing.explain_settings(shape, rule, {"train.loss"})
    assert len(lines) == 7 and not any("loss" in line for line in lines)


def test_count_min_bound_by_hand():
    # L (p / B)^R <= delta: 7947 * (5.2 / 4000)^R <= 0.01 -> R >= ln(794700) / ln(769.2) = 2.05 -> 3.
    assert sizing.count_min_repetitions(DataShape(7_947, 17_663, 5.2), 4_000) == 3
    assert sizing.count_min_repetitions(DataShape(100, 100, 8.0), 4) == math.inf


def test_only_the_fields_left_to_the_data_change():
    config = get_preset("large").replace(train={"loss": "sigmoid"})
    sized, lines = sizing.size_from_data(config, DataShape(7_947, 17_663, 5.2))
    assert sized.model.num_buckets == 4_000 and sized.train.loss == "sigmoid"
    assert sized.replace(model={"num_buckets": 0}) == config
    assert any("B = 4000" in line for line in lines) and not any("loss =" in line for line in lines)


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="model.num_buckets"):
        get_preset("tiny").replace(model={"num_buckets": 1}).validate()
    with pytest.raises(ConfigError, match="train.loss"):  # refused when the run is resolved
        validated(get_preset("tiny").replace(train={"loss": "hinge"}))


def test_a_run_left_to_the_data_saves_what_was_chosen(tmp_path, caplog):
    # L = 1,000: not a small set, so the tiny schedule stays (a small one would train 300 steps).
    config = get_preset("tiny").replace(data={"synthetic": {"num_labels": 1_000}}, model={"num_buckets": 0},
                                        train={"loss": "auto"})
    with caplog.at_level("INFO", logger="mach_jax"):
        metrics = train_and_evaluate(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    # L = 1,000, N = 600 -> B = min(500, 150) = 150; L < 2000 -> sigmoid.
    assert saved["model"]["num_buckets"] == 150 and saved["train"]["loss"] == "sigmoid"
    assert "B = 150" in caplog.text and metrics["P@1"] > 0
    # Resuming the same command (still "from the data") finds the same choice and adds nothing.
    again = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert again["P@1"] == metrics["P@1"]


@pytest.mark.parametrize("shape, hash_dim, expected", [
    # citeulike-users: 32 x 256 x (20,000 + 4,000) = 197 M weights, 20,780 x 32 x 4,000 = 2.7e9: unchanged.
    (DataShape(7_947, 20_780, 5.2, 20_000), 0, (32, 4_000)),
    # D = N = 100,000: 256 x (100,000 + 20,000) = 30.7 M a member -> R = 8 (246 M); then
    # 3.2e9 / (100,000 x 8) = 4,000 buckets, at L = 10^5 and 10^6 alike.
    (DataShape(100_000, 100_000, 5.0, 100_000), 0, (8, 4_000)),
    (DataShape(1_000_000, 100_000, 5.0, 100_000), 0, (8, 4_000)),
    # D = L = 41,000, N = 24,000: 256 x (41,000 + 6,000) = 12.0 M -> R = 16 (193 M); 2.3e9: B kept.
    (DataShape(41_000, 24_000, 5.0, 41_000), 0, (16, 6_000)),
    # Inputs hashed to 32,768 slots: 256 x (32,768 + 20,000) = 13.5 M -> R = 16; 3.2e9 / 1.6e6 = 2,000.
    (DataShape(100_000, 100_000, 5.0, 100_000), 32_768, (16, 2_000)),
    # D unknown (0): the weights bound sees the output layers only.
    (DataShape(100_000, 100_000, 5.0), 0, (32, 1_000)),
])
def test_large_preset_bounds_the_weights_and_the_work_by_hand(shape, hash_dim, expected):
    large = get_preset("large").replace(model={"feat_hash_dim": hash_dim})
    sized, lines = sizing.size_from_data(large, shape)
    repetitions, buckets = expected
    assert (sized.model.num_repetitions, sized.model.num_buckets) == expected
    weights = repetitions * sizing.member_weights(sized, shape.num_features, buckets)
    assert weights <= large.model.max_weights or repetitions == sizing.MIN_BOUNDED_REPETITIONS
    assert shape.num_points * repetitions * buckets <= large.model.max_epoch_outputs
    assert any(f"R = {repetitions}" in line for line in lines)


def test_without_bounds_or_with_few_members_nothing_is_lowered():
    shape = DataShape(100_000, 100_000, 5.0, 100_000)
    unbounded = get_preset("large").replace(model={"max_weights": 0, "max_epoch_outputs": 0})
    sized, _ = sizing.size_from_data(unbounded, shape)
    assert (sized.model.num_repetitions, sized.model.num_buckets) == (32, 20_000)
    # R is never halved below 4, nor raised; a B the config fixes is never lowered.
    few = get_preset("large").replace(model={"num_repetitions": 2, "num_buckets": 20_000})
    sized, _ = sizing.size_from_data(few, DataShape(100_000, 100_000, 5.0, 10**7))
    assert (sized.model.num_repetitions, sized.model.num_buckets) == (2, 20_000)
    sized, _ = sizing.size_from_data(get_preset("large"), DataShape(100_000, 100_000, 5.0, 10**7))
    assert sized.model.num_repetitions == sizing.MIN_BOUNDED_REPETITIONS
    # Rounded down, so the bound holds: 3.2e9 / (24,000 x 32) = 4,166.7 -> 4,100, not 4,200.
    assert sizing.bounded_buckets(DataShape(52_946, 24_000, 5.0), 6_000, 32, 3_200_000_000) == 4_100
    with pytest.raises(ConfigError, match="max_weights"):
        get_preset("large").replace(model={"max_weights": -1}).validate()


def test_the_reranker_is_dropped_only_past_its_work_bound():
    large = get_preset("large")
    # (D + L) x N: 2e10 at D = L = N = 10^5, past large's 1e10; citeulike-users 27,947 x 20,780 = 5.8e8.
    sized, lines = sizing.size_from_data(large, DataShape(100_000, 100_000, 5.0, 100_000))
    assert not sized.rerank.enabled and any("no re-ranker" in line and "2e+10" in line for line in lines)
    sized, lines = sizing.size_from_data(large, DataShape(7_947, 20_780, 5.2, 20_000))
    assert sized.rerank == large.rerank and not any("re-ranker" in line for line in lines)
    unbounded = large.replace(rerank={"max_epoch_work": 0})
    assert sizing.size_from_data(unbounded, DataShape(100_000, 100_000, 5.0, 100_000))[0].rerank.enabled
    # The bound is sizing, not training: a re-ranker saved before it existed resumes.
    assert "max_epoch_work" not in large.rerank.training_fields()
