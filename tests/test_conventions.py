"""The field's conventions: PSP@k with the dataset's own propensity A, B (against a numpy
reference), and config files (``--config`` round trip, misspelt keys, ``--print-config``)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.config import Config
from mach_jax.data import known_datasets, registry
from mach_jax.data.download import MARKER
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import write_xc
from support import run_in_process

TINY = get_preset("tiny")


def numpy_psp(top_ids: np.ndarray, label_sets: list[list[int]], counts: np.ndarray, num_train: int,
              a: float, b: float) -> dict[str, float]:
    """PSP@k from the definitions: p_l = 1 / (1 + C (N_l + B)^-A), C = (log N - 1)(B + 1)^A."""
    c = (np.log(num_train) - 1) * (b + 1) ** a
    inv_p = 1 + c * (counts + b) ** -a
    out = {}
    for k in (1, 3, 5):
        gain = sum(inv_p[p] for ids, labels in zip(top_ids, label_sets) for p in ids[:k] if p in labels)
        best = sum(sum(sorted((inv_p[l] for l in labels), reverse=True)[:k]) for labels in label_sets)
        out[f"PSP@{k}"] = gain / best
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("conventions")
    train, test = make_synthetic(TINY.data.synthetic)
    (root / "data").mkdir()
    write_xc(root / "data" / "train.txt", train)
    write_xc(root / "data" / "test.txt", test)
    return root, train, test


def _entry_like(train, name: str, a: float, b: float) -> registry.DatasetInfo:
    return dataclasses.replace(registry.REGISTRY["bibtex"], name=name, num_features=train.num_features,
                               num_labels=train.num_labels, propensity_a=a, propensity_b=b)


def test_psp_uses_the_downloaded_datasets_propensities(tiny_files, monkeypatch):
    root, train, test = tiny_files
    monkeypatch.setitem(registry.REGISTRY, "tiny-670k", _entry_like(train, "Tiny-670K", 0.6, 2.6))
    (root / "data" / MARKER).write_text(json.dumps({"dataset": {"name": "Tiny-670K"}}))
    flags = ("--preset", "tiny", "--train", "data/train.txt", "--test", "data/test.txt", "--quiet")
    shown = run_in_process("mach_jax.train", *flags, "--workdir", "w_dataset", cwd=root)
    assert "PSP@k propensities: A=0.6, B=2.6 (Tiny-670K's convention, known by its download record" in shown.stderr
    metrics = json.loads((root / "w_dataset" / "metrics.json").read_text())
    assert metrics["propensity"] == {"a": 0.6, "b": 2.6}
    saved = json.loads((root / "w_dataset" / "config.json").read_text())["config"]["eval"]
    assert (saved["propensity_a"], saved["propensity_b"]) == (0.6, 2.6)

    _, top_ids = MachEnsemble.load(root / "w_dataset").predict(test.features, k=5)
    label_sets = [test.labels.indices[test.labels.indptr[i]:test.labels.indptr[i + 1]].tolist()
                  for i in range(test.num_points)]
    counts = np.bincount(train.labels.indices, minlength=train.num_labels)
    expected = numpy_psp(top_ids, label_sets, counts, train.num_points, 0.6, 2.6)
    default = numpy_psp(top_ids, label_sets, counts, train.num_points, 0.55, 1.5)
    for key, value in expected.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, err_msg=key)
        assert abs(value - default[key]) > 1e-4  # the convention changes the figure

    # A flag overrides the convention; evaluate reads the run's own, or a new one.
    run_in_process("mach_jax.train", *flags, "--workdir", "w_flag", "--propensity-a", "0.55",
                   "--propensity-b", "1.5", cwd=root)
    flagged = json.loads((root / "w_flag" / "metrics.json").read_text())
    assert flagged["propensity"] == {"a": 0.55, "b": 1.5}
    np.testing.assert_allclose(flagged["PSP@5"], default["PSP@5"], rtol=1e-5)


def test_known_datasets_by_marker_by_shape_or_not_at_all(tmp_path):
    amazon = registry.REGISTRY["amazon-670k"]
    (tmp_path / MARKER).write_text(json.dumps({"dataset": {"name": "Amazon-670K"}}))
    train_path = str(tmp_path / "train.txt")
    assert known_datasets.propensity_for(train_path, amazon.num_features, amazon.num_labels)[:2] == (0.6, 2.6)
    assert known_datasets.identify(train_path, amazon.num_features, amazon.num_labels)[1] == "downloaded"
    # A marker that names another shape is not believed; the shape alone still identifies.
    assert known_datasets.identify(train_path, 1836, 159) == (registry.REGISTRY["bibtex"], "shape")
    wiki = registry.REGISTRY["wikilshtc-325k"]
    assert known_datasets.propensity_for(None, wiki.num_features, wiki.num_labels)[:2] == (0.5, 0.4)
    assert known_datasets.propensity_for(None, 1000, 77)[:2] == (0.55, 1.5)
    (tmp_path / MARKER).write_text("{not json")
    assert known_datasets.identify(train_path, 1000, 77) is None


def test_the_paper_preset_and_the_registry_carry_the_published_conventions():
    assert registry.REGISTRY["amazon-670k"].propensity_a == 0.6 and registry.REGISTRY["amazon-670k"].propensity_b == 2.6
    assert (registry.REGISTRY["wikilshtc-325k"].propensity_a, registry.REGISTRY["wikilshtc-325k"].propensity_b) == (0.5, 0.4)
    others = [e for key, e in registry.REGISTRY.items() if key not in ("amazon-670k", "wikilshtc-325k")]
    assert {(e.propensity_a, e.propensity_b) for e in others} == {(0.55, 1.5)}
    assert get_preset("amazon670k").eval.propensity() == (0.6, 2.6)
    assert Config().eval.propensity() == (0.55, 1.5)  # until the data decides


def test_a_workdirs_config_json_reproduces_its_run(tiny_files):
    root, _, _ = tiny_files
    run_in_process("mach_jax.train", "--preset", "tiny", "--train", "data/train.txt", "--test", "data/test.txt",
                   "--workdir", "first", "--quiet", "--seed", "3", cwd=root)
    run_in_process("mach_jax.train", "--config", "first/config.json", "--workdir", "again", "--quiet", cwd=root)
    first, again = (json.loads((root / w / "metrics.json").read_text()) for w in ("first", "again"))
    first.pop("train_seconds"), again.pop("train_seconds")
    # config.json records the data paths absolute (it is read from any folder): the same file.
    assert (root / first.pop("test_source")).resolve() == Path(again.pop("test_source"))
    assert first == again
    assert (json.loads((root / "first" / "config.json").read_text())["config"]
            == json.loads((root / "again" / "config.json").read_text())["config"])
    # Flags override the file.
    shown = run_in_process("mach_jax.train", "--config", "first/config.json", "-B", "16", "--print-config", cwd=root)
    assert json.loads(shown.stdout)["model"]["num_buckets"] == 16
    assert not (root / "runs").exists()  # --print-config trains nothing


def test_print_config_round_trips_through_config(tmp_path):
    printed = run_in_process("mach_jax.train", "--preset", "large", "--epochs", "7", "--print-config", cwd=tmp_path)
    (tmp_path / "large.json").write_text(printed.stdout)
    again = run_in_process("mach_jax.train", "--config", "large.json", "--print-config", cwd=tmp_path)
    assert again.stdout == printed.stdout
    assert Config.from_dict(json.loads(printed.stdout)) == get_preset("large").replace(train={"epochs": 7})


@pytest.mark.parametrize("text, message", [
    ('{"model": {"num_bucket": 64}}', "bad.json: unknown key model.num_bucket (did you mean model.num_buckets?)"),
    ('{"modle": {}}', "bad.json: unknown key modle (did you mean model?)"),
    ('{"data": {"synthetic": {"num_label": 5}}}',
     "unknown key data.synthetic.num_label (did you mean data.synthetic.num_labels?)"),
    ('{"model": {"num_buckets": "64"}}', 'bad.json: model.num_buckets must be an integer, got "64"'),
    ('{"model": {"hidden_sizes": [32, "x"]}}', "model.hidden_sizes must be a list of integers"),
    ('{"train": {"learning_rate": true}}', "train.learning_rate must be a number, got true"),
    ('{"model": 3}', "model must be a JSON object of its fields, got 3"),
    ("[]", "bad.json: expected a JSON object of config sections, got list"),
    ('{"model": {"num_buckets": 64,}}', "bad.json: line 1, column 30: not valid JSON"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    result = run_in_process("mach_jax.train", "--config", "bad.json", "--print-config", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_and_preset_are_exclusive_and_a_missing_file_is_named(tmp_path):
    both = run_in_process("mach_jax.train", "--config", "x.json", "--preset", "tiny", cwd=tmp_path, check=False)
    assert both.returncode == 2 and "give --preset or --config, not both" in both.stderr
    missing = run_in_process("mach_jax.train", "--config", "nope.json", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "nope.json: cannot be read" in missing.stderr
    (tmp_path / "latin1.json").write_bytes(b'{"model": {"num_buckets": 64}} \xff')
    latin = run_in_process("mach_jax.train", "--config", "latin1.json", cwd=tmp_path, check=False)
    assert latin.returncode == 2 and "latin1.json: not UTF-8 text" in latin.stderr


def test_a_retired_key_in_a_config_file_is_ignored_with_a_note(tmp_path):
    (tmp_path / "old.json").write_text('{"eval": {"top_k": 10}}')
    shown = run_in_process("mach_jax.train", "--config", "old.json", "--print-config", cwd=tmp_path)
    assert "old.json: eval.top_k is ignored: P@1, P@3 and P@5 are always reported" in shown.stderr
    assert "top_k" not in shown.stdout
