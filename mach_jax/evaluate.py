"""``python -m mach_jax.evaluate --workdir W [--test FILE]``: restore a trained ensemble, score it.

Everything about the model comes from the workdir (config.json, checkpoints). Without ``--test``
the run is evaluated on what it was evaluated on after training: its validation split when it
was trained with ``--valid-frac``, else its test data (its test file, or the synthetic test split
it was trained with); ``--split valid|test`` picks one of the two. Eval flags (``--aggregation``,
``--eval-reps``, ...) change only the read-out.

The metrics are printed (stdout) and written beside the training run's ``metrics.json``, never
over it, as ``eval-<decoder>.json`` (``eval-exact.json``, ``eval-approx.json``). Reading a
checkpoint older than the run's final step (the run is still training, or was stopped) is said
in a ``warning:`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mach_jax import cli
from mach_jax.config.flag_values import byte_count
from mach_jax.readout.metrics import format_metrics

log = logging.getLogger("mach_jax")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m mach_jax.evaluate", description=__doc__)
    parser.add_argument("--workdir", required=True, action="append",
                        help="a workdir written by mach_jax.train; repeat it to merge repetition "
                             "groups trained in separate workdirs")
    parser.add_argument("--test", default=None, help="test file in XC format (plain or .gz)")
    parser.add_argument("--split", default=None, choices=("valid", "test"),
                        help="without --test: the run's validation split or its test data (default: "
                             "the validation split of a run trained with --valid-frac, else the test data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-line-bytes", type=byte_count, default=None, metavar="BYTES",
                        help="the longest line the data may have (default: the run's data.max_line_bytes, 64M)")
    cli.add_config_flags(parser, ("eval",), with_preset=False)
    return parser.parse_args(argv)


def eval_file(workdir: str | Path, decoder: str) -> Path:
    """Where an evaluation with this decoder ("exact", "approx") is written: beside the run's
    ``metrics.json``."""
    return Path(workdir) / f"eval-{decoder}.json"


def do_evaluate(args: argparse.Namespace) -> int:
    from mach_jax.data import sources
    from mach_jax.data.files import write_json_atomically
    from mach_jax.readout.ensemble import MachEnsemble
    from mach_jax.training import eval_resources

    ensemble = MachEnsemble.load(*args.workdir, **cli.flag_overrides(args).get("eval", {}))
    cli.warn_if_unfinished(ensemble, args.workdir, "evaluating")
    data_config = ensemble.config.data
    if args.max_line_bytes is not None:
        data_config = dataclasses.replace(data_config, max_line_bytes=args.max_line_bytes)
    data, split = sources.load_eval_data(data_config, args.test, args.split, progress=not args.quiet)
    eval_resources.require_evaluation_fits(ensemble.config, ensemble.info, len(ensemble.rep_ids), data.features,
                                           data.labels, data.source)
    metrics = ensemble.evaluate(data, progress=not args.quiet)
    metrics.update(sources.eval_fields(ensemble.config.data, data, split))
    metrics["checkpoint_step"] = ensemble.checkpoint_step
    print(format_metrics(metrics))  # the result, before the file: a failed write loses nothing
    path = eval_file(args.workdir[0], ensemble.config.eval.decoder)
    try:
        write_json_atomically(path, metrics)
    except OSError as error:  # a read-only workdir (a shared model, say) is still evaluated
        log.warning(f"warning: cannot write {path} ({error.strerror or error}): the metrics above are not saved")
        return 0
    log.info(f"written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_evaluate(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
