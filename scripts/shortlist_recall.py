"""The members' shortlist recall@K against K: the share of each point's labels that the read-out's
best K classes hold (``readout.xc_metrics.recall``), the ceiling of what a re-ranker over a
K-class shortlist can reach. One JSON line per K; choose K on a validation split.

    python scripts/shortlist_recall.py --workdir runs/large --split valid --k 10 20 50 100 200 400

The members are read out alone (``reranker="off"``), with the run's own decoder settings and
aggregation over R (``--aggregation`` to read them out otherwise).
"""

from __future__ import annotations

import argparse
import json
import time

from mach_jax.config import AGGREGATIONS
from mach_jax.data import sources
from mach_jax.readout import xc_metrics
from mach_jax.readout.ensemble import MachEnsemble


def shortlist_recall(workdirs: list[str], ks: list[int], test: str | None = None, split: str | None = None,
                     progress: bool = False, aggregation: str | None = None) -> list[dict]:
    """One record per K: ``recall`` (the mean share of a point's labels in its top K), the split,
    the points, the read-out's aggregation and seconds (one read-out of max(K) classes serves
    every K). ``aggregation``: the read-out's (``eval.aggregation``; None: the run's own)."""
    overrides = {"aggregation": aggregation} if aggregation else {}
    ensemble = MachEnsemble.load(*workdirs, reranker="off", **overrides)
    data, split = sources.load_eval_data(ensemble.config.data, test, split, progress=progress)
    largest = min(max(ks), ensemble.info.num_labels)
    start = time.perf_counter()
    _, ids = ensemble.predict(data.features, k=largest, source=data.source, progress=progress)
    seconds = round(time.perf_counter() - start, 2)
    recall = xc_metrics.recall(data.labels, ids, largest)
    return [{"k": k, "recall": round(float(recall[min(k, largest) - 1]), 4), "split": split,
             "points": data.num_points, "num_labels": ensemble.info.num_labels,
             "aggregation": ensemble.config.eval.aggregation, "readout_seconds": seconds}
            for k in sorted(ks)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append", help="a trained workdir (repeat for groups)")
    parser.add_argument("--test", default=None, help="an XC file to measure on instead of the run's own split")
    parser.add_argument("--split", default=None, choices=("valid", "test"), help="the run's own split")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 50, 100, 200, 400])
    parser.add_argument("--aggregation", default=None, choices=AGGREGATIONS,
                        help="the read-out's aggregation over R (default: the run's own)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    for record in shortlist_recall(args.workdir, args.k, args.test, args.split, progress=not args.quiet,
                                   aggregation=args.aggregation):
        print(json.dumps(record))


if __name__ == "__main__":
    main()
