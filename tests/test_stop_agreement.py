"""Every stop decision of a multi-process run is agreed (``core.agreement``): a NaN in one
process's batch, or a SIGTERM sent to one process, ends every process at the same step with the
same checkpoint, none left waiting at a collective. Two local processes of two CPU devices each,
started as ``tests/test_distributed`` starts them."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mach_jax.core import agreement

# process 1 poisons the feature values of its own batches from epoch 1 on (step 11 of the tiny run).
SCRIPT = """
import os, sys
import numpy as np
from mach_jax import cli
from mach_jax.data import batches
if os.environ.get("POISON_FROM_EPOCH") and "--process-id=1" in sys.argv:
    real, first = batches.train_batches, int(os.environ["POISON_FROM_EPOCH"])
    def poisoned(data, shape, seed, epoch, **kwargs):
        for batch in real(data, shape, seed, epoch, **kwargs):
            if epoch >= first:
                batch["feat_vals"] = np.full_like(batch["feat_vals"], np.nan)
            yield batch
    batches.train_batches = poisoned
from mach_jax.train import main
cli.run_cli(lambda: main(sys.argv[1:]))
"""


def start_two(tmp_path, *flags, env=None):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", MACH_JAX_CACHE_DIR=str(tmp_path / "cache"), **(env or {}),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    return [subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "--preset", "tiny", "--quiet", "--workdir", "multi", "--num-processes", "2",
         f"--process-id={index}", "--coordinator-address", f"127.0.0.1:{port}", *flags],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in (0, 1)]


def finish(processes, timeout=240):
    results = []
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail("a process was left waiting: the stop was not agreed")
        results.append((process.returncode, stderr.strip().splitlines()[-1]))
    return results


def steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_nan_in_one_process_batch_stops_both_at_the_same_step(tmp_path):
    results = finish(start_two(tmp_path, env={"POISON_FROM_EPOCH": "1"}))
    (code0, line0), (code1, line1) = results
    assert code0 == code1 == 2, results
    assert line1.startswith("error: non-finite loss at step 1") and "member(s)" in line1, line1
    assert line0.startswith("error: non-finite loss in another process's members (by step 15)"), line0
    assert steps(tmp_path / "multi") == [10]  # the last good checkpoint, nothing after it


def test_sigterm_to_one_process_stops_both_with_one_checkpoint(tmp_path):
    processes = start_two(tmp_path, "--epochs", "400")
    log = tmp_path / "multi" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (log.exists() and '"kind": "train"' in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    results = finish(processes)
    codes, lines = [code for code, _ in results], [line for _, line in results]
    assert codes == [128 + signal.SIGTERM] * 2, results
    assert lines[0] == lines[1] and lines[0].startswith("stopped: SIGTERM at step "), lines
    step = int(lines[0].split("at step ")[1].split(":")[0])
    assert step < 4000 and step in steps(tmp_path / "multi")


def test_on_one_process_agreement_is_the_value_itself_and_costs_nothing(monkeypatch):
    from jax.experimental import multihost_utils

    monkeypatch.setattr(multihost_utils, "process_allgather", lambda *a: pytest.fail("communicated"))
    assert agreement.agreed_max(15) == 15 and agreement.agreed_any(False) is False
    with pytest.raises(ValueError), agreement.failing_together("saving"):
        raise ValueError("its own error, as it was")
    assert np.int32(agreement.agreed_max(0)) == 0
