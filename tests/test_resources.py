"""Resource checks before allocating (issue: never stuck, never losing a file), case 6.

A header declaring a table that cannot be allocated (D = 2^31 - 1 or 10^8), L = 2^31 - 1, or one
row of 10^6 features used to hang the first step or crash with a memory traceback. Now
``experiment.train_and_evaluate`` estimates the run's memory (``training.resources``) once the
data is loaded and refuses it in one line, with the values of the flags that would fit, before
anything is allocated or written; a run that fits logs its parameters and state at start-up.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import cli, train as train_command
from mach_jax.config import Config, get_preset
from mach_jax.core import model
from mach_jax.core.mesh import make_mesh
from mach_jax.data import sources
from mach_jax.data.prepare import prepare_train_data, filled_from_data
from mach_jax.errors import ResourceError
from mach_jax.training import optimizer, resource_check, resources
from mach_jax.training.program import build_program
from mach_jax.training.resource_check import Budget
from mach_jax.training.spec import step_spec
from support import run_in_process

GiB = 1 << 30
SMALL_MACHINE = Budget(device=None, host=4 * GiB)  # a laptop with 4 GiB free


def write_xc(path: Path, num_features: int, num_labels: int, wide_row: int = 0) -> Path:
    """12 points of 2 features and 2 labels each; with ``wide_row``, point 0 has that many features."""
    lines = [f"12 {num_features} {num_labels}"]
    for i in range(12):
        features = range(wide_row) if i == 0 and wide_row else sorted({i % 10, (i * 7 + 3) % 10})
        lines.append(f"{i % 6},{(i + 1) % 6} " + " ".join(f"{k}:1" for k in features))
    path.write_text("\n".join(lines) + "\n")
    return path


def train(tmp_path: Path, data: Path, *flags: str):
    return run_in_process("mach_jax.train", "--preset", "tiny", "--train", str(data), "--test", str(data),
                          "--workdir", "w", "--quiet", *flags, cwd=tmp_path, check=False)


def refusal(result, tmp_path: Path) -> str:
    """The one error line of a refused run; nothing was written."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: not enough memory: ")
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "w").exists()
    return lines[-1]


@pytest.fixture
def small_machine(monkeypatch):
    monkeypatch.setattr(resource_check, "memory_budget", lambda: SMALL_MACHINE)


def suggested(message: str, flag: str) -> int:
    return int(re.search(rf"(?:with |or ){re.escape(flag)} (\d+)", message).group(1))


def test_case6_header_d_2_31_is_refused_in_one_line_on_any_machine(tmp_path):
    # 4 members x 2^31 x 32 floats with two Adam moments: 3 TiB, more than any machine has free,
    # and as much again while it is created (the weights' random draws) or restored (host buffers).
    message = refusal(train(tmp_path, write_xc(tmp_path / "d.txt", 2**31 - 1, 6)), tmp_path)
    assert "needs about 6.0 TiB" in message and "(in " in message
    assert f"R=4 x [2147483647 x 32] (D=2147483647 from the header of {tmp_path / 'd.txt'}:1)" in message
    assert re.search(r"\), but (host RAM|each [A-Z]+ \(.*\)) has [\d.]+ [KMGT]?i?B free; ", message)
    assert "it fits with --feat-hash-dim " in message


def test_case6_header_d_1e8_is_refused_with_a_feat_hash_dim_that_fits(tmp_path, small_machine):
    result = train(tmp_path, write_xc(tmp_path / "d.txt", 10**8, 6))
    message = refusal(result, tmp_path)
    assert "needs about 286 GiB" in message and "Adam moments 95.4 GiB + parameters 47.7 GiB" in message
    assert "but host RAM has 4.0 GiB free" in message
    assert "model: R=4 x (100000000x32 + 32x32) = 12.8 G parameters, state 143 GiB" in result.stderr
    config, shape = data_run(tmp_path / "d.txt")
    value = suggested(message, "--feat-hash-dim")
    hashed = config.replace(model={"feat_hash_dim": value})
    assert resource_check.fits(hashed, shape, SMALL_MACHINE)
    assert not resource_check.fits(hashed.replace(model={"feat_hash_dim": 2 * value}), shape, SMALL_MACHINE)


