"""data.host_loader = "grain": Grain's items equal our thread path's bit for bit (fresh and resumed
mid-epoch), a tiny training run (stopped and resumed on Grain) ends in the same parameters and
losses, and a missing Grain is one clear ConfigError."""

import sys

import jax
import numpy as np
import pytest

from mach_jax import get_preset
from mach_jax.data import batches, grain_batches
from mach_jax.data.grain_batches import grain_batches as make_grain_batches
from mach_jax.data.synthetic import make_synthetic
from mach_jax.errors import ConfigError
from mach_jax.training import loop as trainer, updates
from mach_jax.training.metric_log import read_records

TINY = get_preset("tiny")
TRAIN, _ = make_synthetic(TINY.data.synthetic)  # 600 points: 10 batches of 64, the last one partial
SHAPE = batches.BatchShape(64, batches.widest_row(TRAIN.features), batches.widest_row(TRAIN.labels))
STEPS_PER_EPOCH = batches.num_batches(TRAIN.num_points, SHAPE.batch_size)
EPOCHS = 3


@pytest.fixture
def grain():
    return pytest.importorskip("grain")


def assert_same_items(got, expected):
    got, expected = list(got), list(expected)
    assert len(got) == len(expected)
    for (epoch, batch), (want_epoch, want) in zip(got, expected):
        assert epoch == want_epoch and batch.keys() == want.keys()
        for name in want:
            assert batch[name].dtype == want[name].dtype
            np.testing.assert_array_equal(batch[name], want[name], err_msg=name)


@pytest.mark.usefixtures("grain")
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("start_step", [0, 13, 29, 30])  # fresh, mid-epoch 1, the last step, past it
@pytest.mark.parametrize("num_threads", [0, 2])
def test_grain_items_equal_the_thread_path(seed, start_step, num_threads):
    assert STEPS_PER_EPOCH * EPOCHS == 30
    args = (TRAIN, SHAPE, seed, start_step, STEPS_PER_EPOCH, EPOCHS)
    with_grain = make_grain_batches(*args, num_threads=num_threads)
    assert_same_items(with_grain, updates.host_batches(*args))
    with_grain.close()


@pytest.mark.usefixtures("grain")
def test_grain_iterator_state_resumes_at_the_same_item():
    args = (TRAIN, SHAPE, 3, 4, STEPS_PER_EPOCH, EPOCHS)
    first = make_grain_batches(*args)
    for _ in range(9):  # to global step 13: mid-epoch 1
        next(first)
    state = first.get_state()
    resumed = make_grain_batches(*args)
    resumed.set_state(state)
    assert_same_items(resumed, updates.host_batches(TRAIN, SHAPE, 3, 13, STEPS_PER_EPOCH, EPOCHS))
    first.close()


def train_tiny(workdir, loader: str, epochs: int = 2):
    """Trains the tiny preset; returns (parameter leaves, [(step, loss, member losses)])."""
    config = TINY.replace(data={"host_loader": loader}, train={"epochs": epochs})
    params, _ = trainer.train(config, workdir, TRAIN, progress=False)
    losses = [(r["step"], r["loss"], r["member_loss"])
              for r in read_records(workdir / "metrics.jsonl") if r["kind"] == "train"]
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)], losses


@pytest.mark.usefixtures("grain")
def test_training_with_grain_equals_training_with_the_thread(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(grain_batches, "grain_batches",
                        lambda *args: built.append(args[3]) or make_grain_batches(*args))
    thread_params, thread_losses = train_tiny(tmp_path / "thread", "thread")
    train_tiny(tmp_path / "grain", "grain", epochs=1)  # then resumed at its checkpoint, mid-run
    grain_params, grain_losses = train_tiny(tmp_path / "grain", "grain")
    assert built == [0, STEPS_PER_EPOCH]  # the start steps: Grain built both runs' batches
    assert thread_losses and grain_losses == thread_losses
    for a, b in zip(thread_params, grain_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_grain_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # ``import grain`` now raises ImportError
    message = r'^data.host_loader="grain" needs Grain: pip install grain$'
    with pytest.raises(ConfigError, match=message) as error:
        make_grain_batches(TRAIN, SHAPE, 0, 0, STEPS_PER_EPOCH, EPOCHS)
    assert error.value.field == "data.host_loader"
    # The config refuses it before a run writes anything.
    with pytest.raises(ConfigError, match="needs Grain: pip install grain") as error:
        get_preset("tiny").replace(data={"host_loader": "grain"}).validate()
    assert error.value.field == "data.host_loader"


def test_auto_is_grain_on_an_accelerator_with_grain_installed_and_the_thread_on_cpu(monkeypatch):
    from mach_jax.core import backend

    assert get_preset("tiny").data.host_loader == "auto"
    assert not updates.uses_grain("auto")  # this CPU: the train step uses every core
    assert updates.uses_grain("grain") and not updates.uses_grain("thread")
    monkeypatch.setattr(backend, "current_backend", lambda: "gpu")
    assert updates.uses_grain("auto") and not updates.uses_grain("thread")
    monkeypatch.setitem(sys.modules, "grain", None)  # not installed: the thread, even on a GPU
    assert not updates.uses_grain("auto")
