"""The library training loop: determinism, resuming, the Python API for notebooks."""

import contextlib
import logging

import jax
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.core import ensemble_spec
from mach_jax import experiment
from mach_jax.data import prepare
from mach_jax.training import loop as trainer
from mach_jax.data.synthetic import make_synthetic

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(TINY.data.synthetic)


def leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def test_same_seed_same_parameters_and_resume_equals_uninterrupted(tmp_path, data):
    train, _ = data
    full, _ = trainer.train(TINY, tmp_path / "full", train, progress=False)
    again, _ = trainer.train(TINY, tmp_path / "again", train, progress=False)
    one_epoch = TINY.replace(train={"epochs": 1})
    trainer.train(one_epoch, tmp_path / "resumed", train, progress=False)
    resumed, _ = trainer.train(TINY, tmp_path / "resumed", train, progress=False)
    for a, b, c in zip(leaves(full), leaves(again), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_another_seed_gives_other_parameters(tmp_path, data):
    train, _ = data
    first, _ = trainer.train(TINY, tmp_path / "a", train, progress=False)
    second, _ = trainer.train(TINY.replace(train={"seed": 1}), tmp_path / "b", train, progress=False)
    assert not np.allclose(leaves(first)[0], leaves(second)[0])


def test_python_api_train_load_predict(tmp_path, data):
    train, test = data
    metrics = experiment.train_and_evaluate(TINY, tmp_path / "run", progress=False)
    ensemble = MachEnsemble.load(tmp_path / "run")
    scores, ids = ensemble.predict(test.features, k=5)
    assert ids.shape == (test.num_points, 5) and scores.shape == (test.num_points, 5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    hits = [len(set(ids[n, :1]) & set(test.labels.indices[test.labels.indptr[n]:test.labels.indptr[n + 1]]))
            for n in range(test.num_points)]
    assert np.mean(hits) == pytest.approx(metrics["P@1"], abs=1e-6)
    assert metrics["P@1"] > 0.3  # far above chance (1/300) on the learnable synthetic data


def test_training_lowers_the_loss(tmp_path, data):
    from mach_jax.training.metric_log import read_records

    train, _ = data
    trainer.train(TINY.replace(train={"epochs": 4}), tmp_path / "run", train, progress=False)
    losses = [r["loss"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < 0.9 * losses[0]


def test_progress_bars_for_reading_training_and_evaluation_and_quiet_silences_them(tmp_path, data, capsys):
    from mach_jax import evaluate
    from mach_jax.data.xc_format import write_xc

    train, test = data
    write_xc(tmp_path / "train.txt", train)
    write_xc(tmp_path / "test.txt", test)
    files = {"train_path": str(tmp_path / "train.txt"), "test_path": str(tmp_path / "test.txt"),
             "cache_dir": str(tmp_path / "cache")}
    config = TINY.replace(data=files, train={"epochs": 1})
    capsys.readouterr()
    experiment.train_and_evaluate(config, tmp_path / "run", progress=True)
    shown = capsys.readouterr().err
    for bar in ("read train.txt", "read test.txt", "train:", "evaluate:"):
        assert bar in shown
    experiment.train_and_evaluate(config.replace(train={"epochs": 2}), tmp_path / "run", progress=False)
    assert evaluate.main(["--workdir", str(tmp_path / "run"), "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(tmp_path / "run")]) == 0
    shown = capsys.readouterr().err
    assert "read test.txt" in shown and "evaluate:" in shown


@contextlib.contextmanager
def compilations(name: str):
    """Collects the messages of JAX compiling ``jit(name)`` in the block (a compile-cache hit counts too)."""
    found = []

    class Recorder(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(f"Compiling jit({name})"):
                found.append(record.getMessage())

    logger = logging.getLogger("jax")
    handler, level = Recorder(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles():
            yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_train_step_compiles_once_across_epochs_and_the_partial_last_batch(tmp_path, data, fresh_steps):
    train, _ = data
    assert train.num_points % TINY.train.batch_size != 0  # the last batch is partial
    with compilations("train_step") as compiled:
        trainer.train(TINY.replace(train={"epochs": 3}), tmp_path / "run", train, progress=False)
    assert len(compiled) == 1


def test_feature_hashing_uses_per_member_seeds(tmp_path, data):
    import mmh3


    train, test = data
    config = TINY.replace(model={"feat_hash_dim": 64})
    params, info = trainer.train(config, tmp_path / "run", train, progress=False)
    assert jax.tree.leaves(params["embedding"])[0].shape == (4, 64, 32)  # [R, feat_hash_dim, H]
    ensemble = MachEnsemble(config, info, params, prepare.label_counts(train))
    batch = {"feat_ids": np.arange(400, dtype=np.int32)[None, :]}
    slots = np.asarray(ensemble_spec.member_feature_ids(batch, ensemble.seeds, ensemble.spec))
    seed = config.model.feature_hash_seed
    for r in range(4):
        expected = [mmh3.hash(f.to_bytes(4, "little"), seed + r, signed=False) % 64 for f in range(400)]
        np.testing.assert_array_equal(slots[r, 0], expected)
    assert ensemble.evaluate(test, progress=False)["P@1"] > 0.1


def test_loading_a_workdir_logs_no_read_only_warning(tmp_path, data, caplog):
    """Orbax warns that a read-only checkpoint directory is read only; evaluation asked for that."""
    train, _ = data
    trainer.train(TINY.replace(train={"epochs": 1}), tmp_path / "run", train, progress=False)
    with caplog.at_level("INFO"):
        MachEnsemble.load(tmp_path / "run")
    assert not [r for r in caplog.records if "read only" in r.getMessage()]


def test_per_epoch_evaluations_build_one_read_out_and_compile_its_step_once(tmp_path, monkeypatch, fresh_steps):
    config = get_preset("tiny").replace(train={"epochs": 3, "eval_every_epochs": 1})
    built, real_init = [], MachEnsemble.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(MachEnsemble, "__init__", counting_init)
    with compilations("eval_step") as compiled:
        metrics = experiment.train_and_evaluate(config, tmp_path / "w", progress=False)
    monkeypatch.undo()
    assert len(built) == 1 and len(compiled) == 1  # 2 per-epoch evaluations + the final
    from mach_jax.training.metric_log import metrics_log_file, read_records
    evals = [r for r in read_records(metrics_log_file(tmp_path / "w")) if r["kind"] == "eval"]
    assert len(evals) == 3
    _, test = make_synthetic(config.data.synthetic)
    again = MachEnsemble.load(tmp_path / "w").evaluate(test, progress=False)
    assert [again[f"P@{k}"] for k in (1, 3, 5)] == [metrics[f"P@{k}"] for k in (1, 3, 5)]
