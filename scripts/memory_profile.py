"""Peak host memory of one training + evaluation run, phase by phase: one JSON object per line.

    python scripts/memory_profile.py --train data/train.txt.gz --test data/test.txt.gz \
        -R 16 -B 4000 --hidden 256 --epochs 1

Takes the flags of ``python -m mach_jax.train`` (its workdir defaults to a temporary folder, so
the run always starts from scratch) and runs ``experiment.train_and_evaluate`` in this process
while a thread reads the resident set size (VmRSS of /proc/self/status) every few milliseconds.
The library's phases are marked by wrapping its functions here, nothing in the library changes:
data load, data preparation, program build (and checkpoint lookup), state creation, the first
step (it compiles), the other steps, each checkpoint save (the state's host copy) and its
background write, and each evaluation.

Records:
  phase    one per phase, in order: its peak, start and end RSS (MiB) and seconds;
  summary  the machine, the state (parameters + optimiser moments), the bound 2.5 x state +
           600 MB, the resources estimate's peak (``training.resources.estimate``, which leaves
           out what the process held when it was made: ``rss_at_estimate_mib``, so the predicted
           peak RSS is their sum), the peak RSS (sampled, and the kernel's ``ru_maxrss``), the
           phase it was reached in, and whether it is within the bound.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import jax

from mach_jax import cli, experiment, hardware
from mach_jax import train as train_cli
from mach_jax.data import sources
from mach_jax.storage import checkpoints
from mach_jax.training import loop, resolve, resource_check, resources

MIB = 2**20
BOUND_FACTOR, BOUND_EXTRA = 2.5, 600 * 10**6  # the bound: 2.5 x state + 600 MB
SAMPLE_SECONDS = 0.005


def rss_bytes() -> int:
    """The process's resident set size now (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def host_ram_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        return int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) * 1024


class PhaseSampler:
    """A thread that samples RSS and keeps each phase's peak; ``mark(name)`` starts a phase."""

    def __init__(self):
        self.phases: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self.mark("start-up")
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._close(rss_bytes())

    def mark(self, name: str) -> None:
        now = rss_bytes()
        with self._lock:
            self._close(now)
            self.phases.append({"phase": name, "start": now, "peak": now, "end": now,
                                "began": time.perf_counter()})

    def _close(self, now: int) -> None:
        if self.phases:
            last = self.phases[-1]
            last["end"], last["peak"] = now, max(last["peak"], now)
            last.setdefault("seconds", time.perf_counter() - last["began"])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            now = rss_bytes()
            with self._lock:
                self.phases[-1]["peak"] = max(self.phases[-1]["peak"], now)


def instrument(sampler: PhaseSampler, found: dict) -> None:
    """Wraps the library's phase functions so that each marks its phase (in this process only)."""
    def marked(name, function, after=None):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            sampler.mark(name)
            result = function(*args, **kwargs)
            if after:
                sampler.mark(after)
            return result
        return wrapper

    sources.load_train_eval = marked("data load", sources.load_train_eval)
    original_require = resource_check.require_fits

    def require_fits(config, shape, *args, **kwargs):
        found["rss_at_check"] = rss_bytes()  # what the process held already: not in the estimate
        found["estimate"] = original_require(config, shape, *args, **kwargs)
        found["rules"] = resources.describe_rules(config, shape)
        return found["estimate"]
    resource_check.require_fits = require_fits
    resolve.prepare_train_data = marked("data preparation", resolve.prepare_train_data)
    original_build = loop.build_program

    def build_program(*args, **kwargs):
        sampler.mark("program build, checkpoint lookup")
        program = original_build(*args, **kwargs)
        found["abstract_state"] = program.abstract_state
        calls = [0]

        def train_step(*step_args, **step_kwargs):
            calls[0] += 1
            if calls[0] <= 2 or sampler.phases[-1]["phase"] not in ("first step (compiles)", "steps"):
                sampler.mark("first step (compiles)" if calls[0] == 1 else "steps")
            return program.train_step(*step_args, **step_kwargs)
        return dataclasses.replace(program, create_state=marked("state creation", program.create_state),
                                   train_step=train_step)
    loop.build_program = build_program
    checkpoints.save_state = marked("checkpoint save (host copy)", checkpoints.save_state,
                                    after="checkpoint write (background)")
    original_evaluator = experiment.evaluator

    def evaluator(*args, **kwargs):
        bind = original_evaluator(*args, **kwargs)

        def bound(*bind_args):
            return marked("evaluation", bind(*bind_args), after="after evaluation")
        return bound
    experiment.evaluator = evaluator


def state_bytes(abstract_state) -> tuple[int, int]:
    """(parameters, parameters + optimiser moments) bytes of the training state."""
    def size(tree) -> int:
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    return size(abstract_state["params"]), size(abstract_state)


def emit(record: dict) -> None:
    record.update(backend=jax.default_backend(), device=jax.devices()[0].device_kind, cpu=hardware.cpu_model(),
                  cpus=os.cpu_count(), host_ram_gib=round(host_ram_bytes() / 2**30, 1), machine=platform.machine())
    print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = train_cli.parse_arguments(argv)
    config = cli.config_from_args(args).validate()
    found: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir) if args.workdir else Path(scratch) / "run"
        with PhaseSampler() as sampler:
            instrument(sampler, found)
            metrics = experiment.train_and_evaluate(config, workdir, progress=not args.quiet)
            sampler.mark("end")
    for phase in sampler.phases:
        emit({"record": "phase", "phase": phase["phase"], "peak_rss_mib": round(phase["peak"] / MIB, 1),
              "start_rss_mib": round(phase["start"] / MIB, 1), "end_rss_mib": round(phase["end"] / MIB, 1),
              "seconds": round(phase["seconds"], 2)})
    params, state = state_bytes(found["abstract_state"])
    bound = BOUND_FACTOR * state + BOUND_EXTRA
    peak = max(sampler.phases, key=lambda p: p["peak"])
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = found.get("estimate")
    emit({"record": "summary", "params_mib": round(params / MIB, 1), "state_mib": round(state / MIB, 1),
          "bound_mib": round(bound / MIB, 1), "estimate_mib": round(estimate.total() / MIB, 1) if estimate else None,
          "estimate_phase": estimate.phase if estimate else None,
          "rss_at_estimate_mib": round(found.get("rss_at_check", 0) / MIB, 1),
          "peak_rss_mib": round(peak["peak"] / MIB, 1), "peak_phase": peak["phase"],
          "max_rss_mib": round(max_rss / MIB, 1), "within_bound": max(max_rss, peak["peak"]) <= bound,
          "rules": found.get("rules"), "P@1": metrics.get("P@1"),
          "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
