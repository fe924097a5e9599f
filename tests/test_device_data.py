"""data.device_data and train.steps_per_call: the training set resident on the device, several
steps per jitted call. Its batches equal the host's bit for bit, training on it ends in the host
path's parameters and losses (dense and lazy updates, a partial last batch, S = 1, 3 and calls
longer than an epoch), logs, checkpoints and evaluations fall at the same steps, an interrupted
run resumes exactly, and "auto" resolves as documented."""

import contextlib
import functools
import logging
import os
import signal

import jax
import numpy as np
import pytest
from support import batch_fits

from mach_jax import get_preset
from mach_jax.core import backend
from mach_jax.data import batches
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.errors import TrainingInterrupted
from mach_jax.storage import checkpoints
from mach_jax.training import device_data, lazy_caps, multi_step
from mach_jax.data.prepare import prepare_train_data
from mach_jax.training import loop as trainer
from mach_jax.training.resolve import resolve_run
from mach_jax.training.metric_log import read_records
from mach_jax.training.resource_check import Budget

TINY = get_preset("tiny")
TRAIN, _ = make_synthetic(TINY.data.synthetic)  # 600 points: 10 batches of 64, the last one of 24
SHAPE = batches.BatchShape(64, batches.widest_row(TRAIN.features), batches.widest_row(TRAIN.labels))
# Logs every 5 steps, checkpoints every 7 (mid-epoch), evaluates every epoch, 3 epochs of 10 steps.
BASE = {"epochs": 3, "checkpoint_every_steps": 7, "eval_every_epochs": 1, "keep_checkpoints": 10}
SAVE_STATE = checkpoints.save_state
LAZY = {"model": {"input_layer": "sparse"}, "train": {"embedding_update": "lazy"}}


def config_for(device: str, steps_per_call: int = 0, lazy: bool = False, **train):
    sections = {"model": LAZY["model"]} if lazy else {}
    train = dict(BASE, **(LAZY["train"] if lazy else {}), steps_per_call=steps_per_call, **train)
    return TINY.replace(data={"device_data": device}, train=train, **sections)


@pytest.fixture
def small_caps(monkeypatch):
    """Lazy caps measured on batch 0 alone, without margin: about half the batches exceed them."""
    monkeypatch.setattr(lazy_caps, "batch_caps", functools.partial(
        lazy_caps.batch_caps, max_batches=1, margin=1.0, multiple=1))


def run(workdir, config, monkeypatch):
    """Trains with a stand-in evaluator; returns what must not depend on where the data lives."""
    saved, evaluated = [], []
    monkeypatch.setattr(checkpoints, "save_state",
                        lambda manager, step, *a, **k: saved.append(step) or SAVE_STATE(manager, step, *a, **k))

    def evaluator(*_):
        return lambda params, label_table, progress: evaluated.append(1) or {"P@1": 0.5}

    params, _ = trainer.run_training(resolve_run(config, TRAIN), workdir, progress=False, evaluator=evaluator)
    records = read_records(workdir / "metrics.jsonl")
    return {"params": [np.asarray(leaf) for leaf in jax.tree.leaves(params)], "saved": saved,
            "train": [(r["step"], r["loss"], r["member_loss"]) for r in records if r["kind"] == "train"],
            "eval": [r["step"] for r in records if r["kind"] == "eval"], "evaluations": len(evaluated)}


def assert_same_run(got, want):
    assert got["saved"] == want["saved"] and got["eval"] == want["eval"]
    assert got["train"] == want["train"] and got["evaluations"] == want["evaluations"]
    for a, b in zip(got["params"], want["params"], strict=True):
        np.testing.assert_array_equal(a, b)


_HOST_RUNS = {}


def host_run(tmp_path_factory, monkeypatch, lazy: bool, **train):
    key = (lazy, tuple(sorted(train.items())))
    if key not in _HOST_RUNS:
        _HOST_RUNS[key] = run(tmp_path_factory.mktemp("host"), config_for("off", lazy=lazy, **train), monkeypatch)
    return _HOST_RUNS[key]


def test_on_device_batches_equal_the_host_batches():
    data = TRAIN
    rows = device_data.StepRows(data.num_points, SHAPE.batch_size, seed=3)
    resident = jax.device_put(device_data.padded_arrays(data, SHAPE, multiple=4))  # 600 -> 600 rows
    assert resident["feat_ids"].shape == (600, SHAPE.max_nnz)
    gather = jax.jit(device_data.gather_batch)
    for epoch in range(3):
        for index, want in enumerate(batches.train_batches(data, SHAPE, seed=3, epoch=epoch)):
            step_rows = rows(range(epoch * 10 + index, epoch * 10 + index + 1), 1)[0]
            got = gather(resident, step_rows)
            assert got.keys() == want.keys()
            for name in want:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} {epoch}/{index}")
    padded = device_data.padded_arrays(data, SHAPE, multiple=7)  # 602 rows: two empty rows past P
    assert len(padded["feat_ids"]) == 602 and not padded["feat_vals"][600:].any()
    assert not padded["label_mask"][600:].any()


def test_epoch_fits_equals_batch_fits_on_every_batch():
    values = TRAIN.features.values.copy()
    values[::7] = 0  # explicit zeros touch no row
    features = CsrMatrix(TRAIN.features.indptr, TRAIN.features.indices, values, TRAIN.features.num_cols)
    data = XCDataset(features, TRAIN.labels, TRAIN.source)
    caps = lazy_caps.batch_caps(features, 64, seed=0, max_batches=1, margin=1.0, multiple=1)
    with contextlib.closing(lazy_caps.CapRouter(features, 64, 0, caps, epochs=3)) as router:
        fits = [router.fits(step) for step in range(30)]
    want = [batch_fits(batch, caps) for epoch in range(3)
            for batch in batches.train_batches(data, SHAPE, seed=0, epoch=epoch)]
    assert fits == want and 0 < sum(fits) < 30  # some batches past the caps, some within
    for caps in [(10**6, 0), (0, 10**6)]:  # each cap checked: entries, then distinct rows
        assert not lazy_caps.epoch_fits(features, np.arange(600), 64, caps).any()


