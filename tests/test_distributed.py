"""R sharded over devices, groups trained by independent processes, multi-process ensembles.

Multi-device cases run in subprocesses with ``--xla_force_host_platform_device_count`` so that
the rest of the suite keeps one CPU device.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.core import mesh as mesh_lib
from mach_jax.data.synthetic import make_synthetic
from mach_jax.config import Config
from mach_jax.errors import ConfigError
from mach_jax.errors import WorkdirError
from support import run_in_process

TINY = ["--preset", "tiny", "--quiet"]
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def environment(tmp_path, devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", MACH_JAX_CACHE_DIR=str(tmp_path / "cache"),
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}")


def run(args, tmp_path, devices=1, check=True):
    """A command with ``devices`` CPU devices: in a subprocess (XLA fixes the device count at
    start-up), or in this process when one device is asked for, as this process has."""
    if devices == 1 and args[0] == "-m":
        return run_in_process(args[1], *args[2:], cwd=tmp_path, check=check)
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=environment(tmp_path, devices),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def train(tmp_path, workdir, *flags, devices=1):
    return run(["-m", "mach_jax.train", *train_argv(workdir, *flags)], tmp_path, devices)


# Commands run one after another in one process, each through the command line's own error path
# (cli.run_cli, as ``python -m`` runs it): for runs whose property is the device count, not a
# fresh process each (a process start with 4 devices costs about 2.5 s of CPU).
COMMANDS_SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    from mach_jax import cli
    for module, argv in json.loads(sys.argv[1]):
        print(f"=== {module} {' '.join(argv)}", file=sys.stderr)
        try:
            cli.run_cli(lambda: importlib.import_module(module).main(argv))
        except SystemExit as stop:
            if stop.code:
                raise
""")


def run_together(commands, tmp_path, devices):
    """``[(module, argv), ...]`` in one process with ``devices`` CPU devices, in order; stops at
    the first that fails."""
    return run(["-c", COMMANDS_SCRIPT, json.dumps(commands)], tmp_path, devices)


def train_argv(workdir, *flags):
    """The arguments of ``mach_jax.train`` for a tiny run in ``workdir``."""
    return [*TINY, "--workdir", str(workdir), *flags]


def leaves(workdir):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(MachEnsemble.load(workdir).params)]


def metrics(workdir, name="metrics.json"):
    return json.loads((Path(workdir) / name).read_text())


def assert_same_ensemble(workdir, reference, atol=1e-5, metrics_file="metrics.json"):
    """``metrics_file``: the training's metrics.json, or evaluate's eval-exact.json."""
    for leaf, ref in zip(leaves(workdir), leaves(reference)):
        np.testing.assert_allclose(leaf, ref, rtol=0, atol=atol)
    for key in ("P@1", "P@3", "P@5"):
        assert metrics(workdir, metrics_file)[key] == pytest.approx(metrics(reference)[key], abs=1e-9), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """All four members trained in one single-device process."""
    root = tmp_path_factory.mktemp("reference")
    train(root, root / "work")
    return root / "work"


HLO_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mach_jax import get_preset
    from mach_jax.data import batches as input_pipeline
    from mach_jax.data import prepare
    from mach_jax.data.synthetic import make_synthetic
    from mach_jax.training.program import build_program
    for name, overrides in json.loads(sys.argv[1]).items():
        config = get_preset("tiny").replace(model={"num_repetitions": 8}).replace(**overrides)
        data, info = prepare.prepare_train_data(config, make_synthetic(config.data.synthetic)[0])
        program = build_program(config, info, data)
        shape = input_pipeline.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
        batch = input_pipeline.make_batch(data, np.arange(64), shape)
        print("=== " + name)
        print(dict(program.mesh.shape), "lazy" if program.spec.lazy_embedding else "dense",
              "entries", program.spec.entries_cap)
        print(program.train_step.lower(program.abstract_state, batch, program.seeds).compile().as_text())
