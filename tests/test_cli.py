"""Round trips through the real commands: train -> checkpoint -> restore -> evaluate.

The commands run in-process through their real entry and error path (``support.run_in_process``);
the process boundary itself (``python -m``, exit status, no traceback) is checked in a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest

from support import run_in_process as run, write_tiny_files

TINY = ["--preset", "tiny", "--quiet"]


def run_process(module, *args, cwd, check=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MACH_JAX_CACHE_DIR=str(cwd / "cache"))
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run on files, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    write_tiny_files(root, "test.txt.gz")
    result = run("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt.gz",
                 "--workdir", "work", cwd=root)
    return root, result


def test_train_prints_precision_and_writes_the_workdir(trained):
    root, result = trained
    for name in ("P@1", "P@3", "P@5"):
        assert name in result.stdout
    work = root / "work"
    assert (work / "config.json").exists() and (work / "label_counts.npy").exists()
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 2 * 10  # tiny: 2 epochs of ceil(600 / 64) = 10 steps
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["num_points"] == 200 and 0 < metrics["P@1"] <= 1


def test_evaluate_restores_and_reproduces_the_training_metrics(trained):
    root, _ = trained
    before = json.loads((root / "work" / "metrics.json").read_text())
    result = run("mach_jax.evaluate", "--workdir", "work", "--test", "test.txt.gz", "--quiet", cwd=root)
    after = json.loads((root / "work" / "eval-exact.json").read_text())  # beside metrics.json
    assert "P@5" in result.stdout
    for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
        assert after[key] == pytest.approx(before[key], abs=1e-6), key


def test_evaluate_with_fewer_repetitions_and_logit_aggregation(trained):
    root, _ = trained
    run("mach_jax.evaluate", "--workdir", "work", "--quiet", "--eval-reps", "2", "--aggregation", "logit",
        cwd=root)
    metrics = json.loads((root / "work" / "eval-exact.json").read_text())
    assert metrics["num_repetitions"] == 2 and metrics["aggregation"] == "logit"


def test_rerunning_the_same_command_resumes_instead_of_retraining(trained):
    root, _ = trained
    result = run("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt.gz",
                 "--workdir", "work", cwd=root)
    assert "resuming from the checkpoint at step 20" in result.stderr


def test_an_incompatible_rerun_is_refused_with_a_clear_message(trained):
    root, _ = trained
    result = run("mach_jax.train", *TINY, "--train", "train.txt", "--test", "test.txt.gz",
                 "--workdir", "work", "-B", "16", cwd=root, check=False)
    assert result.returncode == 2
    assert "model.num_buckets=32" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_file_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_text("2 5 3\n0,1 0:1.0 3:2\n2 9:1\n")
    result = run("mach_jax.train", *TINY, "--train", "bad.txt", "--test", "bad.txt", "--workdir", "w",
                 cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.txt:3" in result.stderr


def test_bad_flag_value_is_refused_before_training(tmp_path):
    result = run_process("mach_jax.train", *TINY, "-B", "1", "--workdir", "w", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "model.num_buckets=1" in result.stderr
    assert not (tmp_path / "w").exists()
