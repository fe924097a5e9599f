"""A synthetic multi-label dataset with latent topics: real structure at any number of labels.

The embedded generator (``data.synthetic``) gives every label its own signature features, which
makes it easy (P@1 about 95). This one models tagged text, so that precision and cost can be
studied as L grows from 10^4 to 10^6:

- the vocabulary of D words has a power-law frequency over a random order of the word ids;
- each of T topics (default L / 50) has a sparse word distribution: a few hundred to a few
  thousand words drawn by that global frequency (so common words are shared between topics),
  weighted by a power law over a random order within the topic;
- each label belongs to one topic (a share of them to a second one too); label popularity is a
  Zipf law over a random order of the label ids, and a topic is as prevalent as its labels are;
- a point mixes 1 to ``max_topics_per_point`` topics with Dirichlet weights. Its labels (Poisson,
  mean ``labels_per_point``, possibly none) come from its topics by popularity, without
  replacement, a share ``label_noise`` from the global popularity instead. Its words are drawn
  from the topic mixture, a share ``noise_share`` from the global word frequency and a share ``label_word_share`` from a
  few words owned by each of its labels (tags that show in the text). Words are drawn until the
  point holds its number of distinct words (mean ``words_per_point``); values are the counts.

Everything is drawn from one ``numpy`` generator seeded by ``TopicDataConfig.seed``, points in
chunks whose size depends on the config alone, so the result does too and memory stays bounded:
nothing is [N, L], [L, D] or [T, D] dense.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mach_jax.data import sampling
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.errors import ConfigError

_LABELS_PER_TOPIC = 50
_CHUNK_POINTS = 8192
_CHUNK_ENTRIES = 1 << 21  # a chunk races at most about this many (point, topic label) pairs
_MAX_LABELS_PER_TOPIC = 10_000
_TOPIC_SIZE_SIGMA = 0.6  # log-normal spread of the topic vocabulary sizes
_EXTRA_TOPIC_PROB = 0.4  # a point has 1 + Binomial(max_topics_per_point - 1, this) topics
_WORDS_SHAPE = 4.0  # gamma shape of the distinct words per point (coefficient of variation 0.5)


@dataclasses.dataclass(frozen=True)
class TopicDataConfig:
    """Sizes and shape of the latent-topic dataset; ``num_topics`` None means L / 50."""

    num_labels: int = 100_000
    num_features: int = 100_000
    num_train: int = 100_000
    num_test: int = 20_000
    num_topics: int | None = None
    words_per_topic: int = 500
    words_per_point: float = 50.0
    labels_per_point: float = 5.0
    label_zipf_exponent: float = 1.0
    word_zipf_exponent: float = 1.0
    max_topics_per_point: int = 3
    topic_concentration: float = 1.0
    multi_topic_share: float = 0.1
    noise_share: float = 0.2
    label_word_share: float = 0.1
    words_per_label: int = 5
    label_noise: float = 0.02
    seed: int = 0

    @property
    def topics(self) -> int:
        """T, the number of topics."""
        if self.num_topics is not None:
            return self.num_topics
        return max(1, round(self.num_labels / _LABELS_PER_TOPIC))

    def validate(self) -> None:
        """Raises ``ConfigError`` naming the first field out of range."""
        checks = [
            ("num_labels", 1 <= self.num_labels < 2**31, "must lie in [1, 2**31)"),
            ("num_features", 1 <= self.num_features < 2**31, "must lie in [1, 2**31)"),
            ("num_train", self.num_train >= 1, "must be >= 1"),
            ("num_test", self.num_test >= 0, "must be >= 0"),
            ("num_topics", self.num_topics is None or (
                self.num_labels <= self.num_topics * _MAX_LABELS_PER_TOPIC
                and self.num_topics <= self.num_labels),
             f"must be None or lie in [num_labels / {_MAX_LABELS_PER_TOPIC}, num_labels]"),
            ("words_per_topic", 1 <= self.words_per_topic <= self.num_features,
             "must lie in [1, num_features]"),
            ("words_per_point", 1 <= self.words_per_point <= self.num_features,
             "must lie in [1, num_features]"),
            ("labels_per_point", 0 < self.labels_per_point <= 1000, "must lie in (0, 1000]"),
            ("label_zipf_exponent", self.label_zipf_exponent >= 0, "must be >= 0"),
            ("word_zipf_exponent", self.word_zipf_exponent >= 0, "must be >= 0"),
            ("max_topics_per_point", self.max_topics_per_point >= 1, "must be >= 1"),
            ("topic_concentration", self.topic_concentration > 0, "must be > 0"),
            ("multi_topic_share", 0 <= self.multi_topic_share <= 1, "must lie in [0, 1]"),
            ("noise_share", 0 <= self.noise_share < 1, "must lie in [0, 1)"),
            ("label_word_share", 0 <= self.label_word_share < 1 - self.noise_share,
             "must lie in [0, 1 - noise_share)"),
            ("words_per_label", self.words_per_label >= 1, "must be >= 1"),
            ("label_noise", 0 <= self.label_noise <= 1, "must lie in [0, 1]"),
            ("seed", self.seed >= 0, "must be >= 0"),
        ]
        for field, ok, why in checks:
            if not ok:
                raise ConfigError(f"{field}={getattr(self, field)!r}: {why}", field=field)


@dataclasses.dataclass(frozen=True)
class _Topics:
    """The latent structure. A grouped cdf runs from g to g + 1 over group g's entries."""

    word_cdf: np.ndarray  # float64 [D], global word frequency
    label_cdf: np.ndarray  # float64 [L], global label popularity
    topic_cdf: np.ndarray  # float64 [T], topic prevalence
    word_ptr: np.ndarray  # int64 [T + 1] into words / word_cdf
    words: np.ndarray  # int32 [S], each topic's vocabulary
    topic_word_cdf: np.ndarray  # float64 [S], grouped
    label_ptr: np.ndarray  # int64 [T + 1] into labels / label_prob
    labels: np.ndarray  # int32 [M], each topic's labels
    label_prob: np.ndarray  # float64 [M], each label's share of its topic's popularity
    label_words: np.ndarray  # int32 [L, words_per_label]


