"""Crashes, interruptions, divergence and mismatches: never lost work, never silent wrong answers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import mach_jax
from mach_jax import MachEnsemble, get_preset
from mach_jax import experiment
from mach_jax.training import loop as trainer
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.errors import DataFormatError
from mach_jax.errors import TrainingDivergedError
from mach_jax.data.synthetic import make_synthetic
from mach_jax.errors import WorkdirError
from mach_jax.data.xc_format import write_xc
from support import one_error_line, run_in_process

# 40 epochs of 10 steps with a checkpoint every 50 steps: long enough to interrupt after step 100
# (the tiny step takes milliseconds, a signal lands within about 10 ms of the checkpoint).
TOTAL_STEPS = 400
LONG = ["--preset", "tiny", "--quiet", "--epochs", str(TOTAL_STEPS // 10), "--checkpoint-every-steps", "50",
        "--keep-checkpoints", "50"]


def command(workdir):
    return [sys.executable, "-m", "mach_jax.train", *LONG, "--workdir", str(workdir)]


def environment(tmp_path):
    return dict(os.environ, JAX_PLATFORMS="cpu", MACH_JAX_CACHE_DIR=str(tmp_path / "cache"))


def saved_steps(workdir):
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def wait_for_step_100(workdir, *also):
    """Polls (for up to 120 s) until a checkpoint at step 100 or later exists and every ``also()`` holds."""
    deadline = time.time() + 120
    while not (any(s >= 100 for s in saved_steps(workdir)) and all(check() for check in also)) \
            and time.time() < deadline:
        time.sleep(0.01)


def start_and_signal_after_first_checkpoint(workdir, env, signum):
    process = subprocess.Popen(command(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for_step_100(workdir)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def final_state(workdir):
    params = MachEnsemble.load(workdir).params
    metrics = json.loads((Path(workdir) / "metrics.json").read_text())
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)], metrics


def rerun(workdir):
    """The same command, in this process: the kill is what crosses the process boundary, not the
    rerun (compiled alike: the subprocesses inherit this process's XLA settings, conftest.py)."""
    return run_in_process("mach_jax.train", *LONG, "--workdir", str(workdir), cwd=Path(workdir).parent)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    rerun(root / "work")
    return final_state(root / "work")


def assert_same_run(workdir, reference):
    params, metrics = final_state(workdir)
    ref_params, ref_metrics = reference
    for leaf, ref_leaf in zip(params, ref_params):
        np.testing.assert_array_equal(leaf, ref_leaf)  # exact: XLA on CPU is deterministic
    for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
        assert metrics[key] == ref_metrics[key]


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    env, work = environment(tmp_path), tmp_path / "work"
    code, _, _ = start_and_signal_after_first_checkpoint(work, env, signal.SIGKILL)
    assert code == -signal.SIGKILL
    survivors = saved_steps(work)
    assert survivors and survivors[-1] < TOTAL_STEPS  # killed before the end
    result = rerun(work)
    assert f"resuming from the checkpoint at step {survivors[-1]}" in result.stderr
    assert_same_run(work, uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_saves_the_current_step_and_exits_cleanly(tmp_path, uninterrupted, signum):
    env, work = environment(tmp_path), tmp_path / "work"
    code, _, stderr = start_and_signal_after_first_checkpoint(work, env, signum)
    assert code == 128 + signum and "Traceback" not in stderr
    name = signal.Signals(signum).name
    stopped_at = int(re.search(rf"{name} at step (\d+): checkpoint saved", stderr).group(1))
    assert saved_steps(work)[-1] == stopped_at < TOTAL_STEPS
    rerun(work)
    assert_same_run(work, uninterrupted)


def test_a_partially_written_checkpoint_is_never_restored(tmp_path):
    config = get_preset("tiny")
    train, _ = make_synthetic(config.data.synthetic)
    trainer.train(config, tmp_path, train, progress=False)
    partial = tmp_path / "checkpoints" / "999.orbax-checkpoint-tmp-1700000000"
    partial.mkdir()
    (partial / "garbage").write_text("half a checkpoint")
    ensemble = MachEnsemble.load(tmp_path)  # restores step 20, ignores the partial step 999
    assert saved_steps(tmp_path)[-1] == 20 and ensemble.params["embedding"].shape[0] == 4
    trainer.train(config, tmp_path, train, progress=False)  # resuming cleans the leftover up
    assert not partial.exists()


def test_non_finite_loss_stops_naming_step_and_member_and_keeps_the_last_good_checkpoint(tmp_path):
    # Step 1 moves every weight by ~1e30 (Adam's first step is ~lr); step 2's logits overflow.
    config = get_preset("tiny").replace(
        train={"learning_rate": 1e30, "checkpoint_every_steps": 1, "log_every_steps": 1})
    train, _ = make_synthetic(config.data.synthetic)
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at step 2 in member\(s\) \[0, 1, 2, 3\]"):
        trainer.train(config, tmp_path, train, progress=False)
    assert saved_steps(tmp_path) == [1]


def test_evaluating_against_data_of_another_shape_is_refused(tmp_path):
    config = get_preset("tiny")
    train, test = make_synthetic(config.data.synthetic)
    experiment.train_and_evaluate(config, tmp_path / "work", progress=False)
    other_d = XCDataset(CsrMatrix(test.features.indptr, test.features.indices, test.features.values, 500),
                        test.labels, "")
    write_xc(tmp_path / "other_d.txt", other_d)
    result = run_in_process("mach_jax.evaluate", "--workdir", "work", "--test", "other_d.txt", "--quiet",
                            cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "other_d.txt:1: the data has D=500 features, the model was trained with D=400" in result.stderr
    other_l = XCDataset(test.features, CsrMatrix(test.labels.indptr, test.labels.indices,
                                                 test.labels.values, 301), "other_l.txt")
    with pytest.raises(DataFormatError, match="L=301 labels, the model was trained with L=300"):
        MachEnsemble.load(tmp_path / "work").evaluate(other_l, progress=False)


def test_a_workdir_of_another_format_version_or_edited_config_is_refused(tmp_path):
    config = get_preset("tiny")
    train, _ = make_synthetic(config.data.synthetic)
    trainer.train(config, tmp_path, train, progress=False)
    path = tmp_path / "config.json"
    original = json.loads(path.read_text())
    edited = json.loads(path.read_text())
    edited["config"]["model"]["hidden_sizes"] = [16]
    path.write_text(json.dumps(edited))
    with pytest.raises(WorkdirError, match="cannot be restored for this config"):
        MachEnsemble.load(tmp_path)
    original["format_version"] = 999
    path.write_text(json.dumps(original))
    with pytest.raises(WorkdirError, match="format_version 999"):
        MachEnsemble.load(tmp_path)


def test_no_pickle_on_any_load_path(tmp_path, monkeypatch):
    import ast
    import pickle

    package = Path(mach_jax.__file__).parent
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not any("pickle" in name for name in names), source.name
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "np.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert keywords.get("allow_pickle") == "False", f"{source.name}:{node.lineno}"

    config = get_preset("tiny")
    train, test = make_synthetic(config.data.synthetic)
    trainer.train(config, tmp_path, train, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on a load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    MachEnsemble.load(tmp_path).evaluate(test, progress=False)


def test_empty_data_and_too_few_labels_are_refused_before_training(tmp_path):
    from mach_jax.errors import ConfigError
    from support import from_rows

    config = get_preset("tiny")
    empty = from_rows([], [], 400, 300, source="empty.txt")
    with pytest.raises(DataFormatError, match="empty.txt:1: the header declares 0 points"):
        trainer.train(config, tmp_path / "a", empty, progress=False)
    few = from_rows([{0: 1.0}, {1: 1.0}], [[], []], 400, 0, source="few.txt")
    with pytest.raises(ConfigError, match="the data has L=0 labels"):
        trainer.train(config, tmp_path / "b", few, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resuming_on_other_data_of_the_same_shape_is_refused(tmp_path):
    config = get_preset("tiny")
    train, _ = make_synthetic(config.data.synthetic)
    trainer.train(config.replace(train={"epochs": 1}), tmp_path, train, progress=False)
    labels = train.labels  # other labels, same shape: every row's width, N, D and L unchanged
    shifted = CsrMatrix(labels.indptr, (labels.indices + 1) % labels.num_cols, labels.values, labels.num_cols)
    other = XCDataset(train.features, shifted, "other.txt")
    with pytest.raises(WorkdirError, match="trained on other data"):
        trainer.train(config, tmp_path, other, progress=False)


def test_sigkill_two_concurrent_runs_then_rerun_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    env, work = environment(tmp_path), tmp_path / "work"
    runs = [subprocess.Popen(command(work), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    # Kill once the holder has checkpointed and the refused run has ended: the refused one may
    # still be exiting when a fast holder (its step loaded from the compilation cache) saves step 100.
    wait_for_step_100(work, lambda: any(run.poll() is not None for run in runs))
    for run in runs:
        run.send_signal(signal.SIGKILL)  # the one refused has exited already
    results = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]
    refused = [(run, stderr) for run, (code, stderr) in zip(runs, results) if code == 2]
    holder = [run for run, (code, _) in zip(runs, results) if code == -signal.SIGKILL]
    assert len(refused) == len(holder) == 1, results
    assert f"is in use by another training run (pid {holder[0].pid} on " in refused[0][1]
    assert saved_steps(work) and saved_steps(work)[-1] < TOTAL_STEPS
    result = rerun(work)
    assert f"taking over the lock of a run that ended without releasing it (pid {holder[0].pid}" in result.stderr
    assert_same_run(work, uninterrupted)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (checkpoints 10 and 20) trained in-process, and a file to predict."""
    root = tmp_path_factory.mktemp("finished")
    config = get_preset("tiny")
    train, test = make_synthetic(config.data.synthetic)
    trainer.train(config, root / "base", train, progress=False)
    write_xc(root / "test.txt", test)
    return root


def copy_of(root, name):
    shutil.rmtree(root / name, ignore_errors=True)
    shutil.copytree(root / "base", root / name)
    return root / name


def data_files(workdir, step):
    return sorted((Path(workdir) / "checkpoints" / str(step) / "default" / "ocdbt.process_0" / "d").iterdir())


def flip_bytes(workdir, step):
    """Flips 8 bytes at five places of every data file of one checkpoint, sizes kept."""
    for path in data_files(workdir, step):
        data = bytearray(path.read_bytes())
        for start in (int(len(data) * fraction) for fraction in (0.1, 0.3, 0.5, 0.7, 0.9)):
            data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
        path.write_bytes(bytes(data))


def test_case1_flipped_checkpoint_bytes_are_refused_in_evaluate_and_predict(finished):
    work = copy_of(finished, "flipped")
    for step in (10, 20):
        flip_bytes(work, step)
    commands = {"evaluate": [], "predict": ["--input", "test.txt"],
                "train": ["--preset", "tiny"]}
    for module, args in commands.items():
        result = run_in_process(f"mach_jax.{module}", "--workdir", "flipped", "--quiet", *args, cwd=finished,
                                check=False)
        line = one_error_line(result)
        assert "flipped/checkpoints: every checkpoint is damaged (step 20: " in line, line
        assert re.search(r"step 10: (the content of \S+ does not match its checksum|it cannot be read)", line)
        assert "nan" not in result.stdout


def test_case11_a_damaged_newest_checkpoint_falls_back_to_the_intact_older_one(finished):
    work = copy_of(finished, "no_metadata")
    (work / "checkpoints" / "20" / "_CHECKPOINT_METADATA").unlink()
    result = run_in_process("mach_jax.evaluate", "--workdir", "no_metadata", "--quiet", cwd=finished)
    assert ("no_metadata/checkpoints/20 is damaged (its metadata file _CHECKPOINT_METADATA is missing); using "
            "the checkpoint of step 10 instead") in result.stderr
    work = copy_of(finished, "no_data")
    for path in data_files(work, 20):
        path.unlink()
    result = run_in_process("mach_jax.train", "--preset", "tiny", "--workdir", "no_data", "--quiet", cwd=finished)
    assert re.search(r"no_data/checkpoints/20 is damaged \(it cannot be read: .*\); using the checkpoint of "
                     r"step 10 instead", result.stderr), result.stderr
    assert "resuming from the checkpoint at step 10" in result.stderr
    assert (work / "damaged_checkpoints" / "20" / "default").is_dir()  # set aside, not deleted
    ensemble, reference = MachEnsemble.load(work), MachEnsemble.load(finished / "base")
    assert ensemble.checkpoint_step == 20
    for leaf, ref_leaf in zip(jax.tree.leaves(ensemble.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref_leaf))  # step 20 made again, exactly


@pytest.mark.parametrize("args, damage", [
    (["mach_jax.evaluate", "--workdir", "refused"], "data files"),
    (["mach_jax.train", "--preset", "tiny", "--workdir", "refused", "-B", "16"], "config.json"),
], ids=["evaluate-damaged", "train-other-B-without-config"])
def test_case8_a_refused_run_exits_with_one_line_and_no_event_loop_traceback(finished, args, damage):
    work = copy_of(finished, "refused")
    if damage == "data files":
        for step in (10, 20):
            for path in data_files(work, step):
                path.unlink()
    else:
        (work / "config.json").unlink()
    result = subprocess.run([sys.executable, "-m", *args, "--quiet"], cwd=finished, env=environment(finished),
                            capture_output=True, text=True)
    one_error_line(result)
    assert not re.search(r"Event loop is closed|Exception ignored|^ERROR", result.stderr, re.MULTILINE), result.stderr
    assert not (work / "config.json").exists() or damage == "data files"
