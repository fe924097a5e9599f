"""Choosing the re-ranker's mix on held-out training points: the choice against a slow numpy
reference, and a training run that records it and reads out with it."""

import json
import shutil

import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.data import sources
from mach_jax.data.csr import CsrMatrix
from mach_jax.experiment import train_and_evaluate
from mach_jax.readout import rerank_mix
from mach_jax.readout.xc_metrics import precision
from mach_jax.rerank_stage import fit_reranker
from mach_jax.storage import rerank_store

RERANK = {"shortlist_size": 20, "rerank_dim": 16, "rerank_epochs": 2, "sampled_negatives": 32,
          "mix_holdout_frac": 0.25}


def label_rows(rows, num_labels):
    indptr = np.cumsum([0] + [len(row) for row in rows])
    indices = np.array([c for row in rows for c in row], np.int32)
    return CsrMatrix(indptr.astype(np.int64), indices, np.ones(len(indices), np.float32), num_labels)


def slow_precisions(own, mach, ids, labels, mix):
    """P@1, P@3, P@5 of the shortlist ranked by own + mix * mach, one point at a time (None: the
    shortlist's own order)."""
    hits = np.zeros(5)
    for point in range(ids.shape[0]):
        slots = [j for j in range(ids.shape[1]) if np.isfinite(own[point, j])]
        if mix is not None:
            slots.sort(key=lambda j: -(own[point, j] + mix * mach[point, j]))
        ranked = [int(ids[point, j]) for j in slots][:5]
        true = set(labels[point])
        hits += [sum(c in true for c in ranked[:k]) / k for k in range(1, 6)]
    return hits[[0, 2, 4]] / ids.shape[0]


def test_held_out_rows_split_every_point_once_and_repeat_per_seed():
    train, held = rerank_mix.held_out_rows(1000, 0.1, seed=3)
    assert len(held) == 100 and len(train) == 900
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(1000))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(held) > 0)
    assert np.array_equal(held, rerank_mix.held_out_rows(1000, 0.1, seed=3)[1])
    assert not np.array_equal(held, rerank_mix.held_out_rows(1000, 0.1, seed=4)[1])
    assert len(rerank_mix.held_out_rows(1000, 0.0, seed=3)[1]) == 0
    assert len(rerank_mix.held_out_rows(3, 0.1, seed=3)[1]) == 0  # rounds to none


def test_the_choice_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    num_points, size, num_labels = 60, 12, 40
    ids = np.stack([rng.permutation(num_labels)[:size] for _ in range(num_points)]).astype(np.int32)
    mach = np.sort(rng.normal(size=(num_points, size)), axis=1)[:, ::-1]  # the read-out's order
    own = rng.normal(size=(num_points, size))
    ids[:5, -3:] = num_labels  # empty slots
    own[:5, -3:], mach[:5, -3:] = -np.inf, -np.inf
    own = own - np.log(np.exp(np.where(np.isfinite(own), own, -np.inf)).sum(1, keepdims=True))
    labels = [list(rng.choice(num_labels, rng.integers(1, 4), replace=False)) for _ in range(num_points)]
    choice = rerank_mix.choose_mix(own, mach, ids, label_rows(labels, num_labels))
    reference = {"members alone": slow_precisions(own, mach, ids, labels, None)}
    for mix in rerank_mix.MIX_GRID:
        reference[f"{mix:g}"] = slow_precisions(own, mach, ids, labels, mix)
    assert set(choice.trials) == set(reference)
    for name, values in reference.items():
        np.testing.assert_allclose(choice.trials[name], values, atol=1e-6)
    totals = {name: values.sum() for name, values in reference.items()}
    best = max(totals.values())
    expected = None if totals["members alone"] == best else next(
        mix for mix in rerank_mix.MIX_GRID if totals[f"{mix:g}"] == best)
    assert choice.mix == expected and choice.num_points == num_points


def test_a_reranker_that_finds_the_true_class_is_chosen_and_one_that_buries_it_is_not():
    num_labels = 10
    ids = np.array([[3, 4, 5, 6, 7]] * 4, np.int32)
    labels = label_rows([[6], [7], [5], [6]], num_labels)
    mach = -np.arange(5.0)[None, :].repeat(4, 0)  # the read-out's order: the true class 3rd or lower
    finds = np.where(ids == np.array([6, 7, 5, 6])[:, None], 0.0, -5.0)
    chosen = rerank_mix.choose_mix(finds, mach, ids, labels)
    assert chosen.mix == 0.0 and chosen.trials["0"][0] == 1.0 and chosen.trials["members alone"][0] == 0.0
    buries = np.where(ids == np.array([6, 7, 5, 6])[:, None], -9.0, 0.0)
    assert rerank_mix.choose_mix(buries, mach, ids, labels).mix is None  # no mix beats the members alone
    flat = np.zeros_like(mach)  # no opinion: every mix ranks as the members do, and a tie keeps them alone
    assert rerank_mix.choose_mix(flat, mach, ids, labels).mix is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mix") / "run"
    metrics = train_and_evaluate(get_preset("tiny").replace(rerank=RERANK), workdir, progress=False)
    return workdir, metrics


