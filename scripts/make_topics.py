"""Writes a latent-topic synthetic dataset (``mach_jax.data.topics``) as a pair of XC files.

    python scripts/make_topics.py --labels 100000 --train 100000 --test 20000 --out DIR \
        [--features D] [--topics T] [--seed S]

Writes ``DIR/train.txt.gz`` and ``DIR/test.txt.gz`` (``mach_jax.data.xc_format.write_xc``), so that
``scripts/compare.py --train DIR/train.txt.gz --test DIR/test.txt.gz`` runs on them, and prints
the dataset's statistics: N, D, L, mean labels and nonzeros per point, the share of labels with
fewer than 5 training points (and with none), the head label's training points, and the seconds
spent generating and writing. Everything else keeps ``TopicDataConfig``'s defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mach_jax.data.csr import XCDataset
from mach_jax.data.topics import TopicDataConfig, make_topic_data
from mach_jax.data.xc_format import write_xc
from mach_jax.errors import ConfigError

_TAIL_POINTS = 5


def statistics(train: XCDataset, test: XCDataset) -> dict:
    """Summary statistics of a (train, test) pair.

    Args:
      train: features [N, D], labels [N, L].
      test: the same D and L.

    Returns:
      Points per split, D, L, mean labels and nonzeros per point (both splits together), the
      share of the L labels with fewer than 5 training points and with none, and the most
      frequent label's training points.
    """
    points = train.num_points + test.num_points
    counts = np.bincount(train.labels.indices, minlength=train.num_labels)
    return {
        "num_train": train.num_points, "num_test": test.num_points,
        "num_features": train.num_features, "num_labels": train.num_labels,
        "mean_labels": float(train.labels.indptr[-1] + test.labels.indptr[-1]) / points,
        "mean_nonzeros": float(train.features.indptr[-1] + test.features.indptr[-1]) / points,
        "tail_label_share": float(np.mean(counts < _TAIL_POINTS)),
        "unseen_label_share": float(np.mean(counts == 0)),
        "head_label_points": int(counts.max(initial=0)),
    }


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TopicDataConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, required=True, help="L, the number of labels")
    parser.add_argument("--train", type=int, required=True, help="training points")
    parser.add_argument("--test", type=int, required=True, help="test points")
    parser.add_argument("--out", required=True, help="folder for train.txt.gz and test.txt.gz")
    parser.add_argument("--features", type=int, default=defaults.num_features,
                        help="D, the vocabulary size (default: %(default)s)")
    parser.add_argument("--topics", type=int, default=None, help="T (default: L / 50)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    config = TopicDataConfig(num_labels=args.labels, num_features=args.features,
                             num_train=args.train, num_test=args.test, num_topics=args.topics,
                             seed=args.seed)
    try:
        config.validate()
    except ConfigError as e:
        print(f"make_topics.py: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    train, test = make_topic_data(config)
    generated = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_xc(out / "train.txt.gz", train)
    write_xc(out / "test.txt.gz", test)
    stats = statistics(train, test)
    print(f"N = {stats['num_train']} train + {stats['num_test']} test, D = {stats['num_features']}, "
          f"L = {stats['num_labels']}, T = {config.topics}, seed = {config.seed}")
    print(f"mean labels per point {stats['mean_labels']:.2f}, "
          f"mean nonzeros per point {stats['mean_nonzeros']:.1f}")
    print(f"labels with < {_TAIL_POINTS} training points {100 * stats['tail_label_share']:.1f}% "
          f"(with none {100 * stats['unseen_label_share']:.1f}%), "
          f"head label in {stats['head_label_points']} training points")
    print(f"generated in {generated - start:.1f} s, written in {time.perf_counter() - generated:.1f} s "
          f"to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
