"""Short runs of the real-data presets on ../shared/data (skipped when the data is absent).

Each runs ``python -m mach_jax.train`` in its own process with XLA's default optimisation level,
as users run it (the rest of the suite compiles at level 0: see conftest.py), and glibc's
allocator set to reuse freed memory (``REUSE_FREED_MEMORY``: faster, the same results).
"""

import json
import os
import subprocess
import sys

import pytest

# (preset, a P@1 floor, epochs run here: the first of the preset's 10, as its learning rate is
# constant). The fewest epochs whose P@1 on a 0.2 validation split of the training file clears
# the floor by 3 points or more (docs/experiments.md "Where the suite's remaining time goes"):
# bibtex 0.642 after 7, delicious 0.676 after 2; corel5k, 0.389 after 9, never does, so it runs
# all 10. Corel5k's floor is omikuji Parabel's test P@1 on the same files (36.8,
# docs/experiments.md "Comparison").
CASES = [("bibtex", 0.60, 7), ("delicious", 0.64, 2), ("corel5k", 0.37, 10)]



@pytest.mark.parametrize("name, min_p_at_1, epochs", CASES)
def test_preset_reaches_the_target_precision(tmp_path, shared_data, name, min_p_at_1, epochs):
    folder = shared_data / name
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env["MACH_JAX_CACHE_DIR"] = str(tmp_path / "cache")
    # One checkpoint, at the end, instead of one per epoch: the same parameters (resumes are exact,
    # tested elsewhere) without nine saves of the state (bibtex: 96 s -> 81 s alone on 2 cores).
    command = [sys.executable, "-m", "mach_jax.train", "--preset", name, "--quiet", "--epochs", str(epochs),
               "--train", str(folder / "train.txt.gz"), "--test", str(folder / "test.txt.gz"),
               "--workdir", str(tmp_path / "run"), "--checkpoint-every-steps", "1000000"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["P@1"] >= min_p_at_1
    assert metrics["P@1"] >= metrics["P@3"] >= metrics["P@5"] > 0