def test_case6_header_l_2_31_is_refused_naming_the_header(tmp_path, small_machine):
    message = refusal(train(tmp_path, write_xc(tmp_path / "l.txt", 10, 2**31 - 1)), tmp_path)
    assert f"L=2147483647 labels (the header of {tmp_path / 'l.txt'}:1)" in message
    assert "label counts and propensities alone need 64.0 GiB and no setting makes L smaller" in message


def test_case6_a_million_feature_row_is_refused_with_a_max_nnz_that_fits(tmp_path, small_machine):
    data = write_xc(tmp_path / "wide.txt", 10**6, 6, wide_row=10**6)
    message = refusal(train(tmp_path, data), tmp_path)
    assert f"training point 0 ({data}:2) has 1000000" in message
    assert "rows are padded to K=1000000 features (training) and 1048576 (evaluation)" in message
    config, shape = data_run(data)
    value = suggested(message, "--max-nnz")
    assert resource_check.fits(config.replace(data={"max_nnz": value}), shape, SMALL_MACHINE)
    assert not resource_check.fits(config.replace(data={"max_nnz": 2 * value}), shape, SMALL_MACHINE)


def data_run(path: Path) -> tuple[Config, resources.RunShape]:
    config = get_preset("tiny").replace(data={"train_path": str(path), "test_path": str(path)})
    train_data, test_data = sources.load_datasets(config.data)
    return filled_from_data(config, train_data), resources.run_shape(train_data, test_data)


def tiny_run(**sections) -> tuple[Config, resources.RunShape, object, object]:
    config = get_preset("tiny").replace(**sections).validate()
    train_data, test_data = sources.load_datasets(config.data)
    config = filled_from_data(config, train_data)
    prepared, info = prepare_train_data(config, train_data)
    return config, resources.run_shape(train_data, test_data, config.data.max_nnz), prepared, info


@pytest.mark.parametrize("max_nnz", [None, 3])
def test_the_start_up_check_and_the_trained_step_count_the_same_entries_and_pick_the_same_rule(max_nnz):
    config, shape, _, info = tiny_run(data={"max_nnz": max_nnz},
                                      model={"input_layer": "sparse", "num_buckets": 16})
    rows = sources.load_datasets(config.data)[0].features
    widths = np.diff(rows.indptr)
    expected = int(np.minimum(widths, max_nnz or widths.max()).sum())
    assert shape.feature_entries == info.feature_entries == expected
    assert info.mean_nnz == pytest.approx(expected / len(widths))
    for update in ("auto", "dense", "lazy"):
        run = config.replace(train={"embedding_update": update, "batch_size": 8})
        lazy = step_spec(run, info, make_mesh(config.model.num_repetitions)).lazy_embedding
        assert ("row-sparse (lazy)" in resources.describe_rules(run, shape)) == lazy


@pytest.mark.parametrize("sections", [
    {},  # dense input, dense Adam
    {"model": {"input_layer": "sparse"}, "train": {"embedding_update": "lazy"}},  # row-sparse Adam
    {"model": {"input_layer": "sparse"}, "train": {"embedding_optimizer": "rowwise_adagrad"}},
    {"model": {"feat_hash_dim": 96, "hidden_sizes": [32, 32]}, "train": {"weight_decay": 0.1}},
    {"model": {"precision": "bfloat16_tables"}},  # a bf16 table and its bf16 first moment
    {"model": {"input_layer": "sparse", "precision": "bfloat16_tables"}, "train": {"embedding_update": "lazy"}},
    {"model": {"input_layer": "sparse", "precision": "bfloat16_tables"},
     "train": {"embedding_optimizer": "rowwise_adagrad"}},
    {"model": {"precision": "bfloat16"}, "train": {"weight_decay": 0.1}},
], ids=["adam", "lazy_adam", "rowwise_adagrad", "hashed_two_layers_adamw", "bf16_tables_adam",
        "bf16_tables_lazy_adam", "bf16_tables_rowwise_adagrad", "bf16_adamw"])
def test_the_state_estimate_is_the_real_state(sections):
    """Parameters and optimiser state as training creates them (``optimizer.create_state``), allocated."""
    config, shape, prepared, info = tiny_run(**sections)
    members = jnp.arange(config.model.num_repetitions)
    params = model.init_params(config.model, info.num_features, members, config.train.seed)
    state = optimizer.create_state(params, build_program(config, info, prepared).spec)
    real_params = sum(leaf.size for leaf in jax.tree.leaves(state["params"]))
    real_moments = sum(leaf.nbytes for leaf in jax.tree.leaves(state["opt_state"]) if leaf.ndim)  # no counts
    parts = {p.name: p.bytes for p in resources.estimate(config, shape).parts}
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(state["params"])) == parts["parameters"]
    assert real_moments == parts[resources.moments_name(config)]
    assert f"= {resources.format_count(real_params)} parameters" in resources.describe_state(config, shape)


