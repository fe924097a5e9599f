"""``python -m mach_jax.train``: train a MACH ensemble, evaluate it, print P@1/3/5.

With no arguments it trains on the embedded synthetic dataset; ``--train FILE --test FILE``
(Extreme Classification Repository format, plain or .gz) uses real data. Re-running the same
command resumes from the newest checkpoint in ``--workdir``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mach_jax import cli
from mach_jax.readout.metrics import format_metrics

log = logging.getLogger("mach_jax")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m mach_jax.train", description=__doc__)
    parser.add_argument("--workdir", default=None,
                        help="checkpoints, config.json and metrics.json go here "
                             "(default: runs/<preset>, or runs/<folder of --train>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config these flags resolve to (JSON, what --config reads) and exit "
                             "without training; what the data decides (B 0, loss auto, propensities null) "
                             "is filled in when training starts")
    add_distributed_flags(parser)
    cli.add_config_flags(parser, ("data", "model", "train", "eval", "parallel", "rerank", "partition"))
    return parser.parse_args(argv)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Multi-process (multi-host) runs: see ``training.distributed``."""
    group = parser.add_argument_group("multi-process (multi-host) runs")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with the cluster's auto-detection")
    group.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process-id", type=int, default=None, help="this process, 0-based")


def initialize_distributed(args: argparse.Namespace) -> None:
    """Starts JAX's distributed runtime when ``--distributed`` or a coordinator flag was given."""
    explicit = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(value is not None for value in explicit):
        from mach_jax.training import distributed  # JAX: only for a multi-process run

        distributed.initialize(*explicit)


def default_workdir(args: argparse.Namespace) -> Path:
    train_path, dataset = getattr(args, "data.train_path"), getattr(args, "data.dataset")
    if train_path:
        return Path("runs") / Path(train_path).resolve().parent.name
    if dataset:
        return Path("runs") / dataset.partition(":")[2].lower()
    if args.config:
        return Path("runs") / Path(args.config).stem
    return Path("runs") / (args.preset or "default")


def do_train(args: argparse.Namespace) -> int:
    from mach_jax.storage import workdir as workdir_lib  # after flag parsing: --help stays instant
    from mach_jax.experiment import train_and_evaluate

    config = cli.config_from_args(args)  # validated once, by train_and_evaluate
    if args.print_config:
        with cli.errors_named_by_source(args):
            print(config.validate().to_json())
        return 0
    initialize_distributed(args)  # before any device is touched
    workdir = Path(args.workdir) if args.workdir else default_workdir(args)
    with cli.errors_named_by_source(args):
        metrics = train_and_evaluate(config, workdir, progress=not args.quiet)
    written = workdir_lib.group_dir(workdir, config.parallel.rep_range) / workdir_lib.METRICS_FILE
    if "split" in metrics:
        print(format_metrics(metrics))  # the result on stdout; status lines go to stderr
    else:  # trained on a training file alone
        print(f"trained in {metrics['train_seconds']:.1f} s, no test data: evaluate with "
              f"python -m mach_jax.evaluate --workdir {workdir} --test FILE")
    log.info(f"written to {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_train(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
