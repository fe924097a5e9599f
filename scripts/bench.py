"""Benchmarks: one JSON object per line on stdout, each with the hardware it ran on.

    python scripts/bench.py                              # the CPU preset: under a minute on 2 cores
    python scripts/bench.py --preset amazon670k --scale 0.1
    python scripts/bench.py --only train                 # parse | train | pipeline | decode | host_loader
    python scripts/bench.py --only approx --decode-labels 10000000 --decode-buckets 32768
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/bench.py --only steps

Records:
  parse     MB/s of the XC text reader (cold) and the cached reload time;
  train     per embedding update ("dense" Adam, the baseline, and "lazy" row-sparse Adam): compile
            time, device step time with pre-staged batches, examples/s, XLA's FLOP count of the
            step and the achieved FLOP/s next to a plain dense matmul's (the roofline ratio), all
            of the kernel form "auto" picks here ("kernel_forms"), and "forms": the step_ms of
            both forms, "loop" and "batched" (``core.backend.batched_forms``); then the lazy/dense
            speed-up;
  pipeline  host time to build and transfer one batch, the step time fed by the background
            prefetcher, and its ratio to the device compute alone;
  host_loader  host batches/s at batch 1,024 on Amazon-670K-shaped rows (D = 135,909, L = 670,091,
            about 75 features and 5.45 labels a point; --host-points rows): our prefetch thread
            (data.host_loader = "thread") and Grain with 1, 2 and 4 threads ("grain"), each fed
            through the trainer's Prefetcher with no device transfer (docs/host_loader.md);
  decode    exact top-k: queries/s of the on-device chunked decoder and of the straightforward
            numpy baseline (a loop over R adding probs[r][:, lookup[r]] into [N, L], then
            argpartition), their ratio, and the decoder's compiled peak memory, of the kernel form
            "auto" picks here ("kernel_forms"), and "forms": the queries/s of both forms;
  approx    (only with --only approx) approximate decoding from the top-m buckets against the exact
            decoder on structured synthetic scores (each query has 5 true classes whose buckets
            stand out in every member): queries/s of both, the speed-up, recall of the exact
            top-5, the inverse index's size and the decoder's compiled peak memory, per m;
  memory    peak host RSS (and device memory where the backend reports it);
  steps     (only with --only steps) the train step of a mach_jax preset on the current mesh.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.readout import approx_decode, decode
from mach_jax.training import lazy_caps, updates
from mach_jax.training.program import build_program
from mach_jax.data import prepare
from mach_jax.core import backend, hashing, mesh as mesh_lib
from mach_jax.data import batches as input_pipeline
from mach_jax.data import grain_batches
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.config import Config
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BenchPreset:
    """Sizes of one benchmark: the train step's data and model, and the decoder's."""

    num_features: int
    num_labels: int
    num_buckets: int
    num_repetitions: int
    hidden: int
    batch_size: int
    mean_labels: float
    signature_features: int
    noise_features: int
    decode_labels: int
    decode_repetitions: int
    decode_buckets: int
    decode_batch: int
    train_points: int = 4_096

    def scaled(self, scale: float) -> "BenchPreset":
        def shrink(value: int, floor: int) -> int:
            return max(floor, int(round(value * scale)))

        return dataclasses.replace(
            self, num_features=shrink(self.num_features, 1_000), num_labels=shrink(self.num_labels, 1_000),
            num_buckets=shrink(self.num_buckets, 64), decode_labels=shrink(self.decode_labels, 1_000),
            decode_buckets=shrink(self.decode_buckets, 64))


PRESETS = {
    # The CPU acceptance sizes: training at D = 100,000, H = 256, R = 8 (about 75 nonzeros
    # and 5.5 labels per point, as Amazon-670K); decoding at L = 670,091, R = 16, B = 4,096.
    "cpu": BenchPreset(num_features=100_000, num_labels=50_000, num_buckets=1_000, num_repetitions=8,
                       hidden=256, batch_size=256, mean_labels=5.5, signature_features=10,
                       noise_features=36, decode_labels=670_091, decode_repetitions=16,
                       decode_buckets=4_096, decode_batch=64),
    # Amazon-670K's shape (D = 135,909, L = 670,091) with the reference code's model (B = 10,000,
    # R = 32, hidden 500): for GPUs and TPUs, or --scale it down for a CPU.
    "amazon670k": BenchPreset(num_features=135_909, num_labels=670_091, num_buckets=10_000,
                              num_repetitions=32, hidden=500, batch_size=256, mean_labels=5.5,
                              signature_features=10, noise_features=36, decode_labels=670_091,
                              decode_repetitions=32, decode_buckets=10_000, decode_batch=64),
}


def emit(record: dict) -> None:
    device = jax.devices()[0]
    record.update(backend=jax.default_backend(), device=device.device_kind, devices=jax.device_count(),
                  machine=platform.machine(), cpus=os.cpu_count())
    print(json.dumps(record), flush=True)


def timed(fn, *args, repeats: int = 1):
    """Best wall time of ``repeats`` calls of fn(*args), results blocked on."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def make_config(preset: BenchPreset, embedding_update: str, embedding_optimizer: str = "adam") -> Config:
    return Config().replace(
        data={"synthetic": {"num_labels": preset.num_labels, "num_features": preset.num_features,
                            "num_train": preset.train_points, "num_test": 256,
                            "mean_labels_per_point": preset.mean_labels,
                            "signature_features": preset.signature_features,
                            "noise_features": preset.noise_features}},
        model={"num_repetitions": preset.num_repetitions, "num_buckets": preset.num_buckets,
               "hidden_sizes": [preset.hidden], "input_layer": "sparse"},
        train={"batch_size": preset.batch_size, "embedding_update": embedding_update,
               "embedding_optimizer": embedding_optimizer})