def _topic_words(config: TopicDataConfig, word_cdf: np.ndarray, rng: np.random.Generator):
    """(ptr int64 [T + 1], words int32 [S], grouped cdf [S]): each topic's word distribution."""
    num_features, num_topics = config.num_features, config.topics
    sizes = rng.lognormal(np.log(config.words_per_topic), _TOPIC_SIZE_SIGMA, num_topics)
    sizes = np.clip(np.rint(sizes), 1, num_features).astype(np.int64)
    draws = sampling.sample(word_cdf, rng.random(int(sizes.sum())))
    keys = sampling.unique(np.repeat(np.arange(num_topics, dtype=np.int64), sizes) * num_features + draws)
    topic, words = keys // num_features, (keys % num_features).astype(np.int32)
    # A random rank within each topic: its own power law, unrelated to the global frequency.
    order = np.argsort(topic + rng.random(len(keys)))
    rank = np.empty(len(keys))
    rank[order] = np.arange(len(keys)) - np.searchsorted(topic, topic[order])
    ptr, cdf = sampling.grouped_cdf(topic, (rank + 1) ** -config.word_zipf_exponent, num_topics)
    return ptr, words, cdf


def _build_topics(config: TopicDataConfig, rng: np.random.Generator) -> _Topics:
    """Draws the vocabulary, the topics' words and labels and the labels' own words."""
    num_labels, num_topics = config.num_labels, config.topics
    word_cdf = np.cumsum(sampling.zipf_weights(config.num_features, config.word_zipf_exponent, rng))
    word_ptr, words, topic_word_cdf = _topic_words(config, word_cdf, rng)

    popularity = sampling.zipf_weights(num_labels, config.label_zipf_exponent, rng)
    primary = rng.permutation(num_labels) % num_topics  # every topic owns a label
    second = np.flatnonzero(rng.random(num_labels) < config.multi_topic_share)
    keys = sampling.unique(np.concatenate([primary * np.int64(num_labels) + np.arange(num_labels),
                                           rng.integers(0, num_topics, len(second)) * np.int64(num_labels)
                                           + second]))
    topic, labels = keys // num_labels, (keys % num_labels).astype(np.int32)
    topic_mass = np.bincount(topic, weights=popularity[labels], minlength=num_topics)

    # Each label's own words: uniform over its primary topic's vocabulary.
    sizes = np.diff(word_ptr)[primary]
    picks = word_ptr[primary][:, None] + (rng.random((num_labels, config.words_per_label))
                                          * sizes[:, None]).astype(np.int64)
    return _Topics(word_cdf, np.cumsum(popularity), np.cumsum(topic_mass), word_ptr, words,
                   topic_word_cdf, sampling.group_ptr(topic, num_topics), labels,
                   popularity[labels] / topic_mass[topic], words[picks])


