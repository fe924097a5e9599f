"""Precision, training time and peak memory against L, from ``scripts/compare.py`` runs.

    python scripts/plot_scaling.py --run 10000=runs/compare-t1e4 --run 100000=runs/compare-t1e5 \
        --run 1000000=runs/compare-t1e6 --out docs/images/scaling.png

Each ``--run L=FOLDER`` names a ``scripts/compare.py`` workdir (its ``results.json``) and the L
of its data. Writes a PNG of three panels against L (log scale): P@1 and P@5, training seconds
and peak RSS (both log scale), one line per method; and beside it ``<out>.json``, the points
plotted. mach_jax's runs over several seeds (``mach_jax@S``) are averaged. A method that was
skipped or failed at some L has no point there. Needs matplotlib (``pip install
"mach_jax[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIELDS = ("P@1", "P@5", "train_seconds", "peak_rss_bytes")
NAMES = {"mach_jax": "mach_jax (MACH)", "bonsai": "omikuji Bonsai", "parabel": "omikuji Parabel",
         "plt": "napkinXC PLT"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="L=FOLDER",
                        help="the L of a compare.py workdir's data, and the workdir")
    parser.add_argument("--out", required=True, help="the PNG to write (and <out>.json beside it)")
    return parser.parse_args(argv)


def read_runs(runs: list[str]) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {L: {field: value}}}`` from each ``L=FOLDER``'s ``results.json``.

    Raises:
      SystemExit: an argument is not ``L=FOLDER`` or a folder has no readable results.json.
    """
    points: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        size, _, folder = run.partition("=")
        if not size.isdigit() or not folder:
            raise SystemExit(f"error: --run {run!r}: expected L=FOLDER, e.g. 100000=runs/compare-t1e5")
        path = Path(folder) / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {path}: cannot read compare.py's results ({error})") from None
        for method, values in method_means(results).items():
            points.setdefault(method, {})[int(size)] = values
    return points


def method_means(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Each method's fields; ``mach_jax@S`` runs averaged into ``mach_jax``; skipped or failed
    runs (no P@1) left out."""
    groups: dict[str, list[dict]] = {}
    for method, result in results.items():
        if isinstance(result, dict) and all(isinstance(result.get(field), (int, float)) for field in FIELDS):
            groups.setdefault(method.split("@")[0], []).append(result)
    return {method: {field: sum(run[field] for run in runs) / len(runs) for field in FIELDS}
            for method, runs in groups.items()}


def plot(points: dict[str, dict[int, dict[str, float]]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for index, (method, by_size) in enumerate(sorted(points.items())):
        sizes, name, color = sorted(by_size), NAMES.get(method, method), f"C{index}"  # one colour a method
        for field, style in (("P@1", "-o"), ("P@5", "--s")):
            axes[0].plot(sizes, [100 * by_size[s][field] for s in sizes], style, color=color, label=f"{name} {field}")
        axes[1].plot(sizes, [by_size[s]["train_seconds"] for s in sizes], "-o", color=color, label=name)
        axes[2].plot(sizes, [by_size[s]["peak_rss_bytes"] / 2**30 for s in sizes], "-o", color=color, label=name)
    titles = ("precision (%)", "training seconds (2 CPU cores)", "peak RSS (GiB)")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xlabel("L, the number of labels")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    points = read_runs(args.run)
    if not points:
        raise SystemExit("error: no method with P@1, P@5, training seconds and peak RSS in the runs given")
    out = Path(args.out)
    plot(points, out)
    table = {method: {str(size): values for size, values in sorted(by_size.items())}
             for method, by_size in sorted(points.items())}
    out.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"written {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
