"""core.compiled: runs and read-outs of one process with the same spec share their jitted steps,
and sharing changes nothing but the time."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.core import compiled
from mach_jax.data import prepare
from mach_jax.data.synthetic import make_synthetic
from mach_jax.training import loop as trainer
from mach_jax.training.program import build_program


def program(config):
    train, _ = make_synthetic(config.data.synthetic)
    data, info = prepare.prepare_train_data(config, train)
    return build_program(config, info, data)


@pytest.mark.parametrize("overrides", [
    {},
    {"model": {"input_layer": "sparse"}, "train": {"embedding_update": "lazy"}},
    {"model": {"input_layer": "sparse", "feat_hash_dim": 64}, "train": {"embedding_optimizer": "rowwise_adagrad"}},
    {"model": {"hidden_sizes": [16, 16]}, "train": {"dropout": 0.3, "label_smoothing": 0.1, "lr_schedule": "cosine"}},
], ids=["dense", "lazy", "hashed-adagrad", "dropout-cosine"])
def test_equal_configs_share_their_steps_and_others_do_not(fresh_steps, overrides):
    config = get_preset("tiny").replace(**overrides)
    first, second = program(config), program(config)
    assert first.train_step is second.train_step and first.create_state is second.create_state
    assert first.uncapped_train_step is second.uncapped_train_step
    other = program(config.replace(train={"learning_rate": 0.5}))
    assert other.train_step is not first.train_step


def test_a_config_built_with_lists_shares_the_steps_of_one_built_with_tuples(fresh_steps):
    base = get_preset("tiny")
    listed = dataclasses.replace(base, model=dataclasses.replace(base.model, hidden_sizes=[32]),
                                 parallel=dataclasses.replace(base.parallel, rep_range=[0, 2]))
    assert listed.model.hidden_sizes == (32,) and listed.parallel.rep_range == (0, 2)
    assert program(listed).train_step is program(base.replace(parallel={"rep_range": (0, 2)})).train_step


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_constant_step_size_is_shared_by_runs_of_any_length(fresh_steps, schedule):
    config = get_preset("tiny").replace(train={"lr_schedule": schedule, "warmup_steps": 3})
    longer = program(config.replace(train={"epochs": 5}))
    assert (longer.train_step is program(config).train_step) == (schedule == "constant")


def test_a_shared_step_trains_what_a_fresh_one_trains(tmp_path, fresh_steps, monkeypatch):
    config = get_preset("tiny")
    train, test = make_synthetic(config.data.synthetic)
    trainer.train(config, tmp_path / "first", train, progress=False)
    shared, _ = trainer.train(config, tmp_path / "second", train, progress=False)  # reuses the first's step
    monkeypatch.setattr(compiled, "_shared", collections.OrderedDict())
    alone, _ = trainer.train(config, tmp_path / "alone", train, progress=False)  # its own, fresh
    for leaf, reference in zip(jax.tree.leaves(shared), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference))
    one, two = MachEnsemble.load(tmp_path / "first"), MachEnsemble.load(tmp_path / "alone")
    assert one._eval_step is two._eval_step
    assert one.evaluate(test, progress=False) == two.evaluate(test, progress=False)


def test_the_least_recently_used_step_is_dropped_past_the_bound(fresh_steps):
    def scaled(x, *, factor):
        return x * factor

    steps = [compiled.shared_jit(scaled, {"factor": factor}) for factor in range(compiled.MAX_SHARED)]
    assert compiled.shared_jit(scaled, {"factor": 0}) is steps[0]  # now the most recently used
    compiled.shared_jit(scaled, {"factor": -1})  # one past the bound: drops factor 1
    assert compiled.shared_jit(scaled, {"factor": 0}) is steps[0]
    rebuilt = compiled.shared_jit(scaled, {"factor": 1})
    assert rebuilt is not steps[1] and float(rebuilt(jnp.float32(3))) == 3.0
    sharded = compiled.shared_jit(scaled, {"factor": 2}, out_shardings=jax.sharding.SingleDeviceSharding(
        jax.devices()[0]))
    assert sharded is not steps[2]  # other jit options: another function
