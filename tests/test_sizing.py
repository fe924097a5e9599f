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


@pytest.mark.parametrize("shape, buckets, loss", [
    (DataShape(7_947, 17_663, 5.2), 4_000, "softmax"),    # citeulike-users, validation split: min(3974, 4416)
    (DataShape(52_946, 20_780, 5.0), 5_200, "softmax"),   # N bounds it: 20780 / 4 = 5195
    (DataShape(159, 4_880, 2.4), 80, "sigmoid"),          # bibtex: L / 2 = 79.5 -> 80 (two digits)
    (DataShape(100, 40, 1.0), 64, "sigmoid"),             # the floor
    (DataShape(1_000_000, 1_000_000, 5.0), 20_000, "softmax"),  # the cap
])
def test_rule_by_hand(shape, buckets, loss):
    assert sizing.rule_buckets(shape) == buckets
    assert sizing.rule_loss(shape) == loss


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
    with pytest.raises(ConfigError, match="train.loss"):
        get_preset("tiny").replace(train={"loss": "hinge"}).validate()


def test_a_run_left_to_the_data_saves_what_was_chosen(tmp_path, caplog):
    config = get_preset("tiny").replace(model={"num_buckets": 0}, train={"loss": "auto"})
    with caplog.at_level("INFO", logger="mach_jax"):
        metrics = train_and_evaluate(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    # tiny: L = 300, N = 600 -> B = min(150, 150) = 150; L < 2000 -> sigmoid.
    assert saved["model"]["num_buckets"] == 150 and saved["train"]["loss"] == "sigmoid"
    assert "B = 150" in caplog.text and metrics["P@1"] > 0
    # Resuming the same command (still "from the data") finds the same choice and adds nothing.
    again = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert again["P@1"] == metrics["P@1"]
