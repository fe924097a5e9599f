"""Training on a training file alone (no test data), and the training time a workdir reports:
kept across resumes, never the time of a session that only evaluated."""

import json

import pytest

from mach_jax import get_preset
from mach_jax.data.synthetic import make_synthetic
from support import one_error_line, run_in_process, write_tiny_files

TINY = ["--preset", "tiny", "--quiet", "--epochs", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("alone")
    write_tiny_files(root)
    return root


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_a_training_file_alone_trains_and_is_evaluated_later(files):
    result = run_in_process("mach_jax.train", *TINY, "--train", "train.txt", "--workdir", "solo", cwd=files)
    assert "no test data: evaluate with python -m mach_jax.evaluate --workdir solo --test FILE" in result.stdout
    assert set(metrics_of(files / "solo")) == {"train_seconds"}
    refused = run_in_process("mach_jax.evaluate", "--workdir", "solo", cwd=files, check=False)
    assert refused.returncode == 2 and "has no test file: give one with --test FILE" in one_error_line(refused)
    evaluated = run_in_process("mach_jax.evaluate", "--workdir", "solo", "--test", "test.txt", cwd=files)
    both = run_in_process("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt",
                          "--workdir", "both", cwd=files)
    assert evaluated.stdout.splitlines()[1:] == both.stdout.splitlines()[1:]  # the same members' P@k


def test_config_json_records_absolute_paths_read_from_any_folder(files, tmp_path):
    run_in_process("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt", "--workdir", "abs",
                   cwd=files)
    data = json.loads((files / "abs" / "config.json").read_text())["config"]["data"]
    assert data["train_path"] == str(files / "train.txt") and data["test_path"] == str(files / "test.txt")
    elsewhere = run_in_process("mach_jax.evaluate", "--workdir", str(files / "abs"), cwd=tmp_path)
    assert elsewhere.returncode == 0


def test_training_time_is_kept_across_resumes_and_not_counted_by_an_evaluation_only_session(files):
    run_in_process("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt", "--workdir", "t",
                   cwd=files)
    first = metrics_of(files / "t")["train_seconds"]
    run_in_process("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt", "--workdir", "t",
                   cwd=files)  # complete already: it only evaluates
    assert metrics_of(files / "t")["train_seconds"] == first
    run_in_process("mach_jax.train", "--preset", "tiny", "--quiet", "--epochs", "2", "--train", "train.txt",
                   "--test", "test.txt", "--workdir", "t", cwd=files)
    assert metrics_of(files / "t")["train_seconds"] > first  # the first session's time, plus the second's


def test_train_and_evaluate_takes_scipy_pairs_as_it_takes_datasets(tmp_path):
    from mach_jax.experiment import train_and_evaluate

    config = get_preset("tiny").replace(train={"epochs": 1})
    train, test = make_synthetic(config.data.synthetic)
    as_pairs = {name: (data.features.to_scipy(), data.labels.to_scipy()) for name, data in
                (("train_data", train), ("eval_data", test))}
    from_pairs = train_and_evaluate(config, tmp_path / "pairs", progress=False, **as_pairs)
    from_datasets = train_and_evaluate(config, tmp_path / "datasets", progress=False, train_data=train,
                                       eval_data=test)
    for name in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
        assert from_pairs[name] == from_datasets[name], name
    bad = as_pairs["eval_data"][0].copy()
    bad.data[0] = float("nan")
    with pytest.raises(ValueError, match="eval_data X"):
        train_and_evaluate(config, tmp_path / "bad", progress=False, train_data=train,
                           eval_data=(bad, as_pairs["eval_data"][1]))