def test_refusal_names_the_estimate_what_is_free_and_flags_that_fit(tmp_path, monkeypatch):
    config, shape, _, _ = tiny_run()
    need = resources.estimate(config, shape).total()
    budget = Budget(None, int(need * 0.8))  # 90 % of it may be planned: about 72 % of the need
    monkeypatch.setattr(resource_check, "memory_budget", lambda: budget)
    result = run_in_process("mach_jax.train", "--preset", "tiny", "--workdir", "w", "--quiet",
                            cwd=tmp_path, check=False)
    message = refusal(result, tmp_path)
    assert f"needs about {resources.format_bytes(need)} at its peak" in message
    assert f"host RAM has {resources.format_bytes(budget.host)} free" in message
    options = resource_check.suggestions(config, shape, budget)
    assert len(options) >= 3 and message.endswith("it fits with " + ", or ".join(options))
    for option in options:  # each flag exists, and with its value the run fits
        args = train_command.parse_arguments(["--preset", "tiny", *option.split()])
        assert resource_check.fits(filled_from_data(cli.config_from_args(args), sources.load_datasets(
            config.data)[0]), shape, budget), option
    # The start-up line, logged before the check: 4 x (400 x 32 + 32 + 32 x 32 + 32) parameters.
    assert (f"model: R=4 x (400x32 + 32x32) = 55.6 K parameters, state 651 KiB (params 217 KiB + Adam "
            f"moments 434 KiB); peak memory about {resources.format_bytes(need)} (in ") in result.stderr


def test_accelerator_memory_is_per_device_and_the_members_split_over_devices(monkeypatch):
    class FakeGpu:
        platform, device_kind = "gpu", "NVIDIA H200"

        def memory_stats(self):
            return {"bytes_limit": 10 * GiB, "bytes_in_use": GiB}

    monkeypatch.setattr(jax, "local_devices", lambda: [FakeGpu()])
    budget = resource_check.memory_budget()
    assert (budget.device, budget.device_name) == (9 * GiB, "each GPU (NVIDIA H200)")
    config, shape, _, _ = tiny_run()
    config = config.replace(model={"num_repetitions": 8}, data={"max_nnz": 64})
    whole, halves = resources.estimate(config, shape), resources.estimate(config, shape, rep_shards=2)
    state = ("parameters", "Adam moments")
    assert [2 * p.bytes for p in halves.parts if p.name in state] == [p.bytes for p in whole.parts if p.name in state]
    # A device too small for 8 members but large enough for 2: four devices of this size would do.
    per_member = whole.total(True) / 8
    small = Budget(int(3 * per_member / resource_check.FIT_FRACTION), 64 * GiB, "each GPU (test)")
    assert resource_check.suggestions(config, shape, small)[-1] == "4 devices of this size"


