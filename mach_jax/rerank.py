"""``python -m mach_jax.rerank --workdir W --rerank-shortlist K``: add a re-ranker to a trained ensemble.

For an ensemble trained without one, or trained in groups (``--reps``, repeat ``--workdir`` for
groups in separate workdirs): reads the training data named in the run's config (less its
validation split), computes every point's K-class shortlist with the members' read-out, trains
the re-ranker (``--rerank-*`` flags; see ``mach_jax.core.reranker``) into ``W/rerank/``, then
evaluates the ensemble with and without it (eval flags such as ``--rerank-mix`` or ``--decoder``
apply to both) and writes ``W/metrics.json``, keeping the training's ``train_seconds`` beside
the re-ranker's ``rerank_seconds``. Re-running resumes an interrupted re-ranker; a finished one
is kept. Where the members' run held points out for it (``--mix-holdout-frac`` with
``--rerank-shortlist`` given to ``mach_jax.train``), the mix is chosen on those points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from mach_jax import cli
from mach_jax.readout.metrics import format_metrics


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m mach_jax.rerank", description=__doc__)
    parser.add_argument("--workdir", required=True, action="append",
                        help="a workdir written by mach_jax.train; repeat it for groups in separate workdirs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_config_flags(parser, ("rerank", "eval"), with_preset=False)
    return parser.parse_args(argv)


def do_rerank(args: argparse.Namespace) -> int:
    from mach_jax.storage import workdir as wd

    workdirs = [Path(path) for path in args.workdir]
    config, info, groups = wd.find_groups(workdirs)
    with hold_all([workdirs[0], *(group.path for group in groups)]):  # no training there meanwhile
        return _rerank(args, workdirs, config, info.num_labels)


def hold_all(folders: list[Path]):
    """The training lock of every folder (each once), held together: a training run in any of
    them, or another re-ranker, is refused while this one reads the members and writes."""
    import contextlib

    from mach_jax.storage import lock

    stack = contextlib.ExitStack()
    for folder in dict.fromkeys(Path(folder).resolve() for folder in folders):
        try:
            stack.enter_context(lock.hold(folder))
        except BaseException:
            stack.close()
            raise
    return stack


def _rerank(args: argparse.Namespace, workdirs: list[Path], config, num_labels: int) -> int:
    from mach_jax import rerank_stage
    from mach_jax.data import sources
    from mach_jax.readout.ensemble import MachEnsemble
    from mach_jax.storage import workdir as wd

    overrides = cli.flag_overrides(args)
    rerank = overrides.get("rerank", {})
    if "mix_holdout_frac" in rerank:
        from mach_jax.errors import ConfigError
        raise ConfigError("--mix-holdout-frac is fixed when the members train (they must not see the points "
                          "the mix is chosen on): give it to python -m mach_jax.train with --rerank-shortlist",
                          field="rerank.mix_holdout_frac")
    # The points the members' run held out, if it held any out: the mix is chosen on them.
    held_out = config.rerank.mix_holdout_frac if config.rerank.enabled else 0.0
    config = config.replace(rerank={**rerank, "mix_holdout_frac": held_out}, eval=overrides.get("eval", {}),
                            parallel={"rep_range": ()})
    config.validate()
    rerank_stage.require_shortlist_within(config.rerank.shortlist_size, num_labels)
    train_data, eval_data, split = sources.load_train_eval(config.data, progress=not args.quiet)
    start = time.perf_counter()
    rerank_stage.fit_reranker(config, workdirs, train_data, progress=not args.quiet)
    rerank_seconds = round(time.perf_counter() - start, 2)
    without = MachEnsemble.load(*workdirs, **{**dataclasses.asdict(config.eval), "reranker": "off"}).evaluate(
        eval_data, progress=not args.quiet)
    metrics = rerank_stage.evaluate_with_reranker(config, workdirs, eval_data, without, progress=not args.quiet)
    metrics.update(sources.eval_fields(config.data, eval_data, split), **_training_seconds(workdirs[0]),
                   rerank_seconds=rerank_seconds)
    path = wd.write_metrics(workdirs[0], metrics)
    print(format_metrics(metrics))  # the result on stdout; status lines go to stderr
    logging.getLogger("mach_jax").info(f"written to {path}")
    return 0


def _training_seconds(workdir: Path) -> dict:
    """The members' ``train_seconds`` from the training run's metrics.json, kept when it is rewritten."""
    from mach_jax.storage import workdir as wd

    try:
        saved = json.loads((workdir / wd.METRICS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {"train_seconds": saved["train_seconds"]} if isinstance(saved, dict) and "train_seconds" in saved else {}


def main(argv: list[str] | None = None) -> int:
    return do_rerank(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
