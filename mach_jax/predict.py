"""``python -m mach_jax.predict --workdir W --input FILE [--k 5] [--output OUT]``: top-k classes.

Reads the input (XC format, plain or gzip; labels optional: a line may start with a space) once,
in chunks of ``--chunk-rows`` points, so any size runs in bounded memory (a FIFO, a pipe or ``-``
for stdin too; a line over ``--max-line-bytes`` is refused), and writes one line per input point:
``id:score id:score ...``, best first (to stdout without ``--output``). ``--output`` is written to
a temporary file beside it and renamed only once every point is written: a failed run leaves an
existing file as it was (it may even be the input); only a regular file or a new path is
written (a device, FIFO, socket or link there is refused).
``--decoder approx`` (with ``--top-buckets M``, ``--min-votes V``, ``--bucket-cap C``) scores only
the classes in each member's top buckets (see ``mach_jax.readout.approx_decode``).
``--export FILE`` also writes the ensemble plus decoder as a StableHLO function (see
``mach_jax.readout.export``) for a batch of ``--eval-batch-size`` points.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from mach_jax import cli
from mach_jax.config.flag_values import byte_count, positive_int
from mach_jax.data.files import MAX_LINE_BYTES, STDIN, require_regular_target
from mach_jax.errors import ConfigError, DataFormatError

# The eval fields that play no part in a prediction: PSP@k's propensity model is for metrics.
NOT_FOR_PREDICTION = ("eval.propensity_a", "eval.propensity_b")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m mach_jax.predict", description=__doc__)
    parser.add_argument("--workdir", required=True, action="append",
                        help="a trained workdir; repeat it to merge repetition groups")
    parser.add_argument("--input", help="points to score, XC format (a FIFO, a pipe, or - for stdin too)")
    parser.add_argument("--k", type=positive_int, default=5,
                        help="classes per point, 1 to L (default: %(default)s)")
    parser.add_argument("--output", default=None, help="where to write (default: stdout)")
    parser.add_argument("--chunk-rows", type=positive_int, default=65_536, help="points read at a time")
    parser.add_argument("--max-line-bytes", type=byte_count, default=MAX_LINE_BYTES, metavar="SIZE",
                        help="refuse a longer input line, e.g. 64M (default: 64M)")
    parser.add_argument("--export", default=None, help="also export a StableHLO predictor here")
    parser.add_argument("--export-max-nnz", type=positive_int, default=256,
                        help="K of the exported function: feature slots per point (default: %(default)s)")
    parser.add_argument("--export-params", default=None, metavar="FOLDER",
                        help="also write the parameters alone (no optimiser moments) to this new folder, "
                             "for serving: MachEnsemble.load and --workdir read it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(parser, ("eval",), with_preset=False, skip=NOT_FOR_PREDICTION)
    return parser.parse_args(argv)


def format_predictions(scores, ids) -> list[str]:
    """One text line per point: 'id:score' pairs, best first (approximate decoding's empty
    places, score -inf, are left out)."""
    return [" ".join(f"{i}:{s:.6g}" for i, s in zip(row_ids, row_scores) if s != float("-inf"))
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())]


def check_request(args: argparse.Namespace, num_labels: int) -> None:
    """Refuses, before anything is read or written, what cannot succeed: nothing to do, ``--k``
    above L, an unreadable ``--input``, an ``--output`` or ``--export`` that cannot be written."""
    if not args.input and not args.export and not args.export_params:
        raise ConfigError("nothing to do: give --input FILE (the points to score), --export FILE "
                          "or --export-params FOLDER")
    if args.k > num_labels:
        raise ConfigError(f"--k {args.k}: the model has only L={num_labels} classes; ask for at most {num_labels}")
    if args.input and args.input != STDIN:  # checked without opening it: a FIFO is read once, later
        if not os.path.exists(args.input):
            raise DataFormatError(args.input, None, "cannot read file (No such file or directory)")
        if os.path.isdir(args.input) or not os.access(args.input, os.R_OK):
            raise DataFormatError(args.input, None, "cannot read file (" + (
                "Is a directory" if os.path.isdir(args.input) else "Permission denied") + ")")
    for flag in ("--output", "--export"):
        path = getattr(args, flag[2:])
        if path:
            _check_writable(flag, Path(path))


def _check_writable(flag: str, path: Path) -> None:
    require_regular_target(path, flag)  # a device, FIFO, socket or link there is never replaced
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give the name of the file to write")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder {folder} is not writable; write elsewhere")


def write_predictions(ensemble, args: argparse.Namespace, write: Callable[[str], object]) -> None:
    """Streams ``--input`` through the ensemble in chunks of ``--chunk-rows`` points, ``write``-ing
    the text lines of each chunk (``format_predictions``) as it goes."""
    from mach_jax.data.batches import widest_row
    from mach_jax.data.xc_stream import iter_xc_chunks
    from tqdm.auto import tqdm

    from mach_jax.training import eval_resources
    from mach_jax.training.resource_check import memory_budget

    budget, checked_width = memory_budget(), -1
    for chunk in tqdm(iter_xc_chunks(args.input, args.chunk_rows, args.max_line_bytes), disable=args.quiet, desc="predict",
                      unit="chunk"):
        widest = widest_row(chunk.features)
        if widest > checked_width:  # the estimate grows with the widest row alone: checked once per width
            eval_resources.require_evaluation_fits(ensemble.config, ensemble.info, len(ensemble.rep_ids),
                                                   chunk.features, None, args.input, budget)
            checked_width = widest
        scores, ids = ensemble.predict(chunk.features, k=args.k, source=args.input)
        write("".join(line + "\n" for line in format_predictions(scores, ids)))


def do_predict(args: argparse.Namespace) -> int:
    from mach_jax.data.files import atomic_output
    from mach_jax.readout.ensemble import MachEnsemble

    ensemble = MachEnsemble.load(*args.workdir, **cli.flag_overrides(args).get("eval", {}))
    check_request(args, ensemble.info.num_labels)
    cli.warn_if_unfinished(ensemble, args.workdir, "predicting with")
    if args.export:
        from mach_jax.readout.export import export_ensemble

        path = export_ensemble(ensemble, args.export, ensemble.config.eval.eval_batch_size,
                               args.export_max_nnz, args.k)
        print(f"exported to {path} (spec in {path}.json)", file=sys.stderr)
    if args.export_params:
        from mach_jax.readout.export import export_params

        from mach_jax.storage import lock

        with lock.hold(Path(args.export_params)):  # no training run writes the folder meanwhile
            path = export_params(args.export_params, *args.workdir)
        print(f"parameters (no optimiser moments) written to {path}", file=sys.stderr)
    if not args.input:
        return 0
    if not args.output:
        write_predictions(ensemble, args, sys.stdout.write)
        return 0
    with atomic_output(args.output) as out:
        write_predictions(ensemble, args, lambda text: out.write(text.encode()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_predict(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
