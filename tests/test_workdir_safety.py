"""A workdir is never silently wrong, never shared by two runs, never left half-written: what a
resume must match (config, data content, the checkpoint's own record), the training lock, a
refused run that writes nothing, and one ``error:`` line for a damaged or unwritable workdir.

Commands run in-process through their real error path (``support.run_in_process``) on copies of
one tiny run trained once for the module.
"""

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess

import numpy as np
import pytest
from support import one_error_line, run_in_process

from mach_jax.config import get_preset
from mach_jax.core.mesh import make_mesh
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import write_xc
from mach_jax.storage import checkpoints

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run trained from files (checkpoints 10 and 20), and the files."""
    root = tmp_path_factory.mktemp("workdir_safety")
    train, test = make_synthetic(TINY.data.synthetic)
    write_xc(root / "train.txt", train)
    write_xc(root / "test.txt", test)
    assert run(root, "train", "--workdir", "base").returncode == 0
    return root


def run(root, module, *args):
    data = ["--preset", "tiny", "--train", "train.txt", "--test", "test.txt"] if module == "train" else []
    return run_in_process(f"mach_jax.{module}", *data, "--quiet", *args, cwd=root, check=False)


def copy(root, name):
    shutil.rmtree(root / name, ignore_errors=True)
    shutil.copytree(root / "base", root / name)
    return root / name


def test_case2_other_hash_seeds_are_checked_against_the_checkpoints_own_record(trained):
    work = copy(trained, "seeds")
    (work / "config.json").unlink()
    line = one_error_line(run(trained, "train", "--workdir", "seeds", "--label-hash-seed", "5"))
    assert "seeds/checkpoints/20 was trained with model.label_hash_seed=0, this run asks for 5" in line
    assert not (work / "config.json").exists()
    run(trained, "train", "--workdir", "seeds")  # the same settings resume and restore config.json
    edited = json.loads((work / "config.json").read_text())
    edited["config"]["model"]["label_hash_seed"] = 7
    (work / "config.json").write_text(json.dumps(edited))
    line = one_error_line(run(trained, "evaluate", "--workdir", "seeds"))
    assert "config.json has model.label_hash_seed=7, the checkpoint was trained with 0" in line


def test_case3_other_feature_values_of_the_same_shape_are_refused_on_resume(trained):
    copy(trained, "values")
    train, _ = make_synthetic(TINY.data.synthetic)
    f = train.features
    write_xc(trained / "other.txt", XCDataset(CsrMatrix(f.indptr, f.indices, f.values * 2, f.num_cols),
                                              train.labels, ""))
    line = one_error_line(run_in_process("mach_jax.train", "--preset", "tiny", "--train", "other.txt", "--test",
                                     "test.txt", "--workdir", "values", "--quiet", cwd=trained, check=False))
    assert "values was trained on other data: same N, D, L and widths, other content" in line


def test_case5_a_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(trained):
    from mach_jax.storage import lock

    work = copy(trained, "locked")
    with lock.hold(work):
        line = one_error_line(run(trained, "train", "--workdir", "locked"))
        assert f"is in use by another training run (pid {os.getpid()} on " in line
    dead = subprocess.Popen(["sleep", "60"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    (work / lock.LOCK_FILE).write_text(f"pid {dead.pid} on a host, since then\n")  # killed while holding it
    result = run(trained, "train", "--workdir", "locked")
    assert result.returncode == 0 and f"taking over the lock of a run that ended without releasing it " \
        f"(pid {dead.pid}" in result.stderr
    assert not (work / lock.LOCK_FILE).exists()
    progress = checkpoints.training_progress(work)
    assert (progress.step, progress.final_step, progress.finished) == (20, 20, True)


def test_case10_a_refused_rerun_writes_nothing_and_the_original_command_still_resumes(trained):
    work = copy(trained, "refused")
    (work / "config.json").unlink()
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    line = one_error_line(run(trained, "train", "--workdir", "refused", "-B", "16"))
    assert "refused/checkpoints/20 was trained with model.num_buckets=32, this run asks for 16" in line
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    assert run(trained, "train", "--workdir", "refused").returncode == 0
    assert run(trained, "evaluate", "--workdir", "refused").returncode == 0


def config_variants(base):
    model = base["config"]["model"]
    return {
        "not UTF-8": b'{"format_version": 1, "config": {"model": "\xff"}}',
        "a list": b"[]",
        "no run_info": json.dumps({k: v for k, v in base.items() if k != "run_info"}).encode(),
        "an extra key": json.dumps({**base, "notes": "mine"}).encode(),
        "an extra run_info key": json.dumps({**base, "run_info": {**base["run_info"], "x": 1}}).encode(),
        "a number as a string": json.dumps({**base, "run_info": {**base["run_info"], "num_features": "400"}}).encode(),
        "a config number as a string": json.dumps(
            {**base, "config": {**base["config"], "model": {**model, "num_buckets": "32"}}}).encode(),
    }


EXPECTED = {"not UTF-8": "not UTF-8 text (byte 43)", "a list": "expected a JSON object",
            "no run_info": "no 'run_info'", "an extra key": "unknown key 'notes'",
            "an extra run_info key": "unknown key run_info.x",
            "a number as a string": 'run_info.num_features must be a non-negative integer, got "400"',
            "a config number as a string": 'model.num_buckets must be an integer, got "32"'}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_case7_a_damaged_config_json_is_one_line_in_train_and_evaluate(trained, variant):
    work = copy(trained, "damaged_config")
    base = json.loads((work / "config.json").read_text())
    (work / "config.json").write_bytes(config_variants(base)[variant])
    for module in ("evaluate", "train"):
        line = one_error_line(run(trained, module, "--workdir", "damaged_config"))
        assert f"damaged_config/config.json: {EXPECTED[variant]}" in line


def test_case7_garbage_label_counts_and_a_workdir_that_is_a_file_are_one_line(trained):
    work = copy(trained, "garbage")
    (work / "label_counts.npy").write_bytes(b"\x93NUMPY garbage" * 8)
    for module in ("evaluate", "train"):
        assert "label_counts.npy: not a numpy array file" in one_error_line(run(trained, module, "--workdir", "garbage"))
    (work / "label_counts.npy").unlink()  # as the message says: the training command writes it again
    assert run(trained, "train", "--workdir", "garbage").returncode == 0
    np.testing.assert_array_equal(np.load(work / "label_counts.npy"), np.load(trained / "base/label_counts.npy"))
    (trained / "a_file").write_text("not a folder")
    assert "a_file: is a file, not a folder" in one_error_line(run(trained, "train", "--workdir", "a_file"))
    line = one_error_line(run(trained, "train", "--workdir", "a_file/sub"))
    assert "a_file/sub: lies under" in line and "which is a file, not a folder" in line


@contextlib.contextmanager
def read_only(folder):
    """``folder`` and everything in it unwritable, even for root (``chattr +i``)."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    else:
        made = subprocess.run(["chmod", "-R", "a-w", str(folder)], capture_output=True, check=False).returncode == 0
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            made = False
        except OSError:
            pass
        if not made:
            pytest.skip("cannot make a folder read-only here")
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(folder)] if os.geteuid() == 0 else
                       ["chmod", "-R", "u+w", str(folder)], capture_output=True, check=False)


