"""Memory: the estimate's verdict for Amazon-670K, bounded checksum temporaries, and the options
that hold less (only the last checkpoint; the parameters alone, for serving).

The measured peaks themselves are benchmarks, not tests: ``scripts/memory_profile.py``.
"""

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.errors import WorkdirError
from mach_jax.readout.export import export_params
from mach_jax.storage import checkpoints, integrity
from mach_jax.training import loop as trainer
from mach_jax.training import resource_check, resources
from mach_jax.training.resource_check import Budget
from support import run_in_process

GB = 10**9


def amazon670k_shape() -> resources.RunShape:
    """Amazon-670K's training set: N, D and L of its header. The preset caps no row
    (``data.max_nnz`` / ``max_labels`` are unset), so K and M are the widest rows: taken as 512
    features and 32 labels, generous beside its means of 75.7 and 5.45."""
    return resources.RunShape(num_features=135_909, num_labels=670_091, num_train_points=490_449,
                              widest_features=512, widest_labels=32, widest_features_row=0,
                              eval_widest_features=512, eval_widest_labels=32, eval_widest_features_row=0,
                              train_bytes=490_449 * (76 * 8 + 6 * 4))


@pytest.mark.parametrize("devices, fits", [(8, True), (1, False)], ids=["R_over_8_devices", "R_on_1_device"])
def test_amazon670k_fits_16_gb_devices_only_with_its_members_split_over_8(devices, fits):
    config = get_preset("amazon670k").replace(parallel={"rep_devices": devices})
    shape = amazon670k_shape()
    estimate = resources.estimate(config, shape, rep_shards=devices, accelerator=True)
    per_device = estimate.total(on_device=True)
    budget = Budget(device=16 * GB, host=512 * GB, device_name="each GPU (16 GB)")
    assert (per_device <= resource_check.FIT_FRACTION * 16 * GB) == fits, resources.format_bytes(per_device)
    assert resource_check.fits(config, shape, budget, shards=(devices, 1)) == fits
    # 32 members of 100,000 x 500 + 500 x 500 + 500 x 10,000 with two Adam moments: 21 GB of state.
    state = sum(p.bytes for p in estimate.parts if p.name in ("parameters", "Adam moments"))
    assert state * devices == 32 * 55_261_000 * 3 * 4


def test_device_checksums_take_one_slab_at_a_time_and_agree_with_the_host(monkeypatch):
    # XLA's CPU backend materialises the products of a whole-leaf sum: three leaves of a 1.1 GiB
    # state once needed 2.1 GiB of temporaries. Slab by slab they stay small (compiled, not run).
    leaf = jax.ShapeDtypeStruct((16, 20_000, 256), jnp.float32)
    compiled = jax.jit(integrity._device_sums.__wrapped__).lower({"a": leaf, "b": leaf, "c": leaf}).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 128 * 2**20
    monkeypatch.setattr(integrity, "_DEVICE_BLOCK", 40)  # slabs, with a remainder, in these small leaves
    rng = np.random.default_rng(0)
    tree = {"f32": rng.normal(size=(3, 29, 5)).astype(np.float32), "i32": rng.integers(-9, 9, (2, 41)).astype(np.int32),
            "bool": rng.random((2, 3, 11, 2)) > 0.5, "nan": np.full((2, 45), np.nan, np.float32)}
    on_device = jax.jit(integrity._device_sums.__wrapped__)
    sums = jax.device_get(on_device({name: jnp.asarray(leaf) for name, leaf in tree.items()}))
    host = integrity.check_tree(tree)
    for name, (h1, h2, finite) in sums.items():
        assert integrity.LeafCheck(integrity._hex(int(h1), int(h2)), bool(finite)) == host[name], name


@pytest.fixture(scope="module")
def last_only(tmp_path_factory):
    """A tiny run (2 epochs of 10 steps) trained with ``train.keep_checkpoints`` 1, and test data."""
    root = tmp_path_factory.mktemp("last_only")
    config = get_preset("tiny").replace(train={"keep_checkpoints": 1})
    train, test = make_synthetic(config.data.synthetic)
    trainer.train(config, root / "run", train, progress=False)
    write_xc(root / "test.txt", test)
    return root


