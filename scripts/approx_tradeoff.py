"""Approximate vs exact decoding of a trained ensemble on a labelled test file: one JSON line per m.

    python scripts/approx_tradeoff.py --workdir runs/delicious \
        --test ../shared/data/delicious/test.txt.gz --top-buckets 1 2 4 8 [--min-votes 1] [--markdown]

Per setting: recall of the exact top-k (the share of the exact decoder's k classes that the
approximate decoder also returns), P@1/3/5 of both decoders, and queries/s of both (steady
state: each is run once to compile, then timed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.data.xc_format import read_xc


def timed_predict(ensemble: MachEnsemble, features, k: int, approx: bool):
    ensemble.predict(features[:ensemble.config.eval.eval_batch_size], k=k, approx=approx)  # compile
    start = time.perf_counter()
    scores, ids = ensemble.predict(features, k=k, approx=approx)
    return ids, features.num_rows / (time.perf_counter() - start)


def recall_of_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over points of |approx top-k & exact top-k| / k."""
    hits = [len(set(a) & set(e)) for a, e in zip(approx_ids.tolist(), exact_ids.tolist())]
    return float(np.mean(hits)) / exact_ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append")
    parser.add_argument("--test", required=True)
    parser.add_argument("--top-buckets", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--min-votes", type=int, nargs="+", default=[1])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args()

    test = read_xc(args.test)
    exact = MachEnsemble.load(*args.workdir)
    exact_ids, exact_qps = timed_predict(exact, test.features, args.k, approx=False)
    exact_metrics = exact.evaluate(test, progress=False, approx=False)
    rows = []
    for top_buckets in args.top_buckets:
        for min_votes in args.min_votes:
            ensemble = MachEnsemble.load(*args.workdir, top_buckets=top_buckets, min_votes=min_votes)
            settings = ensemble.decoder(approx=True)
            ids, qps = timed_predict(ensemble, test.features, args.k, approx=True)
            found = ensemble.evaluate(test, progress=False, approx=True)
            row = {"test": args.test, "L": ensemble.info.num_labels, "B": ensemble.config.model.num_buckets,
                   "R": len(ensemble.rep_ids), "top_buckets": top_buckets, "min_votes": min_votes,
                   "bucket_cap": settings.bucket_cap,
                   "candidate_slots": len(ensemble.rep_ids) * settings.top_buckets * settings.bucket_cap,
                   f"recall_of_exact_top{args.k}": round(recall_of_exact(ids, exact_ids), 4),
                   **{f"P@{k}": round(100 * found[f"P@{k}"], 2) for k in (1, 3, 5)},
                   **{f"exact_P@{k}": round(100 * exact_metrics[f"P@{k}"], 2) for k in (1, 3, 5)},
                   "queries_per_s": round(qps, 1), "exact_queries_per_s": round(exact_qps, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.markdown:
        key = f"recall_of_exact_top{args.k}"
        print(f"\n| m | min_votes | candidate slots | recall of exact top-{args.k} | P@1 | P@3 | P@5 | "
              "queries/s (exact) |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['top_buckets']} | {row['min_votes']} | {row['candidate_slots']} | {row[key]:.4f} | "
                  f"{row['P@1']:.2f} ({row['exact_P@1']:.2f}) | {row['P@3']:.2f} ({row['exact_P@3']:.2f}) | "
                  f"{row['P@5']:.2f} ({row['exact_P@5']:.2f}) | {row['queries_per_s']:.0f} "
                  f"({row['exact_queries_per_s']:.0f}) |")


if __name__ == "__main__":
    main()