@pytest.mark.parametrize("steps_per_call, lazy, train", [
    (3, False, {}),  # calls of 3 and shorter ones before the log, checkpoint and evaluation steps
    # Calls of 15 steps through the ends of epochs of 10 (no evaluations to stop them there).
    (15, False, {"log_every_steps": 15, "checkpoint_every_steps": 15, "eval_every_epochs": 0}),
    (1, True, {}),  # lazy updates, with the batches past the caps on the uncapped step
], ids=["S3", "S15-across-epochs", "S1-lazy-past-caps"])
def test_device_data_trains_as_the_host_path(tmp_path, tmp_path_factory, monkeypatch, request, steps_per_call,
                                             lazy, train):
    if lazy:
        request.getfixturevalue("small_caps")
    want = host_run(tmp_path_factory, monkeypatch, lazy, **train)
    got = run(tmp_path / "device", config_for("on", steps_per_call, lazy, **train), monkeypatch)
    assert_same_run(got, want)
    assert want["eval"] == ([30] if "eval_every_epochs" in train else [10, 20, 30])


def test_an_interrupted_device_run_resumes_to_the_uninterrupted_result(tmp_path, tmp_path_factory, monkeypatch):
    want = host_run(tmp_path_factory, monkeypatch, False)
    calls = []
    original = multi_step.MultiStep._call

    def interrupting(self, compiled, rows, count, state):
        calls.append(int(count))
        if len(calls) == 5:  # the call of steps 10-13: the signal arrives during it
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, compiled, rows, count, state)

    monkeypatch.setattr(multi_step.MultiStep, "_call", interrupting)
    with pytest.raises(TrainingInterrupted) as stopped:
        run(tmp_path / "run", config_for("on", 3), monkeypatch)
    assert stopped.value.step == 13 and calls == [3, 2, 2, 3, 3]  # to steps 3, 5, 7, 10, 13
    monkeypatch.setattr(multi_step.MultiStep, "_call", original)
    resumed = run(tmp_path / "run", config_for("on", 3), monkeypatch)
    for a, b in zip(resumed["params"], want["params"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["eval"] == want["eval"] and resumed["saved"] == [14, 21, 28, 30]


def test_calls_stop_at_every_boundary_and_before_batches_past_the_caps(small_caps):
    config = config_for("on", 4, lazy=True)
    program = trainer.build_program(config, prepare_train_data(config, TRAIN)[1], TRAIN)
    boundaries = multi_step.Boundaries(30, (5, 7, 10))  # log, checkpoint, evaluation; 30 steps
    assert [boundaries.next_after(step) for step in (0, 4, 5, 7, 28)] == [5, 5, 7, 10, 30]
    with contextlib.closing(lazy_caps.CapRouter(TRAIN.features, 64, 0, program.batch_caps, epochs=3)) as router:
        steps = multi_step.MultiStep(program, {}, device_data.StepRows(600, 64, 0), boundaries, 4, router)
        step, ends = 0, []
        while step < 30:
            count, compiled, width = steps.plan(step)
            if router.fits(step):  # up to 4 steps, all within the caps, on the capped programs
                assert compiled is (steps._full if count == 4 else steps._short) and width == 4
                assert 1 <= count <= 4 and all(router.fits(s) for s in range(step, step + count))
            else:  # alone, on the host path's uncapped step
                assert (count, compiled, width) == (1, program.uncapped_train_step, 1)
            step += count
            ends.append(step)
    assert {5, 7, 10, 14, 15, 20, 21, 25, 28, 30} <= set(ends) and len(ends) > 10


def test_auto_resolves_by_the_devices_free_memory_and_is_off_on_cpu(tmp_path, monkeypatch, caplog):
    need = device_data.resident_bytes(600, SHAPE)
    assert need == 8 * 600 * (SHAPE.max_nnz + SHAPE.max_labels)
    assert device_data.resolve("auto", 600, SHAPE, 1, Budget(None, 1 << 40))[0] is False  # CPU
    assert device_data.resolve("auto", 600, SHAPE, 1, Budget(4 * need, 0))[0] is True
    assert device_data.resolve("auto", 600, SHAPE, 1, Budget(4 * need - 1, 0))[0] is False
    assert device_data.resolve("auto", 600, SHAPE, 2, Budget(2 * need, 0))[0] is True  # half each
    assert device_data.resolve("on", 600, SHAPE, 1, Budget(None, 0)) == (True, "data.device_data=on")
    assert device_data.resolve("off", 600, SHAPE, 1, Budget(1 << 40, 0))[0] is False
    assert multi_step.steps_per_call(TINY) == min(backend.default_steps_per_call(), 5)  # log every 5
    assert multi_step.steps_per_call(TINY.replace(train={"steps_per_call": 3})) == 3
    with caplog.at_level(logging.INFO, logger="mach_jax"):
        trainer.train(TINY.replace(train={"epochs": 1}), tmp_path / "auto", TRAIN, progress=False)
    assert "training data from the host (data.device_data=auto: the host path on a device without " \
           "its own memory (CPU)), one step per call" in caplog.messages
