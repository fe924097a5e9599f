"""Tests for mach_jax.data.topics and scripts/make_topics.py: determinism, the statistics the
config asks for, power-law labels, real structure (points sharing a label share words), config
errors and a round trip through the XC format."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mach_jax.data import topics
from mach_jax.data.csr import CsrMatrix
from mach_jax.data.topics import TopicDataConfig, make_topic_data
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_topics.py"
SMALL = TopicDataConfig(num_labels=2000, num_features=20_000, num_train=3000, num_test=600, seed=3)


@pytest.fixture(scope="module")
def small():
    return make_topic_data(SMALL)


def _row_keys(matrix: CsrMatrix) -> np.ndarray:
    return np.repeat(np.arange(matrix.num_rows), matrix.row_nnz()) * np.int64(matrix.num_cols) + matrix.indices


def test_same_seed_same_data_other_seed_other_data(small):
    config = dataclasses.replace(SMALL, num_train=500, num_test=100)
    first, again = make_topic_data(config), make_topic_data(config)
    assert first == again
    assert first[0].source == "topic data (L=2000, D=20000, seed=3) [train]"
    assert first[1].source.endswith("[test]")
    other = make_topic_data(dataclasses.replace(config, seed=4))
    assert other[0].features != first[0].features and other[0].labels != first[0].labels


def test_shapes_and_statistics_match_the_config(small):
    train, test = small
    assert (train.num_points, test.num_points) == (3000, 600)
    for split in small:
        assert (split.num_features, split.num_labels) == (20_000, 2000)
        for matrix in (split.features, split.labels):
            keys = _row_keys(matrix)
            assert len(np.unique(keys)) == len(keys), "an id repeats within a row"
            assert matrix.indices.min() >= 0 and matrix.indices.max() < matrix.num_cols
        values = split.features.values
        assert np.all(values >= 1) and np.all(values == np.round(values))
    points = train.num_points + test.num_points
    mean_labels = (train.labels.indptr[-1] + test.labels.indptr[-1]) / points
    mean_nonzeros = (train.features.indptr[-1] + test.features.indptr[-1]) / points
    assert abs(mean_labels - SMALL.labels_per_point) < 0.1 * SMALL.labels_per_point
    assert abs(mean_nonzeros - SMALL.words_per_point) < 0.05 * SMALL.words_per_point
    assert np.any(train.labels.row_nnz() == 0), "a Poisson count of labels includes 0"
    assert np.mean(train.features.values > 1) > 0.05, "words repeat: values are counts"
    row_nnz = train.features.row_nnz()
    assert row_nnz.min() >= 1 and row_nnz.max() > 2 * SMALL.words_per_point


def test_label_frequencies_have_a_head_and_a_long_tail(small):
    counts = np.bincount(small[0].labels.indices, minlength=SMALL.num_labels)
    assert counts.max() > 20 * max(np.median(counts), 1)
    assert np.mean(counts < 5) > 0.3
    top = np.sort(counts)[::-1]
    assert top[:20].sum() > 0.1 * counts.sum(), "the 1% head labels carry a good share"


def _cosines(features: CsrMatrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    left, right = features.take(a).to_dense(), features.take(b).to_dense()
    return (left * right).sum(1) / np.linalg.norm(left, axis=1) / np.linalg.norm(right, axis=1)


def test_points_sharing_a_label_share_words(small):
    train = small[0]
    rng = np.random.default_rng(0)
    label_rows = np.repeat(np.arange(train.num_points), train.labels.row_nnz())
    order = np.argsort(train.labels.indices, kind="stable")
    labels, rows = train.labels.indices[order], label_rows[order]
    starts = np.flatnonzero(np.diff(labels, prepend=-1))
    sizes = np.diff(np.append(starts, len(labels)))
    shared = rng.choice(np.flatnonzero(sizes >= 2), 1000)  # labels uniformly, head and tail alike
    a = rows[starts[shared] + (rng.random(1000) * sizes[shared]).astype(int)]
    b = rows[starts[shared] + (rng.random(1000) * sizes[shared]).astype(int)]
    a, b = a[a != b], b[a != b]
    same_label = _cosines(train.features, a, b).mean()
    random_pairs = _cosines(train.features, rng.integers(0, 3000, 1000), rng.integers(0, 3000, 1000)).mean()
    assert same_label > 3 * random_pairs
    assert same_label < 0.8, "learnable but not trivial: points of one label are not copies"


def test_chunks_join_into_one_valid_dataset(monkeypatch):
    monkeypatch.setattr(topics, "_CHUNK_POINTS", 128)
    config = dataclasses.replace(SMALL, num_train=300, num_test=50, labels_per_point=0.5, num_topics=7)
    train, test = make_topic_data(config)
    assert (train.num_points, test.num_points) == (300, 50)
    assert np.mean(train.labels.row_nnz() == 0) > 0.3
    keys = _row_keys(train.features)
    assert len(np.unique(keys)) == len(keys)
    train, test = make_topic_data(dataclasses.replace(config, num_test=0, topic_concentration=0.01))
    assert test.num_points == 0 and np.all(train.features.row_nnz() >= 1)


@pytest.mark.parametrize("field, value", [
    ("num_labels", 0), ("num_features", 0), ("num_train", 0), ("num_test", -1), ("num_topics", 0),
    ("num_topics", 2001), ("words_per_topic", 20_001), ("words_per_point", 0.5),
    ("labels_per_point", 0.0), ("label_zipf_exponent", -1.0), ("max_topics_per_point", 0),
    ("topic_concentration", 0.0), ("multi_topic_share", 1.5), ("noise_share", 1.0),
    ("label_word_share", 0.8), ("words_per_label", 0), ("label_noise", -0.1), ("seed", -1),
])
def test_bad_values_raise_config_error_naming_the_field(field, value):
    config = dataclasses.replace(SMALL, **{field: value})
    with pytest.raises(ConfigError, match=field) as raised:
        make_topic_data(config)
    assert raised.value.field == field


def test_topic_count_is_derived_from_the_labels():
    assert TopicDataConfig(num_labels=100_000).topics == 2000
    assert TopicDataConfig(num_labels=10).topics == 1
    assert TopicDataConfig(num_labels=10, num_topics=3).topics == 3
    with pytest.raises(ConfigError, match="num_topics"):
        TopicDataConfig(num_labels=100_000, num_topics=5).validate()


def test_round_trip_through_the_xc_format(small, tmp_path):
    for split, name in zip(small, ("train.txt.gz", "test.txt")):
        write_xc(tmp_path / name, split)
        assert read_xc(tmp_path / name, use_cache=False) == split


def test_script_writes_the_files_and_prints_statistics(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_topics", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "topics"
    assert script.main(["--labels", "500", "--train", "200", "--test", "50", "--features", "3000",
                        "--seed", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "L = 500" in printed and "mean labels per point" in printed and "< 5 training points" in printed
    expected = make_topic_data(TopicDataConfig(num_labels=500, num_features=3000, num_train=200,
                                               num_test=50, seed=7))
    assert read_xc(out / "train.txt.gz", use_cache=False) == expected[0]
    assert read_xc(out / "test.txt.gz", use_cache=False) == expected[1]
    stats = script.statistics(*expected)
    assert stats["num_labels"] == 500 and 0 <= stats["unseen_label_share"] <= stats["tail_label_share"] <= 1
    assert script.main(["--labels", "0", "--train", "1", "--test", "1", "--out", str(out)]) == 2
    assert "num_labels" in capsys.readouterr().err