def saved_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def checkpoint_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in (folder / "checkpoints").rglob("*") if path.is_file())


def copy_of(root: Path, name: str) -> Path:
    shutil.copytree(root / "run", root / name)
    return root / name


def test_keeping_only_the_last_checkpoint_resumes_and_falls_back_past_a_partial_save(last_only):
    assert saved_steps(last_only / "run") == [20]
    work = copy_of(last_only, "resumed")
    partial = work / "checkpoints" / "30.orbax-checkpoint-tmp-1700000000"  # a save cut short
    partial.mkdir()
    (partial / "garbage").write_text("half a checkpoint")
    result = run_in_process("mach_jax.train", "--preset", "tiny", "--keep-checkpoints", "1", "--epochs", "3",
                            "--workdir", "resumed", "--quiet", cwd=last_only)
    assert "resuming from the checkpoint at step 20" in result.stderr
    assert saved_steps(work) == [30] and not partial.exists()


def test_with_one_checkpoint_kept_a_damaged_one_has_no_fallback_and_says_so(last_only):
    work = copy_of(last_only, "damaged")
    (work / "checkpoints" / "20" / "_CHECKPOINT_METADATA").unlink()
    with pytest.raises(WorkdirError, match="every checkpoint is damaged .*to train from scratch"):
        MachEnsemble.load(work)


def test_the_parameters_alone_load_and_predict_as_the_training_checkpoint(last_only):
    served = export_params(last_only / "served", last_only / "run")
    features = read_xc(last_only / "test.txt").features
    trained, loaded = MachEnsemble.load(last_only / "run"), MachEnsemble.load(served)
    for got, expected in zip(loaded.predict(features, k=5), trained.predict(features, k=5)):
        np.testing.assert_array_equal(got, expected)
    assert (loaded.checkpoint_step, loaded.final_step) == (trained.checkpoint_step, trained.final_step) == (20, 20)
    # No optimiser moments: about a third of the Adam checkpoint's bytes.
    assert checkpoint_bytes(served) < 0.5 * checkpoint_bytes(last_only / "run")
    with pytest.raises(WorkdirError, match="holds the parameters alone, without the optimiser's moments"):
        checkpoints.restore_latest(served, None)
    with pytest.raises(WorkdirError, match="already holds a run"):
        export_params(served, last_only / "run")
    # The command's flag writes the same folder.
    result = run_in_process("mach_jax.predict", "--workdir", str(last_only / "run"), "--export-params",
                            str(last_only / "by_flag"), "--quiet", cwd=last_only)
    assert "parameters (no optimiser moments) written to" in result.stderr
    for got, expected in zip(MachEnsemble.load(last_only / "by_flag").predict(features, k=5),
                             trained.predict(features, k=5)):
        np.testing.assert_array_equal(got, expected)


def test_a_cpu_save_is_written_before_it_returns_so_the_next_step_updates_the_state_in_place(tmp_path):
    """On the CPU Orbax writes from the state's own buffers: while a write is in flight a donating
    step cannot reuse them and XLA allocates a second state. ``save_state`` returns with the write
    done, so the step after a save consumes the saved buffers (they are deleted, not copied)."""
    state = {"tables": jnp.ones((4, 2048, 1024), jnp.float32), "step": jnp.asarray(0, jnp.int32)}  # 32 MiB
    step = jax.jit(lambda s: {"tables": s["tables"] * 0.5, "step": s["step"] + 1}, donate_argnums=0)
    assert checkpoints.writes_in_place(state)
    assert not checkpoints.writes_in_place({"tables": np.ones(3, np.float32)})  # host arrays: nothing to donate
    with checkpoints.opened(tmp_path, keep=2) as manager:
        checkpoints.save_state(manager, 1, state)
        assert not manager.is_saving_in_progress()
        saved = state["tables"]
        state = jax.block_until_ready(step(state))
        assert saved.is_deleted()  # donated: the saved buffers were updated in place
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored = checkpoints.restore_latest(tmp_path, abstract)
    np.testing.assert_array_equal(np.asarray(restored.state["tables"]), np.ones((4, 2048, 1024), np.float32))