def bench_parse(train, workdir: Path) -> None:
    path = workdir / "train.txt"
    write_xc(path, train)
    start = time.perf_counter()
    read_xc(path, use_cache=False)
    cold = time.perf_counter() - start
    read_xc(path, cache_dir=workdir / "cache")
    start = time.perf_counter()
    read_xc(path, cache_dir=workdir / "cache")
    cached = time.perf_counter() - start
    size = path.stat().st_size
    emit({"bench": "parse", "points": train.num_points, "text_mb": round(size / 1e6, 2),
          "parse_mb_per_s": round(size / 1e6 / cold, 1), "cached_load_s": round(cached, 4)})


def matmul_flops_per_s(preset: BenchPreset) -> float:
    """FLOP/s of a plain float32 matmul of the step's largest layer: [N, H] x [H, R * B]."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((preset.batch_size, preset.hidden)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((preset.hidden, preset.num_repetitions * preset.num_buckets)),
                    jnp.float32)
    matmul = jax.jit(jnp.dot)
    seconds = timed(matmul, a, b, repeats=5)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds


def staged_program(config: Config, train, num_batches: int = 4):
    """The trainer's program for a config, a fresh state and a few batches already on device.

    Returns:
      ``(program, state, batches, info, host_batches)``; ``host_batches(epoch, count)`` yields
      that many ``(host batch, train step)`` pairs of the epoch (epoch 0 or 1), each batch with the
      step the trainer runs it with (routed by ``lazy_caps.CapRouter``, as ``training.updates`` does).
    """
    data, info = prepare.prepare_train_data(config, train)
    program = build_program(config, info, data)
    shape = input_pipeline.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
    steps_per_epoch = input_pipeline.num_batches(data.num_points, shape.batch_size)
    router = (lazy_caps.CapRouter(data.features, shape.batch_size, config.train.seed, program.batch_caps, 2)
              if program.batch_caps else None)

    def host_batches(epoch: int, count: int):
        for index, batch in zip(range(count), input_pipeline.train_batches(data, shape, config.train.seed, epoch)):
            fits = router is None or router.fits(epoch * steps_per_epoch + index)
            yield batch, program.train_step if fits else program.uncapped_train_step

    batches = []
    for batch, train_step in host_batches(0, num_batches):
        # Epoch 0's batches are within the lazy step's caps (they were measured on it).
        assert train_step is program.train_step
        batches.append(mesh_lib.put(batch, program.batch_sharding))
    return program, program.create_state(), batches, info, host_batches


def time_steps(program, state, batches, steps: int):
    """Seconds per step over ``steps`` steps after one warm-up step; returns (seconds, state)."""
    state, metrics = program.train_step(state, batches[0], program.seeds)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = program.train_step(state, batches[i % len(batches)], program.seeds)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, state


def time_train_step(config: Config, train, steps: int, batched: bool, padded: bool = False):
    """``(compile_s, flops, seconds per step, info)`` of the config's train step in one kernel form;
    ``padded``: its uncapped step, whose gathered bag covers the N x K padded slots rather than the
    T nonzero entries (every step's bag before #14)."""
    config = config.replace(model={"kernel_forms": backend.describe_forms(batched)})
    program, state, batches, info, _ = staged_program(config, train)
    if padded:
        program = dataclasses.replace(program, train_step=program.uncapped_train_step)
    start = time.perf_counter()
    compiled = program.train_step.lower(state, batches[0], program.seeds).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    seconds, _ = time_steps(program, state, batches, steps)
    return compile_s, flops, seconds, info


def bench_train(preset: BenchPreset, train, steps: int) -> dict[str, float]:
    step_ms = {}
    roofline = matmul_flops_per_s(preset)
    chosen = backend.batched_forms()  # what "auto" picks on this backend
    for update, optimizer in (("dense", "adam"), ("lazy", "adam"), ("lazy", "rowwise_adagrad")):
        config = make_config(preset, update, optimizer)
        compile_s, flops, seconds, info = time_train_step(config, train, steps, chosen)
        other_seconds = time_train_step(config, train, steps, not chosen)[2]
        step_ms[update, optimizer] = 1e3 * seconds
        forms = {backend.describe_forms(chosen): round(1e3 * seconds, 2),
                 backend.describe_forms(not chosen): round(1e3 * other_seconds, 2)}
        bag = {}
        if update == "dense":  # the dense baseline's bag over the entries, and over the padded slots
            step_ms["dense_padded"] = 1e3 * time_train_step(config, train, steps, chosen, padded=True)[2]
            bag = {"bag": {"entries": round(1e3 * seconds, 2), "padded": round(step_ms["dense_padded"], 2)}}
        emit({"bench": "train", "embedding_update": update, "embedding_optimizer": optimizer,
              "D": info.num_features, "L": info.num_labels,
              "R": preset.num_repetitions, "B": preset.num_buckets, "H": preset.hidden,
              "K": info.max_nnz, "batch_size": preset.batch_size, "compile_s": round(compile_s, 2),
              "step_ms": round(1e3 * seconds, 2), "examples_per_s": round(preset.batch_size / seconds, 1),
              "step_gflop": round(flops / 1e9, 3), "achieved_gflop_per_s": round(flops / seconds / 1e9, 2),
              "matmul_gflop_per_s": round(roofline / 1e9, 2),
              "roofline_ratio": round(flops / seconds / roofline, 3),
              "kernel_forms": backend.describe_forms(chosen),
              "forms": {"loop": forms["loop"], "batched": forms["batched"]}, **bag})
    dense, padded = step_ms["dense", "adam"], step_ms["dense_padded"]
    emit({"bench": "train_speedup", "lazy_adam_over_dense_adam": round(dense / step_ms["lazy", "adam"], 2),
          "lazy_rowwise_adagrad_over_dense_adam": round(dense / step_ms["lazy", "rowwise_adagrad"], 2),
          "over_dense_adam_with_the_padded_bag": {
              "lazy_adam": round(padded / step_ms["lazy", "adam"], 2),
              "lazy_rowwise_adagrad": round(padded / step_ms["lazy", "rowwise_adagrad"], 2)}})
    return step_ms


def bench_pipeline(preset: BenchPreset, train, steps: int) -> None:
    program, state, staged, _, host_batches = staged_program(make_config(preset, "auto"), train, steps)
    def place(item):  # as the trainer's prefetch thread does: transfer (the step is routed already)
        batch, train_step = item
        return mesh_lib.put(batch, program.batch_sharding), train_step

    start = time.perf_counter()
    for item in host_batches(0, steps):
        jax.block_until_ready(place(item)[0])
    host_ms = 1e3 * (time.perf_counter() - start) / steps
    compute_s, state = time_steps(program, state, staged, steps)
    start = time.perf_counter()
    with input_pipeline.Prefetcher(host_batches(1, steps), place) as prefetched:
        for batch, train_step in prefetched:
            state, metrics = train_step(state, batch, program.seeds)
    jax.block_until_ready((state, metrics))
    fed_ms = 1e3 * (time.perf_counter() - start) / steps
    compute_ms = 1e3 * compute_s
    emit({"bench": "pipeline", "embedding_update": "lazy" if program.spec.lazy_embedding else "dense",
          "host_input_ms_per_batch": round(host_ms, 2), "device_compute_ms": round(compute_ms, 2),
          "prefetched_step_ms": round(fed_ms, 2), "prefetched_over_compute": round(fed_ms / compute_ms, 3)})


def amazon_shaped_rows(num_points: int, seed: int = 0) -> XCDataset:
    """Random rows shaped as Amazon-670K's: features [N, 135,909] (Poisson, mean 75 a point, at
    least 1) and labels [N, 670,091] (Poisson, mean 5.45, at least 1)."""
    rng = np.random.default_rng(seed)

    def rows(mean: float, num_cols: int, values: bool) -> CsrMatrix:
        counts = np.maximum(1, rng.poisson(mean, num_points))
        indptr = np.concatenate([[0], np.cumsum(counts)])
        nnz = int(indptr[-1])
        vals = rng.random(nnz, dtype=np.float32) + 0.01 if values else np.ones(nnz, np.float32)
        return CsrMatrix(indptr, rng.integers(0, num_cols, nnz), vals, num_cols)

    return XCDataset(rows(75.0, 135_909, True), rows(5.45, 670_091, False), "amazon670k-shaped")


def bench_host_loader(num_points: int, batch_size: int = 1_024, epochs: int = 2, repeats: int = 5) -> None:
    """Host batches/s of each loader: items through the trainer's Prefetcher, no device transfer."""
    data = amazon_shaped_rows(num_points)
    shape = input_pipeline.BatchShape(batch_size, input_pipeline.widest_row(data.features),
                                      input_pipeline.widest_row(data.labels))
    steps_per_epoch = input_pipeline.num_batches(num_points, batch_size)
    args = (data, shape, 0, 0, steps_per_epoch, epochs)

    loaders = [("thread", 1, functools.partial(updates.host_batches, *args))] + [
        ("grain", threads, functools.partial(grain_batches.grain_batches, *args, num_threads=threads))
        for threads in (1, 2, 4)]
    best = {}
    for _ in range(repeats):  # the loaders in turn, so that a busy moment of the machine hits all
        for loader, threads, make_items in loaders:
            try:
                start = time.perf_counter()
                items = make_items()
                with input_pipeline.Prefetcher(items, lambda item: item) as prefetched:
                    count = sum(1 for _ in prefetched)
                seconds = time.perf_counter() - start
                getattr(items, "close", lambda: None)()
            except ConfigError as error:  # Grain is not installed
                best[loader, threads] = str(error)
                continue
            best[loader, threads] = min(best.get((loader, threads), float("inf")), seconds)
    thread_rate = count / best["thread", 1]
    for (loader, threads), seconds in best.items():
        if isinstance(seconds, str):
            emit({"bench": "host_loader", "loader": loader, "threads": threads, "error": seconds})
            continue
        rate = count / seconds
        emit({"bench": "host_loader", "loader": loader, "threads": threads, "batch_size": batch_size,
              "points": num_points, "D": data.features.num_cols, "L": data.labels.num_cols,
              "K": shape.max_nnz, "M": shape.max_labels,
              "mean_nnz": round(data.features.indptr[-1] / num_points, 2),
              "mean_labels": round(data.labels.indptr[-1] / num_points, 2), "batches": count,
              "batches_per_s": round(rate, 1), "ms_per_batch": round(1e3 / rate, 2),
              "over_thread": round(rate / thread_rate, 3)})


def numpy_decode(probs: np.ndarray, lookup: np.ndarray, k: int) -> np.ndarray:
    """The straightforward baseline: dense [N, L] scores, summed over R, then argpartition."""
    scores = np.zeros((probs.shape[1], lookup.shape[1]), np.float32)
    for r in range(lookup.shape[0]):
        scores += probs[r][:, lookup[r]]
    return np.argpartition(-scores, k, axis=1)[:, :k]


def bench_decode(preset: BenchPreset, chunk_size: int) -> None:
    rng = np.random.default_rng(0)
    num_reps, num_labels, num_buckets, batch = (preset.decode_repetitions, preset.decode_labels,
                                                preset.decode_buckets, preset.decode_batch)
    probs = rng.dirichlet(np.ones(num_buckets), size=(num_reps, batch)).astype(np.float32)
    seeds = hashing.repetition_seeds(0, num_reps)
    lookup = hashing.hash_to_range(np.arange(num_labels, dtype=np.uint32), seeds, num_buckets)  # [R, L]
    baseline_s = timed(numpy_decode, probs, lookup, 5)
    del lookup
    device_probs, device_seeds = jnp.asarray(probs), jnp.asarray(seeds)
    chosen = backend.batched_forms()  # what "auto" picks on this backend
    forms_s = {}
    for batched in (chosen, not chosen):
        decoder = jax.jit(functools.partial(decode.decode_topk, num_labels=num_labels, k=5,
                                            chunk_size=chunk_size, batched=batched))
        if batched == chosen:
            peak_mib = compiled_peak_mib(decoder, device_probs, device_seeds)
        forms_s[backend.describe_forms(batched)] = timed(decoder, device_probs, device_seeds, repeats=3)
    ours_s = forms_s[backend.describe_forms(chosen)]
    emit({"bench": "decode", "L": num_labels, "R": num_reps, "B": num_buckets, "batch": batch,
          "class_chunk": chunk_size, "queries_per_s": round(batch / ours_s, 1),
          "numpy_queries_per_s": round(batch / baseline_s, 2), "speedup_over_numpy": round(baseline_s / ours_s, 1),
          "decoder_peak_mib": peak_mib, "numpy_scores_mib": round(batch * num_labels * 4 / 2**20, 1),
          "kernel_forms": backend.describe_forms(chosen),
          "forms": {form: round(batch / forms_s[form], 1) for form in ("loop", "batched")}})


def structured_scores(num_reps: int, batch: int, num_buckets: int, num_labels: int, seed: int = 0):
    """Softmax bucket scores [R, N, B] in which 5 true classes per query stand out (plus noise)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_labels, (batch, 5))
    logits = rng.normal(size=(num_reps, batch, num_buckets)).astype(np.float32)
    buckets = hashing.hash_to_range(truth, hashing.repetition_seeds(0, num_reps), num_buckets)  # [R, N, 5]
    for rank in range(5):
        np.add.at(logits, (np.arange(num_reps)[:, None], np.arange(batch)[None, :], buckets[..., rank]),
                  4.0 - 0.3 * rank)
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def compiled_peak_mib(jitted, *args) -> float | None:
    memory = jitted.lower(*args).compile().memory_analysis()
    if memory is None:
        return None
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    return round(peak / 2**20, 1)


def bench_approx(preset: BenchPreset, chunk_size: int, top_buckets: list[int]) -> None:
    num_reps, num_labels, num_buckets, batch = (preset.decode_repetitions, preset.decode_labels,
                                                preset.decode_buckets, preset.decode_batch)
    seeds = hashing.repetition_seeds(0, num_reps)
    probs = jnp.asarray(structured_scores(num_reps, batch, num_buckets, num_labels))
    device_seeds = jnp.asarray(seeds)
    exact = jax.jit(functools.partial(decode.decode_topk, num_labels=num_labels, k=5, chunk_size=chunk_size))
    exact_ids = np.asarray(exact(probs, device_seeds)[1])
    exact_s = timed(exact, probs, device_seeds, repeats=2)
    start = time.perf_counter()
    host_index, shape = approx_decode.build_inverse_index(seeds, num_labels, num_buckets)
    build_s = time.perf_counter() - start
    index = jax.tree.map(jnp.asarray, host_index)
    del host_index
    exact_peak_mib = compiled_peak_mib(exact, probs, device_seeds)
    for m in top_buckets:
        approx = jax.jit(functools.partial(approx_decode.approx_decode_topk, k=5, top_buckets=m,
                                           bucket_cap=shape.bucket_cap))
        ids = np.asarray(approx(probs, device_seeds, index)[1])
        approx_s = timed(approx, probs, device_seeds, index, repeats=3)
        recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(ids.tolist(), exact_ids.tolist())])
        emit({"bench": "approx", "L": num_labels, "R": num_reps, "B": num_buckets, "batch": batch,
              "top_buckets": m, "bucket_cap": shape.bucket_cap,
              "candidate_slots": num_reps * m * shape.bucket_cap, "recall_of_exact_top5": round(float(recall), 4),
              "queries_per_s": round(batch / approx_s, 1), "exact_queries_per_s": round(batch / exact_s, 2),
              "speedup_over_exact": round(exact_s / approx_s, 1), "index_build_s": round(build_s, 2),
              "index_mib": round(sum(a.nbytes for a in jax.tree.leaves(index)) / 2**20, 1),
              "decoder_peak_mib": compiled_peak_mib(approx, probs, device_seeds, index),
              "exact_decoder_peak_mib": exact_peak_mib})


def bench_memory() -> None:
    stats = jax.devices()[0].memory_stats() or {}
    emit({"bench": "memory", "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "peak_device_mib": round(stats["peak_bytes_in_use"] / 2**20, 1) if "peak_bytes_in_use" in stats else None})


def bench_steps(preset_name: str, steps: int) -> None:
    """Step time of a mach_jax preset's own train step (its auto settings), e.g. for scaling runs."""
    from mach_jax import get_preset

    config = get_preset(preset_name)
    program, state, batches, _, _ = staged_program(config, make_synthetic(config.data.synthetic)[0])
    seconds, _ = time_steps(program, state, batches, steps)
    emit({"bench": "steps", "config_preset": preset_name, "R": config.model.num_repetitions,
          "mesh": dict(program.mesh.shape), "step_ms": round(1e3 * seconds, 2),
          "examples_per_s": round(config.train.batch_size / seconds, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--scale", type=float, default=1.0, help="shrink D, L and B by this factor")
    parser.add_argument("--only", choices=("parse", "train", "pipeline", "host_loader", "decode", "steps",
                                           "approx"), default=None)
    parser.add_argument("--host-points", type=int, default=32_768,
                        help="with host_loader: the Amazon-670K-shaped rows synthesized")
    parser.add_argument("--decode-labels", type=int, default=None, help="L of the decode benchmarks")
    parser.add_argument("--decode-buckets", type=int, default=None, help="B of the decode benchmarks")
    parser.add_argument("--top-buckets", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="with --only approx: the m values to measure")
    parser.add_argument("--config-preset", default="default",
                        help="with --only steps: the mach_jax preset whose train step is timed")
    parser.add_argument("--steps", type=int, default=4, help="timed train steps")
    parser.add_argument("--class-chunk", type=int, default=8_192, help="classes per decoder chunk")
    args = parser.parse_args()
    preset = PRESETS[args.preset].scaled(args.scale)
    preset = dataclasses.replace(preset, decode_labels=args.decode_labels or preset.decode_labels,
                                 decode_buckets=args.decode_buckets or preset.decode_buckets)
    if args.only == "steps":
        bench_steps(args.config_preset, 4 * args.steps)
        return
    if args.only == "approx":
        bench_approx(preset, args.class_chunk, args.top_buckets)
        bench_memory()
        return
    wanted = lambda name: args.only in (None, name)  # noqa: E731
    if wanted("parse") or wanted("train") or wanted("pipeline"):
        train, _ = make_synthetic(make_config(preset, "auto").data.synthetic)
    if wanted("parse"):
        with tempfile.TemporaryDirectory() as tmp:
            bench_parse(train, Path(tmp))
    if wanted("train"):
        bench_train(preset, train, args.steps)
    if wanted("pipeline"):
        bench_pipeline(preset, train, args.steps)
    if wanted("host_loader"):
        bench_host_loader(args.host_points)
    if wanted("decode"):
        bench_decode(preset, args.class_chunk)
    bench_memory()


if __name__ == "__main__":
    main()
