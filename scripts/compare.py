"""mach_jax against the methods a user would pick instead, on one pair of XC files: a Markdown table.

    python scripts/compare.py --train ../shared/data/bibtex/train.txt.gz \
        --test ../shared/data/bibtex/test.txt.gz --preset bibtex [--out comparison.md] \
        [--seeds 0,1,2] [--peer-transform l2] [--override model.num_repetitions=8 ...] \
        [--valid-frac 0.15]

``--seeds`` runs mach_jax once per seed and adds their mean; a run with the re-ranker adds a row
for its members read out alone. ``--peer-transform`` gives the peers transformed rows (the
peer figures in ../shared/data/README.md used L2-normalised rows). ``--valid-frac F`` compares on
the validation split that ``mach_jax.train --valid-frac F`` holds out, never on the test file.

Methods: ``mach_jax`` (the given preset), omikuji's ``parabel`` (its defaults: 3 trees of balanced
2-means, up to 100 labels a leaf) and ``bonsai`` (omikuji with unbalanced 100-means, depth <= 3, as
its README sets Bonsai up), and napkinXC's ``plt`` (its defaults). The peers are optional
(``pip install "mach_jax[compare]"``): one that does not import gets a row saying so.

Each method runs in a subprocess of its own, so its peak RSS (Linux ``VmHWM``, else the
``ru_maxrss`` of ``os.wait4``) is that method's alone; the peers' processes never load JAX (their
top-5 ids are scored in this one, after they have all run). Columns:
P@1/3/5, nDCG@5 and PSP@5 on the test file in %, the same definitions for every method
(``mach_jax.readout.metrics`` on each method's top-5 ids: P@k divides by k; PSP@k propensities
A = 0.55, B = 1.5 from the training label counts, normalised by the best attainable PSP@k;
mach_jax's row is its own ``metrics.json``); training seconds (the training call alone: mach_jax's
includes compilation; omikuji's includes reading its text file); prediction ms per test point
(top-5 through each library's Python API; mach_jax's after compilation); the model on disk (for
mach_jax its checkpoint, which also holds the Adam moments; the parameters alone are noted under
the table); peak RSS of the whole process. Files go to ``--workdir`` (one folder per method,
emptied first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from mach_jax.config import INPUT_TRANSFORMS, PRESETS  # light: no JAX here until the peers are scored
from mach_jax.hardware import cpu_model

METHODS = ("mach_jax", "parabel", "bonsai", "plt")
NAMES = {"mach_jax": "mach_jax (MACH)", "parabel": "omikuji Parabel", "bonsai": "omikuji Bonsai",
         "plt": "napkinXC PLT"}
COLUMNS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")
TOP_K = 5


class NotInstalled(Exception):
    """The peer's package does not import."""


# ---- the methods, each run in its own subprocess ----

