"""Benchmarks: one JSON object per line on stdout.

    python scripts/bench.py                      # parse + train + decode on the default preset
    python scripts/bench.py --preset tiny        # seconds, for a smoke run
    python scripts/bench.py --only parse

Records:
  parse   MB/s of the XC text reader (cold, no cache) and the cached reload time, on the preset's
          synthetic data written as a file, and on ../shared/data when present;
  train   compile time of the one jitted step (all R members), steady-state examples/s and
          step time (timed with block_until_ready after warm-up);
  decode  exact top-k queries/s of the count-min read-out (all L classes, chunked).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from mach_jax import get_preset, input_pipeline, mesh as mesh_lib, trainer
from mach_jax.ensemble import MachEnsemble
from mach_jax.synthetic import make_synthetic
from mach_jax.xc_format import read_xc, write_xc

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def emit(record: dict) -> None:
    record.update(backend=jax.default_backend(), devices=jax.device_count(), machine=platform.machine())
    print(json.dumps(record), flush=True)


def bench_parse(train, workdir: Path) -> None:
    files = [workdir / "synthetic_train.txt"]
    write_xc(files[0], train)
    if SHARED_DATA.is_dir():
        files += sorted(SHARED_DATA.glob("*/train.txt.gz"))
    for path in files:
        cache = workdir / "cache"
        start = time.perf_counter()
        dataset = read_xc(path, use_cache=False)
        cold = time.perf_counter() - start
        read_xc(path, cache_dir=cache)  # writes the cache
        start = time.perf_counter()
        read_xc(path, cache_dir=cache)
        cached = time.perf_counter() - start
        with open(path, "rb") as raw:
            head = raw.read(2)
        text_bytes = len(gzip.open(path).read()) if head == b"\x1f\x8b" else path.stat().st_size
        emit({"bench": "parse", "file": str(path.name if path.parent == workdir else path),
              "points": dataset.num_points, "text_mb": round(text_bytes / 1e6, 3),
              "parse_mb_per_s": round(text_bytes / 1e6 / cold, 1), "parse_s": round(cold, 4),
              "cached_load_s": round(cached, 4)})


def bench_train(config, train, steps: int) -> tuple:
    data, info = trainer.prepare_train_data(config, train)
    program = trainer.build_program(config, info)
    state = program.create_state()
    shape = input_pipeline.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
    batches = [input_pipeline.make_batch(data, rows, shape) for rows in np.array_split(
        np.arange(min(data.num_points, 8 * shape.batch_size)), 8)]
    batches = [mesh_lib.put(b, program.batch_sharding) for b in batches]
    start = time.perf_counter()
    state, metrics = program.train_step(state, batches[0], program.seeds)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for i in range(3):  # warm-up
        state, metrics = program.train_step(state, batches[i % 8], program.seeds)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = program.train_step(state, batches[i % 8], program.seeds)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    model = config.model
    emit({"bench": "train", "R": model.num_repetitions, "B": model.num_buckets,
          "hidden": list(model.hidden_sizes), "D": info.num_features, "L": info.num_labels,
          "K": info.max_nnz, "batch_size": shape.batch_size, "loss": config.train.loss,
          "first_step_s_incl_compile": round(compile_s, 3), "step_ms": round(1e3 * step_s, 2),
          "examples_per_s": round(shape.batch_size / step_s, 1)})
    return state["params"], info, data


def bench_decode(config, params, info, train, test, repeats: int) -> None:
    ensemble = MachEnsemble(config, info, params, trainer.label_counts(train))
    queries = test.features[:min(test.num_points, repeats * config.eval.eval_batch_size)]
    ensemble.predict(queries, k=5)  # compiles
    start = time.perf_counter()
    ensemble.predict(queries, k=5)
    elapsed = time.perf_counter() - start
    emit({"bench": "decode", "exact": True, "R": config.model.num_repetitions, "L": info.num_labels,
          "B": config.model.num_buckets, "batch_size": config.eval.eval_batch_size,
          "class_chunk": config.eval.class_chunk_size, "queries": queries.num_rows,
          "queries_per_s": round(queries.num_rows / elapsed, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--only", choices=("parse", "train", "decode"), default=None)
    parser.add_argument("--steps", type=int, default=20, help="timed train steps")
    parser.add_argument("--decode-batches", type=int, default=8, help="timed decode batches")
    args = parser.parse_args()
    config = get_preset(args.preset)
    train, test = make_synthetic(config.data.synthetic)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "parse"):
            bench_parse(train, Path(tmp))
        if args.only in (None, "train", "decode"):
            params, info, data = bench_train(config, train, args.steps)
            if args.only in (None, "decode"):
                bench_decode(config, params, info, data, test, args.decode_batches)


if __name__ == "__main__":
    main()
