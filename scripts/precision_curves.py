"""The MACH paper's figures for one preset: precision against R and against B.

    python scripts/precision_curves.py --preset bibtex --train ../shared/data/bibtex/train.txt.gz \
        --test ../shared/data/bibtex/test.txt.gz --buckets 16 32 64 128 256 --out plots/bibtex \
        [--valid-frac F] [--seed S] [--workdir-root DIR] [--quiet] [-- extra training flags]

For each B in ``--buckets`` it trains the preset with ``--num-buckets B`` (everything else from
the preset, ``--valid-frac``, ``--seed`` and the training flags after ``--``, e.g.
``-- -R 16 --epochs 5``) in its own workdir ``DIR/B<B>`` (default DIR: ``OUT/runs``), through
``experiment.train_and_evaluate``. Re-running resumes an interrupted run and trains a finished one
no further (it restores the last checkpoint, runs no step, writes no checkpoint). Then, for
every B, it reads out the first r members for r = 1..R (``plot.precision_vs_repetitions``) on
the data the runs were evaluated on: the validation split with ``--valid-frac``, else the test
set. Writes to ``OUT``:

- ``precision_curves.json``: ``{"metadata": {...}, "records": [...]}``, one record per (B, r)
  with ``B``, ``r``, ``outputs`` (r·B) and ``P@1``/``P@3``/``P@5`` as fractions in [0, 1]; the
  metadata names the preset, seed, split, R, the training flags and the hardware;
- ``precision_vs_B.png``: P@1/3/5 against B (log2 axis), all R members read out;
- ``precision_vs_R.png``: P@1 (solid) and P@5 (dashed) against r, one colour per B;

and prints a Markdown table of P@1/3/5 at the full R per B. Needs matplotlib
(``pip install "mach_jax[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from mach_jax import cli
from mach_jax.config import PRESETS, Config, get_preset
from mach_jax.errors import ConfigError
from mach_jax.hardware import cpu_model

KS = (1, 3, 5)
JSON_FILE = "precision_curves.json"
BUCKETS_PLOT = "precision_vs_B.png"
REPETITIONS_PLOT = "precision_vs_R.png"
TRAIN_SECTIONS = ("data", "model", "train", "eval", "parallel")
# Fields this script sets itself (flag before --), or that would break the read-out of all R members.
OWN_FIELDS = {"model.num_buckets": "--buckets", "data.train_path": "--train", "data.test_path": "--test",
              "data.valid_frac": "--valid-frac", "train.seed": "--seed"}
REFUSED_FIELDS = {"parallel.rep_range": "every member is trained here",
                  "eval.eval_repetitions": "every r = 1..R is read out"}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(own flags, training flags)``: the command line before and after the first ``--``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The script's flags; the training flags after ``--`` go to ``args.train_flags``."""
    own, extra = split_argv(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="python scripts/precision_curves.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="named settings to start from (default: %(default)s)")
    parser.add_argument("--train", default=None, help="training file in XC format (default: the preset's)")
    parser.add_argument("--test", default=None, help="test file in XC format (default: the preset's)")
    parser.add_argument("--buckets", type=int, nargs="*", required=True, metavar="B",
                        help="the bucket counts B to train, one run each")
    parser.add_argument("--out", required=True, help="where the JSON and PNG files go")
    parser.add_argument("--valid-frac", type=float, default=None,
                        help="hold out this share of the training data and evaluate on it")
    parser.add_argument("--seed", type=int, default=None, help="train.seed (default: the preset's)")
    parser.add_argument("--workdir-root", default=None, help="the runs' workdirs (default: OUT/runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(own)
    train_parser = argparse.ArgumentParser(prog="precision_curves.py ... --", add_help=True)
    cli.add_config_flags(train_parser, TRAIN_SECTIONS, with_preset=False)
    args.train_flags = extra
    args.train_overrides = cli.flag_overrides(train_parser.parse_args(extra))
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses what cannot run, before anything trains: a ConfigError or FileNotFoundError."""
    if not args.buckets:
        raise ConfigError("--buckets: give at least one bucket count B")
    for num_buckets in args.buckets:
        if num_buckets < 2:
            raise ConfigError(f"--buckets: B={num_buckets} must be >= 2")
    if len(set(args.buckets)) != len(args.buckets):
        raise ConfigError(f"--buckets {' '.join(map(str, args.buckets))}: each B once")
    flat = {f"{section}.{field}" for section, fields in args.train_overrides.items() for field in fields}
    for field in sorted(flat):
        if field in OWN_FIELDS:
            raise ConfigError(f"{cli.flag_of(field)} after --: give it as {OWN_FIELDS[field]} before --")
        if field in REFUSED_FIELDS:
            raise ConfigError(f"{cli.flag_of(field)}: not for this script ({REFUSED_FIELDS[field]})")
    for flag, path in (("--train", args.train), ("--test", args.test)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")


def build_configs(args: argparse.Namespace) -> dict[int, Config]:
    """One validated config per B: the preset, the training flags, then this script's own flags."""
    check_arguments(args)
    base = get_preset(args.preset).replace(**args.train_overrides)
    data = {key: value for key, value in (("train_path", args.train), ("test_path", args.test),
                                          ("valid_frac", args.valid_frac)) if value is not None}
    train = {} if args.seed is None else {"seed": args.seed}
    base = base.replace(data=data, train=train)
    return {b: base.replace(model={"num_buckets": b}).validate() for b in sorted(args.buckets)}


def workdir_root(args: argparse.Namespace) -> Path:
    """Where the runs live: ``--workdir-root``, else ``OUT/runs``."""
    return Path(args.workdir_root) if args.workdir_root else Path(args.out) / "runs"


def train_all(configs: dict[int, Config], root: Path, progress: bool) -> dict[int, dict]:
    """Trains (or resumes, or finds finished) the run of every B; returns {B: its metrics}."""
    from mach_jax.experiment import train_and_evaluate

    metrics = {}
    for num_buckets, config in configs.items():
        workdir = root / f"B{num_buckets}"
        print(f"B={num_buckets}: R={config.model.num_repetitions} members, workdir {workdir}",
              file=sys.stderr, flush=True)
        metrics[num_buckets] = train_and_evaluate(config, workdir, progress=progress)
    return metrics


def precision_records(configs: dict[int, Config], root: Path, progress: bool) -> tuple[list[dict], Any, str]:
    """Reads out r = 1..R members of every run on its evaluation data.

    Returns:
      ``(records, eval data, split)``: one record per (B, r), in order of B then r.
    """
    from mach_jax import plot
    from mach_jax.data import sources

    first = next(iter(configs.values()))  # every B shares the data config
    eval_data, split = sources.load_eval_data(first.data, progress=progress)
    records = []
    for num_buckets, config in configs.items():
        results = plot.precision_vs_repetitions(root / f"B{num_buckets}", eval_data, progress=progress,
                                                **config.to_dict()["eval"])
        for result in results:
            r = result["num_repetitions"]
            records.append({"B": num_buckets, "r": r, "outputs": r * num_buckets,
                            **{f"P@{k}": result[f"P@{k}"] for k in KS}})
    return records, eval_data, split


def hardware() -> str:
    """The machine and JAX devices the numbers come from, in one line."""
    import jax

    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}; JAX {jax.__version__} {jax.default_backend()}: "
            f"{jax.device_count()} x {jax.devices()[0].device_kind}")