def run_mach_jax(args: argparse.Namespace, folder: Path) -> dict:
    import jax

    from mach_jax import MachEnsemble, get_preset
    from mach_jax import experiment
    from mach_jax.storage import workdir as wd
    from mach_jax.storage.checkpoints import CHECKPOINT_DIR
    from mach_jax.data.xc_format import read_xc

    overrides = parse_overrides(args.override)
    overrides["data"] = {**overrides.get("data", {}), "train_path": args.train, "test_path": args.test}
    overrides["train"] = {**overrides.get("train", {}), "seed": args.seed}
    config = get_preset(args.preset).replace(**overrides)
    workdir = folder / "workdir"
    experiment.train_and_evaluate(config, workdir, progress=False)
    metrics = json.loads((workdir / wd.METRICS_FILE).read_text())
    ensemble = MachEnsemble.load(workdir)
    config = ensemble.config  # with what the preset left to the data filled in
    features = read_xc(args.test).features
    ensemble.predict(features, k=TOP_K)  # compiles for this input's shapes
    start = time.perf_counter()
    ensemble.predict(features, k=TOP_K)
    predict_seconds = time.perf_counter() - start
    checkpoints = workdir / CHECKPOINT_DIR
    latest = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    # The second stage (shortlists and the re-ranker's training) is training time too.
    train_seconds = metrics["train_seconds"] + metrics.get("rerank_seconds", 0.0)
    return {**{key: metrics[key] for key in COLUMNS}, "train_seconds": train_seconds,
            "predict_seconds": predict_seconds, "num_test_points": features.num_rows,
            "model_bytes": folder_bytes(latest),
            "param_bytes": int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(ensemble.params))),
            "settings": f"preset {args.preset}, seed {args.seed}: {preset_settings(config)}",
            "without_reranker": metrics.get("without_reranker")}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["model.num_buckets=4000", ...]`` -> ``{"model": {"num_buckets": 4000}}`` (JSON values,
    else strings)."""
    overrides: dict[str, dict] = {}
    for item in items:
        field, _, text = item.partition("=")
        section, _, name = field.partition(".")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides.setdefault(section, {})[name] = value
    return overrides


def preset_settings(config) -> str:
    """The settings that define a mach_jax run, for the table: R, B, layers, loss, regularisation."""
    model, train = config.model, config.train
    parts = [f"R={model.num_repetitions}", f"B={model.num_buckets}",
             f"hidden {','.join(map(str, model.hidden_sizes))}", train.loss]
    extras = {"dropout": train.dropout, "label smoothing": train.label_smoothing,
              "weight decay": train.weight_decay}
    parts += [f"{name} {value:g}" for name, value in extras.items() if value]
    if train.lr_schedule != "constant":
        parts.append(f"{train.lr_schedule} decay")
    if config.data.input_transform != "none":
        parts.insert(0, f"{config.data.input_transform} input")
    parts.append(f"lr {train.learning_rate:g}")
    parts.append(f"{train.epochs} epochs")
    if config.rerank.enabled:
        parts.append(f"re-ranker over the top {config.rerank.shortlist_size} (h={config.rerank.rerank_dim})")
    return ", ".join(parts)


def run_omikuji(args: argparse.Namespace, folder: Path, bonsai: bool) -> dict:
    try:
        import omikuji
    except ImportError as error:
        raise NotInstalled(f"omikuji: {error}; pip install omikuji") from None
    from mach_jax.data.xc_format import write_xc

    train, test = peer_inputs(args)
    plain = folder / "train.txt"
    write_xc(plain, train)  # omikuji reads a plain-text XC file, not gzip
    hyper = omikuji.Model.default_hyper_param()
    if bonsai:
        hyper.cluster_balanced, hyper.cluster_k, hyper.max_depth = False, 100, 3
    start = time.perf_counter()
    model = omikuji.Model.train_on_data(str(plain), hyper)
    train_seconds = time.perf_counter() - start
    model.save(str(folder / "model"))
    rows = [list(zip(test.features.indices[a:b].tolist(), test.features.values[a:b].tolist()))
            for a, b in zip(test.features.indptr[:-1], test.features.indptr[1:])]
    start = time.perf_counter()
    top = [[label for label, _ in model.predict(row, top_k=TOP_K)] for row in rows]
    predict_seconds = time.perf_counter() - start
    version = metadata.version("omikuji")
    settings = (f"omikuji {version}, 3 trees, unbalanced 100-means, depth <= 3" if bonsai else
                f"omikuji {version} defaults: 3 trees, balanced 2-means, <= 100 labels a leaf")
    settings += f", {args.peer_transform} input" if args.peer_transform != "none" else ""
    save_top(folder, top, test.num_points)
    return {"train_seconds": train_seconds, "predict_seconds": predict_seconds,
            "num_test_points": test.num_points, "model_bytes": folder_bytes(folder / "model"),
            "settings": settings}


def run_plt(args: argparse.Namespace, folder: Path) -> dict:
    try:
        from napkinxc.models import PLT
    except ImportError as error:
        raise NotInstalled(f"napkinxc: {error}; pip install napkinxc") from None
    import scipy.sparse

    train, test = peer_inputs(args)

    def csr(matrix):
        return scipy.sparse.csr_matrix((matrix.values, matrix.indices, matrix.indptr),
                                       shape=(matrix.num_rows, matrix.num_cols))

    labels = [train.labels.indices[a:b].tolist()
              for a, b in zip(train.labels.indptr[:-1], train.labels.indptr[1:])]
    model = PLT(str(folder / "model"), seed=0)
    start = time.perf_counter()
    model.fit(csr(train.features), labels)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    top = model.predict(csr(test.features), top_k=TOP_K)
    predict_seconds = time.perf_counter() - start
    save_top(folder, top, test.num_points)
    return {"train_seconds": train_seconds, "predict_seconds": predict_seconds,
            "num_test_points": test.num_points, "model_bytes": folder_bytes(folder / "model"),
            "settings": f"napkinXC {metadata.version('napkinxc')} defaults: balanced 2-means tree, "
                        "<= 100 leaves a node, log loss"
                        + (f", {args.peer_transform} input" if args.peer_transform != "none" else "")}


def peer_inputs(args: argparse.Namespace):
    """The train and test data as the peers get them: rows transformed by ``--peer-transform``
    (tf-idf with the training set's idf), without JAX."""
    from mach_jax.data import transforms
    from mach_jax.data.csr import XCDataset
    from mach_jax.data.xc_format import read_xc

    train, test = read_xc(args.train), read_xc(args.test)
    if args.peer_transform == "none":
        return train, test
    idf = transforms.fit_idf(train.features) if transforms.uses_idf(args.peer_transform) else None
    return tuple(XCDataset(transforms.apply(data.features, args.peer_transform, idf), data.labels, data.source)
                 for data in (train, test))


def save_top(folder: Path, top: list[list[int]], num_points: int) -> None:
    """The top-k ids as int32 [N, k] in ``top.npy``, -1 where a method returned fewer than k."""
    ids = np.full((num_points, TOP_K), -1, np.int32)
    for n, row in enumerate(top):
        row = list(row)[:TOP_K]
        ids[n, :len(row)] = row
    np.save(folder / "top.npy", ids, allow_pickle=False)


def peer_metrics(ids, train, test, chunk: int = 4096) -> dict[str, float]:
    """P@k, nDCG@k, PSP@k of top-k ids exactly as mach_jax computes them (``metrics.metric_sums``).

    Computed in the parent, so that the peers' processes never load JAX. Args: ids int [N, k],
    -1 where missing (scored as id L, whose inverse propensity is set to 0: never a hit).
    """
    import jax

    from mach_jax.readout import metrics
    from mach_jax.data import known_datasets, prepare

    # The dataset's PSP@k convention, as mach_jax's own run resolves it.
    a, b, _ = known_datasets.propensity_for(train.source, train.num_features, train.num_labels)
    inv = metrics.inverse_propensity(prepare.label_counts(train), train.num_points, a, b)
    inv = np.append(inv, np.float32(0))
    ids = np.where(ids < 0, test.num_labels, ids).astype(np.int32)
    width = max(int(test.labels.row_nnz().max(initial=0)), 1)
    totals = None
    for start in range(0, test.num_points, chunk):
        rows = np.arange(start, min(start + chunk, test.num_points))
        label_ids = np.zeros((len(rows), width), np.int32)
        label_mask = np.zeros((len(rows), width), np.float32)
        for i, n in enumerate(rows):
            row = test.labels.indices[test.labels.indptr[n]:test.labels.indptr[n + 1]]
            label_ids[i, :len(row)], label_mask[i, :len(row)] = row, 1.0
        sums = jax.device_get(metrics.metric_sums(ids[rows], label_ids, label_mask,
                                                  np.ones(len(rows), np.float32), inv))
        totals = sums if totals is None else {key: totals[key] + sums[key] for key in totals}
    result = metrics.finalize(totals)
    return {key: result[key] for key in COLUMNS}


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_child(args: argparse.Namespace) -> int:
    """In the subprocess: runs one method, writes its result (or why it was skipped) as JSON."""
    folder = Path(args.workdir) / args.child
    result_file = folder / "result.json"
    try:
        if args.child.startswith("mach_jax"):
            result = run_mach_jax(args, folder)
        elif args.child in ("parabel", "bonsai"):
            result = run_omikuji(args, folder, bonsai=args.child == "bonsai")
        else:
            result = run_plt(args, folder)
    except NotInstalled as error:
        result_file.write_text(json.dumps({"skipped": f"not installed ({error})"}))
        return 0
    result_file.write_text(json.dumps({**result, "peak_rss_bytes": own_peak_rss()}))
    return 0


def own_peak_rss() -> int | None:
    """This process's peak RSS since it started (Linux ``VmHWM``), or None elsewhere.

    Preferred to ``ru_maxrss``: Linux starts a new program's ``ru_maxrss`` at the RSS of the
    process that spawned it, so a parent that had loaded JAX would inflate every method after it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---- the parent: one subprocess per method, then the table ----

def run_method(method: str, args: argparse.Namespace) -> dict:
    """Runs one method in a subprocess; its result with ``peak_rss_bytes``, or a skip/failure.

    A peer's metrics are added later by ``score_peers`` (loading JAX here would raise the
    ``ru_maxrss`` of every process started after it).
    """
    folder = Path(args.workdir) / method
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--train", args.train,
               "--test", args.test, "--preset", args.preset, "--workdir", str(args.workdir),
               "--seed", str(seed_of(method)), "--peer-transform", args.peer_transform,
               *[f"--override={item}" for item in args.override]]
    with open(folder / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage (where no VmHWM)
    process.returncode = os.waitstatus_to_exitcode(status)
    result_file = folder / "result.json"
    if process.returncode != 0 or not result_file.exists():
        lines = (folder / "log.txt").read_text(errors="replace").strip().splitlines()
        return {"failed": f"exit {process.returncode}: {lines[-1] if lines else 'no output'}"}
    result = json.loads(result_file.read_text())
    if result.get("peak_rss_bytes") is None:  # ru_maxrss is in KiB on Linux, in bytes on macOS
        result["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return result


def score_peers(results: dict[str, dict], args: argparse.Namespace) -> None:
    """Adds the metrics of every peer that ran, from its ``top.npy``."""
    peers = [m for m, result in results.items() if not m.startswith("mach_jax") and "train_seconds" in result]
    if not peers:
        return
    from mach_jax.data.xc_format import read_xc

    train, test = read_xc(args.train), read_xc(args.test)
    for method in peers:
        top = np.load(Path(args.workdir) / method / "top.npy", allow_pickle=False)
        results[method].update(peer_metrics(top, train, test))


def megabytes(count: float) -> str:
    return f"{count / 2**20:,.1f} MiB"


def seed_of(method: str) -> int:
    """``mach_jax@3`` -> 3; every other method (and plain ``mach_jax``) -> 0."""
    return int(method.partition("@")[2] or 0)


def name_of(method: str) -> str:
    base, _, seed = method.partition("@")
    return NAMES[base] + (f", seed {seed}" if seed else "")


def with_summary_rows(results: dict[str, dict]) -> dict[str, dict]:
    """Adds the members-alone row of each mach_jax run that re-ranked, and with several seeds
    their mean (metrics and train seconds averaged, the largest peak RSS)."""
    out = {}
    runs = [m for m in results if m.startswith("mach_jax") and "train_seconds" in results[m]]
    for method, result in results.items():
        out[method] = result
        alone = result.get("without_reranker")
        if alone:
            out[f"{method} (members alone)"] = {**{key: alone[key] for key in COLUMNS}, "settings":
                                                "the same run read out without its re-ranker"}
    if len(runs) > 1:
        mean = {key: float(np.mean([results[m][key] for m in runs])) for key in COLUMNS}
        mean.update(train_seconds=float(np.mean([results[m]["train_seconds"] for m in runs])),
                    predict_seconds=float(np.mean([results[m]["predict_seconds"] for m in runs])),
                    num_test_points=results[runs[0]]["num_test_points"],
                    model_bytes=results[runs[0]]["model_bytes"],
                    peak_rss_bytes=max(results[m]["peak_rss_bytes"] for m in runs),
                    settings=f"mean of seeds {', '.join(str(seed_of(m)) for m in runs)}")
        out["mach_jax mean"] = mean
    return out


def table(results: dict[str, dict]) -> str:
    """The Markdown table, one row per method (skipped and failed methods say so)."""
    header = ("| method | settings | " + " | ".join(COLUMNS)
              + " | train s | predict ms/point | model on disk | peak RSS |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for method, result in with_summary_rows(results).items():
        name = {"mach_jax mean": "**mach_jax (MACH), mean**"}.get(method) or (
            name_of(method.removesuffix(" (members alone)")) + (" members alone" if "alone" in method else ""))
        if "skipped" in result or "failed" in result:
            why = (result.get("skipped") or f"failed: {result['failed']}").replace("|", "\\|")
            lines.append(f"| {name} | {why} |" + " - |" * (len(COLUMNS) + 4))
            continue
        cells = [f"{100 * result[key]:.2f}" for key in COLUMNS]
        if "train_seconds" in result:
            cells += [f"{result['train_seconds']:.1f}",
                      f"{1000 * result['predict_seconds'] / result['num_test_points']:.3f}",
                      megabytes(result["model_bytes"]), megabytes(result["peak_rss_bytes"])]
        else:
            cells += ["-"] * 4
        lines.append(f"| {name} | {result['settings']} | " + " | ".join(cells) + " |")
    first = next((r for m, r in results.items() if m.startswith("mach_jax") and "param_bytes" in r), None)
    if first:
        lines += ["", ("mach_jax's checkpoint holds parameters and Adam moments; the parameters alone: "
                       f"{megabytes(first['param_bytes'])} (float32).")]
    return "\n".join(lines)


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="training file, XC format (plain or .gz)")
    parser.add_argument("--test", required=True, help="test file, XC format (plain or .gz)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="the mach_jax preset (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    parser.add_argument("--workdir", default="runs/compare", help="one folder per method goes here")
    parser.add_argument("--out", default=None, help="also write the Markdown table to this file")
    parser.add_argument("--seeds", default="0",
                        help="mach_jax's train.seed, comma-separated: one run each, and their mean (default: 0)")
    parser.add_argument("--peer-transform", default="none", choices=INPUT_TRANSFORMS,
                        help="rows as the peers get them (e.g. l2; default: the file's values)")
    parser.add_argument("--valid-frac", type=float, default=0.0,
                        help="train on the training file less this held-out share and score on it (as "
                             "mach_jax.train --valid-frac), instead of on the test file")
    parser.add_argument("--valid-seed", type=int, default=0, help="the validation split's seed (default: 0)")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="change one field of mach_jax's preset, e.g. model.num_repetitions=8 (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    if "mach_jax" in args.methods and seeds != [0]:
        at = args.methods.index("mach_jax")
        args.methods[at:at + 1] = [f"mach_jax@{seed}" for seed in seeds]
    return args


def split_for_validation(args: argparse.Namespace) -> None:
    """With ``--valid-frac``: every method trains on the training file less the validation split
    that ``mach_jax.train --valid-frac F --valid-seed S`` holds out, and is scored on that split
    (written to ``--workdir`` as XC files); the test file is not read."""
    from mach_jax.data import sources
    from mach_jax.data.xc_format import read_xc, write_xc

    train = read_xc(args.train)
    train_rows, valid_rows = sources.validation_split(train.num_points, args.valid_frac, args.valid_seed)
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    args.train, args.test = str(folder / "train_part.txt.gz"), str(folder / "valid_part.txt.gz")
    write_xc(args.train, train.take(train_rows))
    write_xc(args.test, train.take(valid_rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.child:
        return run_child(args)
    if args.valid_frac:
        split_for_validation(args)
    results = {}
    for method in args.methods:
        print(f"{method} ...", file=sys.stderr, flush=True)
        results[method] = run_method(method, args)
    score_peers(results, args)
    what = (f"{args.valid_frac:g} of the training file held out (seed {args.valid_seed})" if args.valid_frac
            else f"{Path(args.train).name} / {Path(args.test).name}")
    text = (f"{what} on {machine()}, "
            f"Python {platform.python_version()}\n\n{table(results)}")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    (Path(args.workdir) / "results.json").write_text(json.dumps(results, indent=2))
    return 1 if any("failed" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
