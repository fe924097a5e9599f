"""Short runs of the real-data presets on ../shared/data (skipped when the data is absent).

Each runs ``python -m mach_jax.train`` in its own process with XLA's default optimisation level,
as users run it (the rest of the suite compiles at level 0: see conftest.py).
"""

import json
import os
import subprocess
import sys

import pytest

# (preset, a P@1 floor, epochs run here). Delicious gets there in 3 epochs, which keeps CI short;
# the bibtex and corel5k presets (sigmoid, B = 128) need their full 10. Corel5k's floor is
# omikuji Parabel's test P@1 on the same files (36.8, docs/experiments.md "Comparison").
CASES = [("bibtex", 0.60, 10), ("delicious", 0.64, 3), ("corel5k", 0.37, 10)]


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