def test_case7_a_read_only_workdir_is_one_line_even_when_training_is_complete(trained):
    work = copy(trained, "read_only")
    with read_only(work):
        line = one_error_line(run(trained, "train", "--workdir", "read_only"))
    assert "read_only: cannot write there (Operation not permitted" in line or "(Permission denied" in line


def test_case7_a_full_disk_during_a_save_is_one_line(trained, monkeypatch):
    """The file-size limit makes the checkpoint's writes fail as a full disk does (EFBIG)."""
    real_save = checkpoints.ocp.CheckpointManager.save
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def save_on_a_full_disk(self, *args, **kwargs):
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, limits[1]))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", save_on_a_full_disk)
    try:
        line = one_error_line(run(trained, "train", "--workdir", "full", "--epochs", "1"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert "full/checkpoints: File too large while saving checkpoints" in line
    assert "then run the same command again" in line


def test_an_older_workdir_without_fingerprint_or_checksums_still_loads_and_resumes(trained):
    work = copy(trained, "older")
    saved = json.loads((work / "config.json").read_text())
    del saved["run_info"]["data_fingerprint"]
    del saved["run_info"]["feature_entries"]  # format 1: recorded since the lazy rule used the mean row
    saved["format_version"] = 1
    (work / "config.json").write_text(json.dumps(saved))
    for metadata in (work / "checkpoints").glob("*/_CHECKPOINT_METADATA"):
        step_metadata = json.loads(metadata.read_text())
        step_metadata["custom_metadata"] = {}  # as Orbax wrote it before checkpoints had records
        metadata.write_text(json.dumps(step_metadata))
    assert run(trained, "evaluate", "--workdir", "older").returncode == 0
    result = run(trained, "train", "--workdir", "older", "--epochs", "3")
    assert result.returncode == 0 and "resuming from the checkpoint at step 20" in result.stderr
    assert checkpoints.training_progress(work).final_step == 30  # the new checkpoint has its record


def test_checksums_agree_on_device_and_host_and_change_with_one_flipped_bit(monkeypatch):
    import jax
    import jax.numpy as jnp

    from mach_jax.storage import integrity

    monkeypatch.setattr(integrity, "_BLOCK", 7)  # the host's blocks, not only one
    rng = np.random.default_rng(0)
    tree = {"f32": rng.normal(size=(3, 5, 4)).astype(np.float32), "i32": rng.integers(-9, 9, 17).astype(np.int32),
            "bf16": rng.normal(size=(4, 9)).astype(jnp.bfloat16), "scalar": np.array(3, np.int32),
            "bool": rng.random(10) > 0.5, "nan": np.array([1.0, np.nan], np.float32)}
    host = integrity.check_tree(tree)
    assert integrity.check_tree(jax.tree.map(jnp.asarray, tree)) == host
    assert [name for name, check in host.items() if not check.finite] == ["nan"]

    def reference(words):  # the two sums, one word at a time
        h1 = sum(int(w) * (2 * i + 1) for i, w in enumerate(words)) % 2**32
        h2 = 0
        for i, w in enumerate(words):
            x = (int(w) ^ (i * 0x9E3779B9)) % 2**32
            x ^= x >> 16
            x = x * 0x85EBCA6B % 2**32
            x ^= x >> 13
            x = x * 0xC2B2AE35 % 2**32
            h2 += x ^ (x >> 16)
        return f"{h1:08x}{h2 % 2**32:08x}"

    assert host["f32"].digest == reference(tree["f32"].view(np.uint32).ravel())
    flipped = tree["f32"].copy()
    flipped.view(np.uint32)[1, 2, 3] ^= 1
    assert integrity.check_tree({"f32": flipped})["f32"].digest != host["f32"].digest


def rules_disagreeing_data() -> XCDataset:
    """D = 5,000 features, one row of 300 and 127 rows of 4: for batches of 64 the mean row (6.3)
    says lazy Adam (5,000 >= 1.75 x 64 x 6.3), the widest row dense Adam (< 1.5 x 64 x 300)."""
    rng = np.random.default_rng(0)
    widths = np.array([300] + [4] * 127)
    indptr = np.concatenate([[0], np.cumsum(widths)])
    features = CsrMatrix(indptr, np.concatenate([rng.choice(5000, w, replace=False) for w in widths]),
                         rng.random(indptr[-1], dtype=np.float32) + 0.1, 5000)
    labels = CsrMatrix(np.arange(129) * 2, rng.integers(0, 50, 256), np.ones(256, np.float32), 50)
    return XCDataset(features, labels, "rules.txt")


def test_a_run_recorded_before_the_feature_entries_resumes_with_the_rules_it_was_trained_with(tmp_path):
    from mach_jax.data.prepare import prepare_train_data
    from mach_jax.training import loop as trainer
    from mach_jax.training.resolve import fitted_to_data
    from mach_jax.training.spec import step_spec

    data, work = rules_disagreeing_data(), tmp_path / "old"
    config = get_preset("tiny").replace(model={"num_buckets": 16}, train={"epochs": 1})
    # Trained as before the entries were recorded: "auto" resolved by the widest row, dense Adam.
    trainer.train(config.replace(train={"embedding_update": "dense"}), work, data, progress=False)
    saved = json.loads((work / "config.json").read_text())
    saved["config"]["train"]["embedding_update"] = "auto"
    del saved["run_info"]["feature_entries"]
    saved["format_version"] = 1
    (work / "config.json").write_text(json.dumps(saved))
    for metadata in (work / "checkpoints").glob("*/_CHECKPOINT_METADATA"):
        step_metadata = json.loads(metadata.read_text())
        step_metadata["custom_metadata"] = {}  # records written before checkpoints had them
        metadata.write_text(json.dumps(step_metadata))
    info = prepare_train_data(config, data)[1]
    mesh = make_mesh(config.model.num_repetitions)
    assert step_spec(config, info, mesh).lazy_embedding  # what a new run picks on this data
    resumed = fitted_to_data(config, data, work)  # format 1's choice, pinned by the migration
    assert resumed.train.embedding_update == "dense" and not step_spec(resumed, info, mesh).lazy_embedding
    # The resumed run keeps dense Adam, so the checkpoint's moments restore and training goes on.
    trainer.train(config.replace(train={"epochs": 2}), work, data, progress=False)
    assert checkpoints.training_progress(work).final_step == 4


def test_a_new_group_beside_one_recorded_before_the_feature_entries_joins_its_rules(tmp_path):
    from mach_jax.data.prepare import RunInfo
    from mach_jax.storage import migration, run_file
    from mach_jax.storage import workdir as wd

    old = RunInfo(num_features=5000, num_labels=50, num_train_points=128, max_nnz=300, max_labels=2,
                  train_source="a.txt")
    new = RunInfo(**{**old.__dict__, "feature_entries": 808, "train_source": "b.txt"})
    assert wd._same_data(new, old) and wd._same_data(old, new)  # one ensemble, as before
    assert not wd._same_data(new, RunInfo(**{**old.__dict__, "num_train_points": 127}))
    first, second = tmp_path / "reps-0-2", tmp_path / "reps-2-4"
    first.mkdir()
    tree = run_file.payload(get_preset("tiny"), old, None)
    del tree["run_info"]["feature_entries"]
    tree["format_version"] = 1
    (first / run_file.CONFIG_FILE).write_text(json.dumps(tree))
    # Format 1 resolved "auto" by the widest row: 5,000 > 16 x 300 (a gathered bag), and
    # 5,000 < 1.5 x 64 x 300 (dense Adam). The new group takes those choices from its sibling.
    joined = migration.keep_recorded_choices(get_preset("tiny"), wd.recorded_config(second))
    assert (joined.model.input_layer, joined.train.embedding_update) == ("sparse", "dense")
    assert wd.recorded_config(tmp_path / "alone") is None