def test_host_memory_is_what_meminfo_and_the_cgroup_leave(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text("MemTotal: 900 kB\nMemAvailable:   1000 kB\n")
    (tmp_path / "max").write_text("614400\n")
    (tmp_path / "current").write_text("102400\n")
    monkeypatch.setattr(resource_check, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(resource_check, "CGROUP_FILES", ((tmp_path / "max", tmp_path / "current"),))
    assert resource_check.host_available() == 512000  # the cgroup's 600 KiB less 100 KiB in use
    (tmp_path / "max").write_text("max\n")
    assert resource_check.host_available() == 1000 * 1024


def test_a_tf_idf_input_over_a_huge_d_is_blamed_on_its_idf_not_on_l():
    config = get_preset("tiny").replace(data={"input_transform": "tfidf_l2"}, model={"feat_hash_dim": 1000})
    shape = resources.RunShape(num_features=2**31 - 1, num_labels=6, num_train_points=12, widest_features=2,
                               widest_labels=2, widest_features_row=0, eval_widest_features=2,
                               eval_widest_labels=2, eval_widest_features_row=0, train_bytes=500)
    with pytest.raises(ResourceError) as refused:
        resource_check.require_fits(config, shape, "train.txt", SMALL_MACHINE)
    message = str(refused.value)
    assert "feature idf [D] 24.0 GiB + " in message and "L=6" not in message
    assert "D=2147483647 features (the header of train.txt:1) and a tf-idf input, whose idf is [D]" in message
    assert message.endswith("it fits with --input-transform log1p_l2")


def test_a_large_state_is_announced_before_it_is_created_and_compiled(tmp_path, monkeypatch, caplog):
    from mach_jax.training import loop

    config = get_preset("tiny")
    train, _ = sources.load_datasets(config.data)
    monkeypatch.setattr(loop, "_ANNOUNCED_STATE_BYTES", 1)  # every state counts as large here
    with caplog.at_level(logging.INFO, logger="mach_jax"):
        loop.train(config, tmp_path / "w", train, progress=False)
    assert any(r.getMessage().startswith("creating the training state (0.0 GiB), then compiling")
               for r in caplog.records)


@pytest.mark.parametrize("sections, rules", [
    ({}, "dense-matmul input bag, dense Adam on the embedding tables, forms=loop"),
    ({"model": {"input_layer": "sparse"}, "train": {"embedding_update": "lazy"}},
     "gathered input bag, row-sparse (lazy) Adam on the embedding tables, forms=loop"),
    ({"model": {"input_layer": "sparse"}, "train": {"embedding_optimizer": "rowwise_adagrad"}},
     "gathered input bag, row-sparse (lazy) row-wise Adagrad on the embedding tables, forms=loop"),
], ids=["dense", "lazy_adam", "rowwise_adagrad"])
def test_the_start_up_line_names_the_rules_training_uses(sections, rules):
    config, shape, prepared, info = tiny_run(**sections)
    assert resources.describe_rules(config, shape) == rules
    assert build_program(config, info, prepared).spec.lazy_embedding == ("row-sparse" in rules)


def test_evaluate_and_predict_refuse_a_file_too_wide_for_memory_naming_an_eval_batch_size(tmp_path, monkeypatch):
    from mach_jax import MachEnsemble
    from mach_jax.data.xc_format import read_xc
    from mach_jax.training import eval_resources

    write_xc(tmp_path / "train.txt", 5000, 6)
    wide_file = write_xc(tmp_path / "wide.txt", 5000, 6, wide_row=5000)
    run_in_process("mach_jax.train", "--preset", "tiny", "--train", "train.txt", "--test", "train.txt",
                   "--workdir", "w", "--quiet", cwd=tmp_path)
    ensemble, wide = MachEnsemble.load(tmp_path / "w"), read_xc(wide_file, use_cache=False)
    need = eval_resources.evaluation_estimate(
        ensemble.config, eval_resources.evaluation_shape(ensemble.info, wide.features, wide.labels), 4).total()
    budget = Budget(device=None, host=int(need * 0.5))  # half of what the default batch of 256 needs
    monkeypatch.setattr(eval_resources, "memory_budget", lambda: budget)
    monkeypatch.setattr("mach_jax.training.resource_check.memory_budget", lambda: budget)
    for command in (["mach_jax.evaluate", "--workdir", "w", "--test", "wide.txt"],
                    ["mach_jax.predict", "--workdir", "w", "--input", "wide.txt", "--output", "top.txt"]):
        result = run_in_process(*command, "--quiet", cwd=tmp_path, check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
            "error: not enough memory to read out wide.txt: about "), result.stderr
        assert "its widest point has 5,000 features (every batch is padded to it)" in result.stderr
    assert not (tmp_path / "top.txt").exists()
    batch = int(re.search(r"--eval-batch-size (\d+)", result.stderr).group(1))
    assert 1 <= batch < 256
    sized = ensemble.config.replace(eval={"eval_batch_size": batch})
    assert eval_resources.evaluation_estimate(
        sized, eval_resources.evaluation_shape(ensemble.info, wide.features, None), 4).total() <= 0.9 * budget.host
    fits = run_in_process("mach_jax.evaluate", "--workdir", "w", "--test", "wide.txt", "--quiet",
                          "--eval-batch-size", str(batch), cwd=tmp_path, check=False)
    assert fits.returncode == 0, fits.stderr
    # The training file (2 features a point) reads out with the default batch in the same memory.
    assert run_in_process("mach_jax.evaluate", "--workdir", "w", "--test", "train.txt", "--quiet",
                          cwd=tmp_path, check=False).returncode == 0