""")

# The dense matmul bag with dense Adam; the gathered bag (over the nonzero entries) with dense or
# lazy Adam; and hashed inputs.
STEP_VARIANTS = {
    "dense": {},
    "sparse-dense-adam": {"model": {"input_layer": "sparse"}, "train": {"embedding_update": "dense"}},
    "sparse-lazy": {"model": {"input_layer": "sparse"}, "train": {"embedding_update": "lazy"}},
    "hashed-sparse-lazy": {"model": {"input_layer": "sparse", "feat_hash_dim": 128},
                           "train": {"embedding_update": "lazy"}},
    "sparse-lazy-rowwise-adagrad": {"model": {"input_layer": "sparse"},
                                    "train": {"embedding_optimizer": "rowwise_adagrad"}},
}


@pytest.fixture(scope="module")
def step_hlos(tmp_path_factory):
    """The compiled train step of every variant (and a data-parallel one), on 8 devices: one
    process compiles them all. Returns {name: the mesh line, then the HLO text}."""
    variants = {**STEP_VARIANTS, "data-parallel": {"parallel": {"data_devices": 2}}}
    output = run(["-c", HLO_SCRIPT, json.dumps(variants)], tmp_path_factory.mktemp("hlo"), devices=8).stdout
    parts = output.split("=== ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


@pytest.mark.parametrize("variant", sorted(STEP_VARIANTS))
def test_train_step_on_8_devices_has_no_collectives(step_hlos, variant):
    hlo = step_hlos[variant]
    assert "{'reps': 8, 'data': 1}" in hlo
    assert ("lazy" if "lazy" in variant else "dense") in hlo.splitlines()[0]
    assert ("entries 0" in hlo.splitlines()[0]) == (variant == "dense")  # the others sum the entries
    found = [op for op in COLLECTIVES if op in hlo]
    assert not found, f"collectives in the train step: {found}"


def test_the_collective_check_sees_data_parallel_gradients(step_hlos):
    hlo = step_hlos["data-parallel"]
    assert "{'reps': 4, 'data': 2}" in hlo and "all-reduce" in hlo


# The row-sparse steps (capped sizes, per-shard member loops): lazy Adam over hashed inputs, and
# row-wise Adagrad.
ROW_SPARSE_FLAGS = {
    "lazy-hashed": ["--input-layer", "sparse", "--embedding-update", "lazy", "--feat-hash-dim", "96"],
    "rowwise-adagrad": ["--input-layer", "sparse", "--embedding-optimizer", "rowwise_adagrad"],
}


def test_trainings_on_4_devices_equal_the_one_device_trainings(tmp_path, reference):
    """R sharded over 4 devices, 2 x 2 data-parallel, and the row-sparse steps on 4 devices: one
    process with 4 devices trains them all, each to the ensemble its one-device run gives."""
    four = [("mach_jax.train", train_argv(tmp_path / "sharded", "--rep-devices", "4")),
            ("mach_jax.train", train_argv(tmp_path / "data_parallel", "--rep-devices", "2", "--data-devices", "2"))]
    four += [("mach_jax.train", train_argv(tmp_path / f"four-{name}", "--rep-devices", "4", *flags))
             for name, flags in ROW_SPARSE_FLAGS.items()]
    run_together(four, tmp_path, devices=4)
    assert_same_ensemble(tmp_path / "sharded", reference)
    assert_same_ensemble(tmp_path / "data_parallel", reference)
    for name, flags in ROW_SPARSE_FLAGS.items():
        train(tmp_path, tmp_path / f"one-{name}", *flags)
        assert_same_ensemble(tmp_path / f"four-{name}", tmp_path / f"one-{name}")


def test_a_bad_mesh_is_refused_before_compiling(tmp_path):
    devices = jax.devices() * 4  # stands in for 4 devices: make_mesh only counts them here
    with pytest.raises(ConfigError, match="cannot be split evenly") as caught:
        mesh_lib.make_mesh(4, rep_devices=3, devices=devices)
    assert caught.value.field == "parallel.rep_devices"
    with pytest.raises(ConfigError, match="needs 8 devices, only 4"):
        mesh_lib.make_mesh(8, rep_devices=8, devices=devices)
    with pytest.raises(ConfigError, match="parallel.data_devices=3: must divide train.batch_size"):
        Config().replace(parallel={"data_devices": 3}).validate()
    result = run(["-m", "mach_jax.train", *TINY, "--rep-devices", "8", "--workdir", "w"], tmp_path, check=False)
    assert result.returncode == 2 and "--rep-devices" in result.stderr and "Traceback" not in result.stderr


def test_two_concurrent_groups_merge_into_the_single_process_ensemble(tmp_path, reference):
    env = environment(tmp_path, 1)
    groups = [subprocess.Popen([sys.executable, "-m", "mach_jax.train", *TINY, "--workdir", "shared",
                                "--reps", reps], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for reps in ("0:2", "2:4")]
    for process in groups:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["reps-0-2", "reps-2-4"]
    result = run(["-m", "mach_jax.evaluate", "--workdir", "shared", "--quiet"], tmp_path)
    assert "4 repetitions" in result.stdout
    assert_same_ensemble(tmp_path / "shared", reference, metrics_file="eval-exact.json")


def test_groups_in_separate_workdirs_merge_and_inconsistent_groups_are_refused(tmp_path, reference):
    train(tmp_path, tmp_path / "a", "--reps", "0:2")
    train(tmp_path, tmp_path / "d", "--reps", "2:4")
    result = run(["-m", "mach_jax.evaluate", "--workdir", "a", "--workdir", "d", "--quiet"], tmp_path)
    assert "4 repetitions" in result.stdout
    merged = MachEnsemble.load(tmp_path / "a", tmp_path / "d")
    for leaf, ref in zip(jax.tree.leaves(merged.params), leaves(reference)):
        np.testing.assert_allclose(np.asarray(leaf), ref, rtol=0, atol=1e-5)
    with pytest.raises(WorkdirError, match=r"members 2:4 of the R=4 ensemble are in none"):
        MachEnsemble.load(tmp_path / "a")
    train(tmp_path, tmp_path / "b", "--reps", "1:4")
    with pytest.raises(WorkdirError, match="both hold member 1: overlapping groups"):
        MachEnsemble.load(tmp_path / "a", tmp_path / "b")
    train(tmp_path, tmp_path / "c", "--reps", "2:4", "-B", "16")
    with pytest.raises(WorkdirError, match="has model.num_buckets=16 but .* has 32"):
        MachEnsemble.load(tmp_path / "a", tmp_path / "c")
    train(tmp_path, tmp_path / "e", "--reps", "2:4", "--epochs", "1")
    with pytest.raises(WorkdirError, match="has train.epochs=1 but .* has 2"):
        MachEnsemble.load(tmp_path / "a", tmp_path / "e")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_with_two_devices_each_form_one_ensemble(tmp_path, reference):
    env, port = environment(tmp_path, 2), free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "mach_jax.train", *TINY, "--workdir", "multi", "--num-processes", "2",
         "--process-id", str(index), "--coordinator-address", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (0, 1)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    assert (tmp_path / "multi" / "metrics.process1.jsonl").exists()
    assert (tmp_path / "multi" / "tensorboard" / "process1").is_dir()
    assert_same_ensemble(tmp_path / "multi", reference)


def test_checkpoint_saved_on_4_devices_restores_on_1_and_2(tmp_path, reference):
    train(tmp_path, tmp_path / "work", "--epochs", "1", devices=4)
    _, test = make_synthetic(get_preset("tiny").data.synthetic)
    on_one_device = MachEnsemble.load(tmp_path / "work").evaluate(test, progress=False)
    assert on_one_device["P@1"] == pytest.approx(metrics(tmp_path / "work")["P@1"], abs=1e-9)
    # On 2 devices: evaluate, then resume the remaining epoch, to the same ensemble as training
    # throughout on 1.
    result = run_together([("mach_jax.evaluate", ["--workdir", "work", "--quiet"]),
                           ("mach_jax.train", train_argv("work", "--rep-devices", "2"))], tmp_path, devices=2)
    evaluated = metrics(tmp_path / "work", "eval-exact.json")  # evaluate's own result, on 2 devices
    assert evaluated["num_repetitions"] == 4
    assert evaluated["P@1"] == pytest.approx(on_one_device["P@1"], abs=1e-9)
    assert "resuming from the checkpoint at step" in result.stderr
    assert_same_ensemble(tmp_path / "work", reference)


APPROX_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from mach_jax import MachEnsemble, get_preset
    from mach_jax.data.synthetic import make_synthetic
    _, test = make_synthetic(get_preset("tiny").data.synthetic)
    ensemble = MachEnsemble.load(sys.argv[1], decoder="approx", top_buckets=2, min_votes=2)
    assert ensemble.mesh.shape["reps"] == int(sys.argv[2]), ensemble.mesh.shape
    scores, ids = ensemble.predict(test.features, k=5)
    np.save("approx_ids.npy", ids)
    np.save("approx_scores.npy", scores)
""")


def test_approximate_decoding_sharded_over_4_devices_equals_1(tmp_path, reference):
    run(["-c", APPROX_SCRIPT, str(reference), "4"], tmp_path, devices=4)
    _, test = make_synthetic(get_preset("tiny").data.synthetic)
    scores, ids = MachEnsemble.load(reference, decoder="approx", top_buckets=2, min_votes=2).predict(
        test.features, k=5)
    np.testing.assert_array_equal(np.load(tmp_path / "approx_ids.npy"), ids)
    np.testing.assert_allclose(np.load(tmp_path / "approx_scores.npy"), scores, rtol=1e-5)