def _distinct_prefix(rows: np.ndarray, ids: np.ndarray, draws: np.ndarray, targets: np.ndarray,
                     num_cols: int) -> CsrMatrix:
    """[N, C]: each row's draws (``rows`` sorted, ``draws[r]`` of row r, ``ids`` in draw order)
    up to the last before a ``targets[r] + 1``-th distinct id; values count the kept draws of an id,
    columns sorted within a row."""
    keys = rows.astype(np.int64) * num_cols + ids
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.empty(len(keys), bool)
    first[order] = np.diff(sorted_keys, prepend=-1) != 0  # keys are >= 0
    seen = np.cumsum(first)
    seen -= np.repeat(np.concatenate([[0], seen])[np.cumsum(draws) - draws], draws)
    kept_keys = sorted_keys[(seen <= np.repeat(targets, draws))[order]]
    starts = np.flatnonzero(np.diff(kept_keys, prepend=-1))
    counts = np.diff(np.append(starts, len(kept_keys)))
    unique_keys = kept_keys[starts]
    indptr = np.zeros(len(draws) + 1, np.int64)
    np.cumsum(np.bincount(unique_keys // num_cols, minlength=len(draws)), out=indptr[1:])
    return CsrMatrix(indptr, unique_keys % num_cols, counts.astype(np.float32), num_cols)


def _pick_topics(rows: np.ndarray, point_topics: np.ndarray, weights: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """The topic of each draw, by its point's mixture weights [n, K]."""
    cum_weights = np.cumsum(weights, axis=1)
    slots = (rng.random(len(rows))[:, None] >= cum_weights[rows]).sum(axis=1)
    return point_topics[rows, np.minimum(slots, point_topics.shape[1] - 1)]


def _point_labels(topics: _Topics, config: TopicDataConfig, point_topics: np.ndarray,
                  weights: np.ndarray, rng: np.random.Generator) -> CsrMatrix:
    """Labels [n, L]: Poisson many from the point's topics, without replacement, some noise.

    Every label of the point's topics races with an exponential arrival time of rate (topic
    weight x the label's share of the topic); the earliest ``target`` arrive. This is sampling
    without replacement by popularity, and it reaches the target even when one head label holds
    almost all of a topic's popularity.
    """
    num_points = len(point_topics)
    targets = rng.poisson(config.labels_per_point, num_points)
    sizes = np.where(weights > 0, np.diff(topics.label_ptr)[point_topics], 0).ravel()
    rows = np.repeat(np.arange(num_points), sizes.reshape(num_points, -1).sum(axis=1))
    entries = (np.repeat(topics.label_ptr[point_topics.ravel()] - (np.cumsum(sizes) - sizes), sizes)
               + np.arange(len(rows)))
    rates = np.repeat(weights.ravel(), sizes) * topics.label_prob[entries]
    times = rng.standard_exponential(len(rows))
    # By row, then arrival time times / rates squashed into [0, 0.5] (a rate that underflowed to
    # 0 comes last); rows are sorted, so rows[order] == rows.
    order = np.argsort(rows + 0.5 * times / (times + rates))
    chosen = order[np.arange(len(rows)) - np.searchsorted(rows, rows) < targets[rows]]
    ids = topics.labels[entries[chosen]]
    noisy = np.flatnonzero(rng.random(len(ids)) < config.label_noise)
    ids[noisy] = sampling.sample(topics.label_cdf, rng.random(len(noisy)))
    draws = np.bincount(rows[chosen], minlength=num_points)
    labels = _distinct_prefix(rows[chosen], ids, draws, draws, config.num_labels)
    return CsrMatrix(labels.indptr, labels.indices, np.ones_like(labels.values), labels.num_cols)


def _point_words(topics: _Topics, config: TopicDataConfig, point_topics: np.ndarray,
                 weights: np.ndarray, labels: CsrMatrix, rng: np.random.Generator) -> CsrMatrix:
    """Word counts [n, D]: topic, label and background words until the point's distinct count."""
    num_points = len(point_topics)
    targets = rng.gamma(_WORDS_SHAPE, config.words_per_point / _WORDS_SHAPE, num_points)
    targets = np.clip(np.rint(targets), 1, config.num_features).astype(np.int64)
    draws = 2 * targets + 8
    rows = np.repeat(np.arange(num_points), draws)
    source = rng.random(len(rows))
    background = source < config.noise_share
    from_label = ~background & (source < config.noise_share + config.label_word_share)
    from_label &= labels.row_nnz()[rows] > 0
    from_topic = np.flatnonzero(~background & ~from_label)
    background, from_label = np.flatnonzero(background), np.flatnonzero(from_label)

    ids = np.empty(len(rows), np.int64)
    ids[background] = sampling.sample(topics.word_cdf, rng.random(len(background)))
    topic = _pick_topics(rows[from_topic], point_topics, weights, rng)
    ids[from_topic] = topics.words[sampling.sample_grouped(topics.word_ptr, topics.topic_word_cdf, topic,
                                                           rng.random(len(from_topic)))]
    label_rows = rows[from_label]
    nnz = labels.row_nnz()[label_rows]
    label = labels.indices[labels.indptr[label_rows] + (rng.random(len(label_rows)) * nnz).astype(np.int64)]
    ids[from_label] = topics.label_words[label, rng.integers(0, config.words_per_label, len(label))]
    return _distinct_prefix(rows, ids, draws, targets, config.num_features)


def _make_points(topics: _Topics, config: TopicDataConfig, num_points: int,
                 rng: np.random.Generator) -> tuple[CsrMatrix, CsrMatrix]:
    """(features [n, D], labels [n, L]) for ``num_points`` fresh points."""
    width = config.max_topics_per_point
    num_mixed = 1 + rng.binomial(width - 1, _EXTRA_TOPIC_PROB, num_points)
    point_topics = sampling.sample(topics.topic_cdf, rng.random((num_points, width)))
    weights = rng.gamma(config.topic_concentration, 1.0, (num_points, width))
    weights[np.arange(width) >= num_mixed[:, None]] = 0.0
    weights[:, 0] += weights.sum(axis=1) == 0  # a small concentration can underflow to all 0
    weights /= weights.sum(axis=1, keepdims=True)
    labels = _point_labels(topics, config, point_topics, weights, rng)
    features = _point_words(topics, config, point_topics, weights, labels, rng)
    return features, labels


def _stack(parts: list[CsrMatrix], num_cols: int) -> CsrMatrix:
    """The rows of ``parts`` one after the other."""
    offsets = np.cumsum([0] + [part.indptr[-1] for part in parts[:-1]])
    indptr = np.concatenate([[0]] + [part.indptr[1:] + offset for part, offset in zip(parts, offsets)])
    return CsrMatrix(indptr, np.concatenate([part.indices for part in parts]),
                     np.concatenate([part.values for part in parts]), num_cols)


def make_topic_data(config: TopicDataConfig) -> tuple[XCDataset, XCDataset]:
    """Generates the (train, test) pair described by ``config``.

    Args:
      config: sizes and shape of the distribution (L labels, D words, T topics, points, seed).

    Returns:
      ``(train, test)`` XCDatasets with ``num_train`` and ``num_test`` points: features [N, D]
      float32 word counts, labels [N, L].
    """
    config.validate()
    rng = np.random.default_rng(config.seed)
    topics = _build_topics(config, rng)
    total = config.num_train + config.num_test
    widest = config.max_topics_per_point * int(np.diff(topics.label_ptr).max())
    chunk = max(1, min(_CHUNK_POINTS, _CHUNK_ENTRIES // widest))
    features, labels = [], []
    for start in range(0, total, chunk):
        chunk_features, chunk_labels = _make_points(topics, config, min(chunk, total - start), rng)
        features.append(chunk_features)
        labels.append(chunk_labels)
    features, labels = _stack(features, config.num_features), _stack(labels, config.num_labels)
    source = f"topic data (L={config.num_labels}, D={config.num_features}, seed={config.seed})"
    train_rows, test_rows = np.arange(config.num_train), np.arange(config.num_train, total)
    return (XCDataset(features.take(train_rows), labels.take(train_rows), source + " [train]"),
            XCDataset(features.take(test_rows), labels.take(test_rows), source + " [test]"))
