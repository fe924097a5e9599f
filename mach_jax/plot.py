"""``python -m mach_jax.plot WORKDIR [--out DIR] [--test FILE]``: training curves and P@k vs R.

Writes two PNG files (to ``WORKDIR/plots`` unless ``--out``):

- ``training_curves.png``: the loss (mean and per member) and examples/s against the step, from
  ``metrics.jsonl`` (of every repetition group, for a workdir of groups), and P@1/3/5 against
  the epoch when evaluations were logged (``--eval-every-epochs``, and the final one);
- ``precision_vs_repetitions.png``: P@1/3/5 of the count-min read-out of the first r members,
  r = 1..R, on the run's evaluation data (its validation split when trained with
  ``--valid-frac``, else its test set) or on ``--test``; the numbers also go to
  ``precision_vs_repetitions.json``.

Needs matplotlib (``pip install "mach_jax[plot]"``); ``precision_vs_repetitions`` does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mach_jax import cli
from mach_jax.data.files import atomic_output

KS = (1, 3, 5)
CURVES_FILE = "training_curves.png"
PRECISION_FILE = "precision_vs_repetitions.png"


def precision_vs_repetitions(workdir: str | Path, test, progress: bool = False,
                             **eval_overrides) -> list[dict[str, Any]]:
    """Evaluates the first r members of a trained ensemble, for r = 1..R.

    Args:
      workdir: a trained workdir (or one holding repetition groups).
      test: the labelled XCDataset to evaluate on.
      progress: a progress bar over r.
      **eval_overrides: eval settings to change (``aggregation="logit"``, ...).

    Returns:
      One metrics dict per r (``MachEnsemble.evaluate``'s: P@k, nDCG@k, PSP@k,
      ``num_repetitions`` = r, ...), in order of r.
    """
    from tqdm.auto import tqdm

    from mach_jax.readout.ensemble import MachEnsemble

    full = MachEnsemble.load(workdir, **{**eval_overrides, "eval_repetitions": None})  # read once
    results = []
    for r in tqdm(range(1, len(full.rep_ids) + 1), disable=not progress, desc="R"):
        results.append(full.with_eval(eval_repetitions=r).evaluate(test, progress=False))
    return results


def _metric_logs(workdir: Path) -> list[tuple[str, list[dict]]]:
    """(label, records) of the run's metrics log, or of each repetition group's."""
    from mach_jax.storage import workdir as wd
    from mach_jax.training.metric_log import METRICS_LOG, read_records

    if (workdir / METRICS_LOG).exists():
        return [("", read_records(workdir / METRICS_LOG))]
    groups = sorted(workdir.glob(f"{wd.GROUP_PREFIX}*/{METRICS_LOG}"))
    return [(path.parent.name, read_records(path)) for path in groups]


def plot_training_curves(logs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """Loss (mean, members), examples/s against the step; P@k against the epoch if evaluated."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for files

    evals = [r for _, records in logs for r in records if r.get("kind") == "eval"]
    figure = Figure(figsize=(15 if evals else 10, 4))
    axes = figure.subplots(1, 3 if evals else 2, squeeze=False)
    loss_axis, rate_axis = axes[0][0], axes[0][1]
    for label, records in logs:
        train = [r for r in records if r.get("kind") == "train"]
        if not train:
            continue
        steps = [r["step"] for r in train]
        prefix = f"{label} " if label else ""
        members = sorted(train[-1]["member_loss"], key=int)
        for index, rep in enumerate(members):
            name = f"member {rep}" if len(members) <= 8 else ("members" if index == 0 else None)
            loss_axis.plot(steps, [r["member_loss"].get(rep, float("nan")) for r in train],
                           linewidth=0.8, alpha=0.5, label=name)
        loss_axis.plot(steps, [r["loss"] for r in train], color="black", linewidth=2,
                       label=f"{prefix}mean")
        rate_axis.plot(steps, [r["examples_per_sec"] for r in train], label=label or None)
    loss_axis.set(xlabel="step", ylabel="training loss", title="loss per member and mean")
    loss_axis.legend(fontsize="small", ncol=2)
    rate_axis.set(xlabel="step", ylabel="examples / s", title="throughput")
    if len(logs) > 1:
        rate_axis.legend(fontsize="small")
    if evals:
        eval_axis = axes[0][2]
        evals.sort(key=lambda r: r["step"])
        for k in KS:
            eval_axis.plot([r["epoch"] for r in evals], [100 * r[f"P@{k}"] for r in evals],
                           marker="o", label=f"P@{k}")
        eval_axis.set(xlabel="epoch", ylabel="%", title="test precision")
        eval_axis.legend()
    figure.tight_layout()
    with atomic_output(path) as file:  # a failed write never leaves half a picture
        figure.savefig(file, dpi=100, format="png")
    return path


def plot_precision_vs_repetitions(results: list[dict[str, Any]], path: Path) -> Path:
    """P@1/3/5 against the number of members r read out."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    reps = [r["num_repetitions"] for r in results]
    for k in KS:
        axis.plot(reps, [100 * r[f"P@{k}"] for r in results], marker="o", label=f"P@{k}")
    axis.set(xlabel="repetitions r (first r members)", ylabel="%",
             title="precision vs repetitions")
    axis.set_xticks(reps if len(reps) <= 16 else reps[::max(len(reps) // 16, 1)])
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as file:  # a failed write never leaves half a picture
        figure.savefig(file, dpi=100, format="png")
    return path


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mach_jax.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", help="a workdir written by mach_jax.train")
    parser.add_argument("--out", default=None, help="where the PNG files go (default: WORKDIR/plots)")
    parser.add_argument("--test", default=None, help="test file in XC format (default: the run's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def do_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        print('error: mach_jax.plot needs matplotlib: pip install "mach_jax[plot]"', file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    from mach_jax.data import sources
    from mach_jax.data.files import write_json_atomically
    from mach_jax.storage import workdir as wd

    workdir = Path(args.workdir)
    config, _, _ = wd.find_groups([workdir])  # a clear error for a folder that is not a workdir
    out = Path(args.out) if args.out else workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    logs = _metric_logs(workdir)
    if any(records for _, records in logs):
        written.append(plot_training_curves(logs, out / CURVES_FILE))
    else:
        print(f"{workdir}: no metrics.jsonl, no training curves", file=sys.stderr)
    test, _ = sources.load_eval_data(config.data, args.test, progress=not args.quiet)
    results = precision_vs_repetitions(workdir, test, progress=not args.quiet)
    write_json_atomically(out / "precision_vs_repetitions.json", results)
    written.append(plot_precision_vs_repetitions(results, out / PRECISION_FILE))
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_plot(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