def test_the_run_records_its_choice_and_the_members_trials_are_their_own_precision(trained):
    workdir, metrics = trained
    choice = rerank_store.read_record(workdir)["mix_choice"]
    assert metrics["rerank_mix_choice"] == choice and choice["num_points"] == 150  # a quarter of 600
    assert MachEnsemble.load(workdir).info.num_train_points == 450  # the members never saw them
    config = get_preset("tiny").replace(rerank=RERANK)
    train, _, _ = sources.load_train_eval(config.data)
    _, held = rerank_mix.held_out_rows(train.num_points, 0.25, config.train.seed)
    alone = MachEnsemble.load(workdir, reranker="off")
    _, ids = alone.predict(train.features.take(held), k=5)
    np.testing.assert_allclose(choice["trials"]["members alone"],
                               precision(train.labels.take(held), ids, 5)[[0, 2, 4]], atol=1e-6)
    totals = {name: sum(values) for name, values in choice["trials"].items()}
    assert totals[rerank_mix.MEMBERS_ALONE if choice["mix"] is None else f"{choice['mix']:g}"] == max(totals.values())
    if choice["mix"] is not None:  # the on-device re-ranked read-out agrees with the host's trial
        _, ids = MachEnsemble.load(workdir).predict(train.features.take(held), k=5)
        np.testing.assert_allclose(choice["trials"][f"{choice['mix']:g}"],
                                   precision(train.labels.take(held), ids, 5)[[0, 2, 4]], atol=1e-6)


def with_choice(workdir, tmp_path, mix):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    path = rerank_store.record_path(copy)
    record = json.loads(path.read_text())
    record["mix_choice"]["mix"] = mix
    path.write_text(json.dumps(record))
    return copy


def test_the_read_out_uses_the_chosen_mix_unless_one_is_given(trained, tmp_path):
    workdir, _ = trained
    copy = with_choice(workdir, tmp_path, 0.5)
    assert MachEnsemble.load(copy).reranker.mix == 0.5
    assert MachEnsemble.load(copy, rerank_mix=2.0).reranker.mix == 2.0


def test_members_alone_chosen_reads_out_without_the_reranker(trained, tmp_path):
    workdir, _ = trained
    copy = with_choice(workdir, tmp_path, None)
    ensemble = MachEnsemble.load(copy)
    _, test = sources.load_datasets(ensemble.config.data)
    assert ensemble.reranker is None
    alone = MachEnsemble.load(copy, reranker="off").evaluate(test, progress=False)
    assert ensemble.evaluate(test, progress=False)["P@5"] == alone["P@5"]
    assert MachEnsemble.load(copy, rerank_mix=1.0).reranker is not None  # a given mix uses it anyway


def test_a_finished_reranker_without_its_choice_makes_it_on_rerun_without_training(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    path = rerank_store.record_path(copy)
    record = json.loads(path.read_text())
    expected = record.pop("mix_choice")
    path.write_text(json.dumps(record))  # as if stopped between the last epoch and the choice
    checkpoints_before = sorted(p.name for p in (copy / "rerank" / "checkpoints").iterdir())
    config = get_preset("tiny").replace(rerank=RERANK)
    train, _, _ = sources.load_train_eval(config.data)
    fit_reranker(config, [copy], train, progress=False)
    assert rerank_store.read_record(copy)["mix_choice"] == expected
    assert sorted(p.name for p in (copy / "rerank" / "checkpoints").iterdir()) == checkpoints_before


def test_the_rerank_command_refuses_to_change_the_held_out_share(trained):
    from mach_jax import rerank
    from mach_jax.errors import ConfigError
    workdir, _ = trained
    with pytest.raises(ConfigError, match="mix-holdout-frac is fixed when the members train"):
        rerank.main(["--workdir", str(workdir), "--mix-holdout-frac", "0.5", "--quiet"])


@pytest.mark.parametrize("damaged", ["a lot", {"mix": -1}, {"mix": "0.5"}, [0.5], {"mix": True}])
def test_a_damaged_choice_in_the_record_is_one_error_naming_the_file(trained, tmp_path, damaged):
    from mach_jax.errors import WorkdirError
    workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    path = rerank_store.record_path(copy)
    record = json.loads(path.read_text())
    record["mix_choice"] = damaged
    path.write_text(json.dumps(record))
    with pytest.raises(WorkdirError, match="rerank.json: mix_choice holds"):
        MachEnsemble.load(copy)
    assert MachEnsemble.load(copy, rerank_mix=1.0).reranker.mix == 1.0  # a given mix needs no choice
