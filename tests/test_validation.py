"""--valid-frac: a seeded hold-out of the training data, trained without and evaluated on."""

import json
import math

import jax
import numpy as np
import pytest

from mach_jax import MachEnsemble, cli, evaluate, get_preset
from mach_jax import experiment
from mach_jax.data import prepare
from mach_jax.data import sources
from mach_jax.storage import workdir as wd
from mach_jax.config import Config
from mach_jax.errors import ConfigError
from mach_jax.readout.metrics import format_metrics
from mach_jax.data.synthetic import make_synthetic
from mach_jax.errors import WorkdirError
from mach_jax.data.xc_format import write_xc

TINY = get_preset("tiny")
VALID = TINY.replace(data={"valid_frac": 0.25, "valid_seed": 3})
METRIC_KEYS = [f"{family}@{k}" for family in ("P", "nDCG", "PSP") for k in (1, 3, 5)]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(TINY.data.synthetic)


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("valid") / "run"
    return workdir, experiment.train_and_evaluate(VALID, workdir, progress=False)


def leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


@pytest.mark.parametrize("num_points, frac", [(600, 0.25), (4880, 0.1), (7, 0.5), (10, 0.01), (3, 0.6)])
def test_split_is_deterministic_disjoint_covering_and_sized(num_points, frac):
    train_rows, valid_rows = sources.validation_split(num_points, frac, seed=3)
    assert len(valid_rows) == max(1, math.floor(frac * num_points + 0.5))
    assert len(train_rows) == num_points - len(valid_rows)
    assert not set(train_rows.tolist()) & set(valid_rows.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train_rows, valid_rows])), np.arange(num_points))
    assert np.all(np.diff(train_rows) > 0) and np.all(np.diff(valid_rows) > 0)  # file order
    again = sources.validation_split(num_points, frac, seed=3)
    np.testing.assert_array_equal(again[0], train_rows)
    np.testing.assert_array_equal(again[1], valid_rows)


def test_the_seed_picks_the_split_and_zero_holds_out_nothing():
    first = sources.validation_split(600, 0.25, seed=0)[1]
    assert not np.array_equal(first, sources.validation_split(600, 0.25, seed=1)[1])
    train_rows, valid_rows = sources.validation_split(600, 0.0, seed=0)
    np.testing.assert_array_equal(train_rows, np.arange(600))
    assert valid_rows.size == 0


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1"])
def test_bad_valid_frac_is_a_config_error_naming_the_field_and_flag(value):
    with pytest.raises(ConfigError) as caught:
        Config().replace(data={"valid_frac": value}).validate()
    assert caught.value.field == "data.valid_frac"
    assert "data.valid_frac=" in str(caught.value)
    assert cli.flag_of(caught.value.field) == "--valid-frac"


def test_a_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(ConfigError, match=r"data.valid_frac=0.5: holds out 1 of the 1 training points") as caught:
        sources.validation_split(1, 0.5, seed=0)
    assert caught.value.field == "data.valid_frac"


def test_training_uses_only_the_rest_and_reports_the_held_out_rows(valid_run, data):
    workdir, metrics = valid_run
    train, _ = data
    train_rows, valid_rows = sources.validation_split(train.num_points, 0.25, seed=3)
    assert len(valid_rows) == 150

    _, info = wd.read_run(workdir)
    assert info.num_train_points == train.num_points - 150
    # PSP@k propensities: the training part's label counts, not the whole file's.
    np.testing.assert_array_equal(wd.read_label_counts(workdir), prepare.label_counts(train.take(train_rows)))

    assert metrics["split"] == "valid" and metrics["num_points"] == 150
    assert metrics["valid_source"].endswith("[valid]") and "test_source" not in metrics
    assert (metrics["valid_frac"], metrics["valid_seed"]) == (0.25, 3)
    assert json.loads((workdir / "metrics.json").read_text()) == metrics
    assert format_metrics(metrics).startswith("validation metrics on 150 points (")

    independent = MachEnsemble.load(workdir).evaluate(train.take(valid_rows), progress=False)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(independent[key], abs=1e-6), key


def test_resuming_keeps_the_split_and_equals_an_uninterrupted_run(tmp_path, valid_run):
    workdir, metrics = valid_run
    experiment.train_and_evaluate(VALID.replace(train={"epochs": 1}), tmp_path / "resumed", progress=False)
    resumed = experiment.train_and_evaluate(VALID, tmp_path / "resumed", progress=False)
    for a, b in zip(leaves(MachEnsemble.load(workdir).params), leaves(MachEnsemble.load(tmp_path / "resumed").params)):
        np.testing.assert_array_equal(a, b)
    for key in METRIC_KEYS:
        assert resumed[key] == metrics[key], key


@pytest.mark.parametrize("change", [{"valid_frac": 0.2}, {"valid_frac": 0.0}, {"valid_seed": 4}])
def test_the_split_cannot_change_on_resume(valid_run, change):
    workdir, _ = valid_run
    field = next(iter(change))
    with pytest.raises(WorkdirError, match=rf"trained with data\.{field}="):
        experiment.train_and_evaluate(VALID.replace(data=change), workdir, progress=False)


def test_evaluate_defaults_to_the_validation_split_and_takes_the_test_file(valid_run, data, tmp_path, capsys):
    workdir, metrics = valid_run
    _, test = data
    write_xc(tmp_path / "test.txt", test)

    assert evaluate.main(["--workdir", str(workdir), "--quiet"]) == 0
    again = json.loads((workdir / "eval-exact.json").read_text())
    assert again["split"] == "valid" and "validation metrics on 150 points" in capsys.readouterr().out
    for key in METRIC_KEYS:
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key

    assert evaluate.main(["--workdir", str(workdir), "--quiet", "--test", str(tmp_path / "test.txt")]) == 0
    on_file = json.loads((workdir / "eval-exact.json").read_text())
    assert on_file["split"] == "test" and on_file["num_points"] == test.num_points
    assert on_file["test_source"] == str(tmp_path / "test.txt")
    assert "test metrics on 200 points" in capsys.readouterr().out
    expected = MachEnsemble.load(workdir).evaluate(test, progress=False)
    for key in METRIC_KEYS:
        assert on_file[key] == pytest.approx(expected[key], abs=1e-6), key

    assert evaluate.main(["--workdir", str(workdir), "--quiet", "--split", "test"]) == 0
    on_split = json.loads((workdir / "eval-exact.json").read_text())
    assert on_split["split"] == "test" and on_split["P@1"] == pytest.approx(on_file["P@1"], abs=1e-6)


def test_evaluate_refuses_a_validation_split_the_run_does_not_have(tmp_path):
    experiment.train_and_evaluate(TINY.replace(train={"epochs": 1}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="holds out no validation split") as caught:
        evaluate.main(["--workdir", str(tmp_path / "run"), "--quiet", "--split", "valid"])
    assert caught.value.field == "data.valid_frac"