def full_r(records: list[dict]) -> list[dict]:
    """The record of each B with all R members read out, in order of B."""
    last = {}
    for record in records:
        if record["r"] >= last.get(record["B"], {"r": 0})["r"]:
            last[record["B"]] = record
    return [last[b] for b in sorted(last)]


def plot_precision_vs_buckets(records: list[dict], path: Path) -> Path:
    """P@1/3/5 (%) against B on a log2 axis, at the full R."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for files

    rows = full_r(records)
    buckets = [row["B"] for row in rows]
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    for k in KS:
        axis.plot(buckets, [100 * row[f"P@{k}"] for row in rows], marker="o", label=f"P@{k}")
    axis.set_xscale("log", base=2)
    axis.set_xticks(buckets, [str(b) for b in buckets])
    axis.set(xlabel="buckets B", ylabel="%", title=f"precision vs B (R = {rows[0]['r']})")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_precision_vs_repetitions(records: list[dict], path: Path) -> Path:
    """P@1 (solid) and P@5 (dashed), in %, against r; one colour per B."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for index, num_buckets in enumerate(sorted({record["B"] for record in records})):
        rows = [record for record in records if record["B"] == num_buckets]
        reps = [row["r"] for row in rows]
        color = f"C{index % 10}"
        axis.plot(reps, [100 * row["P@1"] for row in rows], color=color, marker=".",
                  label=f"B={num_buckets} P@1")
        axis.plot(reps, [100 * row["P@5"] for row in rows], color=color, linestyle="--",
                  label=f"B={num_buckets} P@5")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="repetitions r (first r members)", ylabel="%", title="precision vs R")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def markdown_table(records: list[dict]) -> str:
    """B rows: model outputs R·B and P@1/3/5 (%) with all R members read out."""
    lines = ["| B | outputs R·B | P@1 | P@3 | P@5 |", "|---|---|---|---|---|"]
    for row in full_r(records):
        cells = " | ".join(f"{100 * row[f'P@{k}']:.2f}" for k in KS)
        lines.append(f"| {row['B']} | {row['outputs']} ({row['r']}·{row['B']}) | {cells} |")
    return "\n".join(lines)


def do_curves(args: argparse.Namespace) -> int:
    """Trains every B, reads out r = 1..R, writes the JSON and both PNG files, prints the table."""
    try:
        import matplotlib
    except ImportError:
        print('error: precision_curves.py needs matplotlib: pip install "mach_jax[plot]"', file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    configs = build_configs(args)
    root, out = workdir_root(args), Path(args.out)
    train_all(configs, root, progress=not args.quiet)
    records, eval_data, split = precision_records(configs, root, progress=not args.quiet)
    first = next(iter(configs.values()))
    metadata = {"preset": args.preset, "seed": first.train.seed, "split": split,
                "eval_source": eval_data.source, "valid_frac": first.data.valid_frac,
                "R": first.model.num_repetitions, "buckets": sorted(configs),
                "train_flags": args.train_flags, "workdir_root": str(root), "hardware": hardware()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_FILE
    path.write_text(json.dumps({"metadata": metadata, "records": records}, indent=1) + "\n")
    written = [path, plot_precision_vs_buckets(records, out / BUCKETS_PLOT),
               plot_precision_vs_repetitions(records, out / REPETITIONS_PLOT)]
    print(f"\n{args.preset}, {split} split ({eval_data.source}), R = {first.model.num_repetitions}, "
          f"seed {first.train.seed}:\n\n{markdown_table(records)}\n")
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return do_curves(parse_arguments(argv))


if __name__ == "__main__":
    cli.run_cli(main)
