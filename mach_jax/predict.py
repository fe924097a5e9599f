"""``python -m mach_jax.predict --workdir W --input FILE [--k 5] [--output OUT]``: top-k classes.

Reads the input (XC format, plain or gzip; labels optional: a line may start with a space) in
chunks of ``--chunk-rows`` points, so any size runs in bounded memory, and writes one line per
input point: ``id:score id:score ...``, best first (to stdout without ``--output``).
``--decoder approx`` (with ``--top-buckets M``, ``--min-votes V``, ``--bucket-cap C``) scores only
the classes in each member's top buckets (see ``mach_jax.readout.approx_decode``).
``--export FILE`` also writes the ensemble plus decoder as a StableHLO function (see
``mach_jax.readout.export``) for a batch of ``--eval-batch-size`` points.
"""

from __future__ import annotations

import argparse
import sys

from mach_jax import cli


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mach_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, action="append",
                        help="a trained workdir; repeat it to merge repetition groups")
    parser.add_argument("--input", help="points to score, XC format")
    parser.add_argument("--k", type=int, default=5, help="classes per point (default: %(default)s)")
    parser.add_argument("--output", default=None, help="where to write (default: stdout)")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="points read at a time")
    parser.add_argument("--export", default=None, help="also export a StableHLO predictor here")
    parser.add_argument("--export-max-nnz", type=int, default=256, help="K of the exported function")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(parser, ("eval",), with_preset=False)
    return parser.parse_args(argv)


def format_predictions(scores, ids) -> list[str]:
    """One text line per point: 'id:score' pairs, best first (approximate decoding's empty
    places, score -inf, are left out)."""
    return [" ".join(f"{i}:{s:.6g}" for i, s in zip(row_ids, row_scores) if s != float("-inf"))
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())]


def do_predict(args: argparse.Namespace) -> int:
    from mach_jax.readout.ensemble import MachEnsemble
    from mach_jax.data.xc_stream import iter_xc_chunks
    from tqdm.auto import tqdm

    ensemble = MachEnsemble.load(*args.workdir, **cli.flag_overrides(args).get("eval", {}))
    if args.export:
        from mach_jax.readout.export import export_ensemble

        path = export_ensemble(ensemble, args.export, ensemble.config.eval.eval_batch_size,
                               args.export_max_nnz, args.k)
        print(f"exported to {path} (spec in {path}.json)", file=sys.stderr)
    if not args.input:
        return 0
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for chunk in tqdm(iter_xc_chunks(args.input, args.chunk_rows), disable=args.quiet, desc="predict",
                          unit="chunk"):
            scores, ids = ensemble.predict(chunk.features, k=args.k, source=args.input)
            out.write("".join(line + "\n" for line in format_predictions(scores, ids)))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_predict(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
