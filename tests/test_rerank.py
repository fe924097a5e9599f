"""The shortlist re-ranker: its pieces against numpy, its training (resume, seeds, devices), and
the ensemble's read-out with it through evaluate, predict and export."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.core import reranker
from mach_jax.data import sources
from mach_jax.errors import ConfigError, WorkdirError
from mach_jax.experiment import train_and_evaluate
from mach_jax.readout.rerank import Reranker, mach_log_score
from mach_jax.rerank_stage import fit_reranker
from mach_jax.storage import rerank_store

RERANK = {"shortlist_size": 20, "rerank_dim": 16, "rerank_epochs": 2, "sampled_negatives": 32}


# The loss as one compiled program (jax.jit), rather than op by op: the same arithmetic.
jitted_loss = jax.jit(reranker.sampled_softmax_loss, static_argnames=("num_labels", "num_negatives", "dropout"))


def tiny_config(**rerank):
    return get_preset("tiny").replace(rerank={**RERANK, **rerank})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ensemble with a re-ranker, and its metrics."""
    workdir = tmp_path_factory.mktemp("rerank") / "run"
    metrics = train_and_evaluate(tiny_config(), workdir, progress=False)
    return workdir, metrics


def numpy_candidates(shortlist, label_ids, label_mask, num_labels):
    rows = []
    for short, ids, mask in zip(shortlist, label_ids, label_mask):
        true = [int(c) for c, m in zip(ids, mask) if m]
        extra = [c if c not in short else num_labels for c in true] + [num_labels] * (len(ids) - len(true))
        rows.append(list(short) + extra)
    candidates = np.array(rows)
    is_true = np.array([[c in [int(t) for t, m in zip(ids, mask) if m] and c < num_labels for c in row]
                        for row, ids, mask in zip(candidates, label_ids, label_mask)])
    return candidates, is_true


def test_training_candidates_add_the_missed_true_classes_once():
    shortlist = np.array([[3, 1, 7], [2, 9, 9]])  # L = 9: the second row has an empty slot
    label_ids = np.array([[1, 5, 0], [4, 0, 0]])
    label_mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    candidates, is_true = reranker.training_candidates(jnp.asarray(shortlist), jnp.asarray(label_ids),
                                                       jnp.asarray(label_mask), 9)
    want_candidates, want_true = numpy_candidates(shortlist, label_ids, label_mask, 9)
    np.testing.assert_array_equal(candidates, want_candidates)
    np.testing.assert_array_equal(is_true, want_true)
    assert candidates.tolist()[0] == [3, 1, 7, 9, 5, 9]


def test_loss_without_negatives_is_the_softmax_cross_entropy_over_the_candidates():
    rng = np.random.default_rng(0)
    num_labels, dim = 11, 4
    params = jax.tree.map(np.asarray, reranker.init_params(jax.random.key(1), 6, num_labels, dim))
    params = {name: value + rng.normal(0, 0.5, value.shape).astype(np.float32) for name, value in params.items()}
    batch = {"feat_ids": np.array([[0, 2, 5], [1, 3, 0]], np.int32),
             "feat_vals": np.array([[1.0, 0.5, 2.0], [0.3, 1.0, 0.0]], np.float32),
             "label_ids": np.array([[4, 6], [2, 0]], np.int32), "label_mask": np.array([[1, 1], [1, 0]], np.float32),
             "shortlist": np.array([[4, 1, 3], [7, 8, 11]], np.int32), "point_mask": np.array([1, 1], np.float32)}
    loss = jitted_loss(params, batch, jax.random.key(0), num_labels=num_labels, num_negatives=0, dropout=0.0)
    candidates, is_true = numpy_candidates(batch["shortlist"], batch["label_ids"], batch["label_mask"], num_labels)
    want = []
    for n in range(2):
        q = (params["feature_emb"][batch["feat_ids"][n]] * batch["feat_vals"][n][:, None]).sum(0) + params["query_bias"]
        present = candidates[n] < num_labels
        scores = params["class_emb"][candidates[n][present]] @ q + params["class_bias"][candidates[n][present]]
        log_probs = scores - np.log(np.exp(scores - scores.max()).sum()) - scores.max()
        want.append(-log_probs[is_true[n][present]].mean())
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)


def test_padding_and_unlabelled_points_do_not_count():
    params = reranker.init_params(jax.random.key(4), 6, 9, 3)
    one = {"feat_ids": np.array([[1, 2]], np.int32), "feat_vals": np.array([[1.0, 0.5]], np.float32),
           "label_ids": np.array([[3, 0]], np.int32), "label_mask": np.array([[1, 0]], np.float32),
           "shortlist": np.array([[5, 9]], np.int32), "point_mask": np.ones(1, np.float32)}
    # Beside it: a padding point, and a real point without labels and with an empty shortlist.
    three = {name: np.concatenate([value, value, value]) for name, value in one.items()}
    three["point_mask"] = np.array([1, 0, 1], np.float32)
    three["label_mask"][2] = 0
    three["shortlist"][2] = 9
    settings = {"num_labels": 9, "num_negatives": 0, "dropout": 0.0}
    alone = jitted_loss(params, one, jax.random.key(0), **settings)
    loss, grads = jax.jit(jax.value_and_grad(reranker.sampled_softmax_loss), static_argnames=tuple(settings))(
        params, three, jax.random.key(0), **settings)
    np.testing.assert_allclose(loss, alone, rtol=1e-6)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(grads))


def test_sampled_negatives_never_include_a_true_class():
    num_labels = 5  # 4 of the 5 classes are true: most draws clash
    params = reranker.init_params(jax.random.key(0), 3, num_labels, 2)
    batch = {"feat_ids": np.zeros((1, 1), np.int32), "feat_vals": np.ones((1, 1), np.float32),
             "label_ids": np.array([[0, 1, 2, 3]], np.int32), "label_mask": np.ones((1, 4), np.float32),
             "shortlist": np.array([[0]], np.int32), "point_mask": np.ones(1, np.float32)}
    zero = {name: jnp.zeros_like(value) for name, value in params.items()}
    # All scores 0: the loss is log(#candidates + #non-clashing negatives) exactly.
    loss = jitted_loss(zero, batch, jax.random.key(3), num_labels=num_labels, num_negatives=64, dropout=0.0)
    draws = jax.random.randint(jax.random.split(jax.random.key(3))[0], (64,), 0, num_labels)
    np.testing.assert_allclose(loss, np.log(4 + int((np.asarray(draws) == 4).sum())), rtol=1e-6)


def test_rerank_mixes_the_two_log_scores_and_keeps_empty_slots_last():
    rng = np.random.default_rng(2)
    num_labels, dim, members = 10, 3, 4
    params = jax.tree.map(lambda leaf: np.asarray(leaf) + rng.normal(0, 1, leaf.shape).astype(np.float32),
                          reranker.init_params(jax.random.key(0), 5, num_labels, dim))
    batch = {"feat_ids": np.array([[0, 4], [2, 3]], np.int32),
             "feat_vals": np.array([[1.0, 2.0], [0.5, 0.0]], np.float32)}
    shortlist_ids = np.array([[5, 2, 7, 1], [3, 8, num_labels, num_labels]], np.int32)
    shortlist_scores = np.array([[3.1, 2.5, 1.0, 0.2], [2.0, 0.7, -np.inf, -np.inf]], np.float32)
    scores, ids = Reranker(params, 4, 0.7, num_labels).rerank(batch, shortlist_scores, shortlist_ids, 3,
                                                              num_members=members, aggregation="prob")
    for n in range(2):
        q = (params["feature_emb"][batch["feat_ids"][n]] * batch["feat_vals"][n][:, None]).sum(0) + params["query_bias"]
        present = np.isfinite(shortlist_scores[n])
        own = params["class_emb"][shortlist_ids[n][present]] @ q + params["class_bias"][shortlist_ids[n][present]]
        log_softmax = own - np.log(np.exp(own).sum())
        mixed = log_softmax + 0.7 * np.log(shortlist_scores[n][present] / members)
        order = np.argsort(-mixed, kind="stable")[:3]
        want_ids = list(shortlist_ids[n][present][order]) + [num_labels] * (3 - len(order))
        assert list(np.asarray(ids[n])) == want_ids
        np.testing.assert_allclose(np.asarray(scores[n])[:len(order)], mixed[order], rtol=1e-5)
    assert np.isneginf(scores[1, 2])
    # A point whose shortlist is empty (a padding point): no NaN, every place empty.
    scores, ids = Reranker(params, 4, 0.7, num_labels).rerank(
        batch, np.full((2, 4), -np.inf, np.float32), np.full((2, 4), num_labels, np.int32), 3,
        num_members=members, aggregation="prob")
    assert np.isneginf(scores).all() and (np.asarray(ids) == num_labels).all()


def test_mach_log_score_per_aggregation():
    summed = jnp.array([2.0, 0.5])
    np.testing.assert_allclose(mach_log_score(summed, 4, "prob"), np.log([0.5, 0.125]), rtol=1e-6)
    np.testing.assert_allclose(mach_log_score(summed, 4, "log_prob"), [0.5, 0.125])
    assert np.isfinite(mach_log_score(jnp.array([0.0]), 4, "prob")).all()


def test_training_with_a_reranker_reports_both_and_improves_precision(trained):
    workdir, metrics = trained
    assert metrics["reranker"] == {"shortlist_size": 20, "mix": 1.0}
    without = metrics["without_reranker"]
    assert metrics["P@3"] > without["P@3"] and metrics["P@5"] > without["P@5"]
    assert json.loads((workdir / "metrics.json").read_text())["P@5"] == metrics["P@5"]
    record = rerank_store.read_record(workdir)
    assert record["finished"] and record["epochs_done"] == 2 and record["settings"]["rerank_dim"] == 16


def test_evaluate_predict_and_export_use_it_and_off_reads_the_members_alone(trained, tmp_path):
    workdir, metrics = trained
    ensemble = MachEnsemble.load(workdir)
    _, test = sources.load_datasets(ensemble.config.data)
    assert ensemble.evaluate(test, progress=False)["P@5"] == metrics["P@5"]
    alone = MachEnsemble.load(workdir, reranker="off")
    assert alone.reranker is None and alone.evaluate(test, progress=False)["P@5"] == metrics["without_reranker"]["P@5"]
    # predict: the k best of the members' own 20-class shortlist, ranked by the mixed score.
    features = test.features[:8]
    _, shortlist = alone.predict(features, k=20)
    _, ids = ensemble.predict(features, k=5)
    assert all(set(row) <= set(short) for row, short in zip(ids.tolist(), shortlist.tolist()))
    from mach_jax.readout.export import export_ensemble
    path = export_ensemble(ensemble, tmp_path / "model.stablehlo", batch_size=8, max_nnz=64, k=5)
    from mach_jax.data.batches import pad_rows
    feat_ids, feat_vals = pad_rows(features, np.arange(8), 64)
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    _, exported_ids = exported.call(jnp.asarray(feat_ids), jnp.asarray(feat_vals))
    np.testing.assert_array_equal(np.asarray(exported_ids), ids)


def test_a_finished_reranker_is_kept_and_other_settings_are_refused(trained):
    workdir, _ = trained
    train, _, _ = sources.load_train_eval(tiny_config().data)
    before = (workdir / "rerank" / "rerank.json").read_text()
    fit_reranker(tiny_config(), [workdir], train, progress=False)  # nothing to do
    assert (workdir / "rerank" / "rerank.json").read_text() == before
    with pytest.raises(WorkdirError, match="rerank_dim"):
        fit_reranker(tiny_config(rerank_dim=8), [workdir], train, progress=False)


def copy_without_reranker(workdir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("rerank"))
    return copy


def fit_until_interrupted(copy, monkeypatch, stop_at, after_writing: bool):
    """fit_reranker on ``copy``, stopped (KeyboardInterrupt) at the first record ``stop_at``
    accepts, just after or just before it is written. Returns the training data."""
    train, _, _ = sources.load_train_eval(tiny_config().data)
    real_write = rerank_store.write_record

    def write(path, record):
        if stop_at(record) and not after_writing:
            raise KeyboardInterrupt
        real_write(path, record)
        if stop_at(record):
            raise KeyboardInterrupt
    monkeypatch.setattr(rerank_store, "write_record", write)
    with pytest.raises(KeyboardInterrupt):
        fit_reranker(tiny_config(), [copy], train, progress=False)
    monkeypatch.undo()
    assert not rerank_store.read_record(copy)["finished"]
    return train


def test_an_interrupted_reranker_resumes_to_the_uninterrupted_result(trained, tmp_path, monkeypatch):
    workdir, _ = trained
    copy = copy_without_reranker(workdir, tmp_path)
    train = fit_until_interrupted(copy, monkeypatch, lambda record: record["epochs_done"] == 1, after_writing=True)
    fit_reranker(tiny_config(), [copy], train, progress=False)
    resumed, uninterrupted = MachEnsemble.load(copy).reranker.params, MachEnsemble.load(workdir).reranker.params
    for name in resumed:
        np.testing.assert_array_equal(np.asarray(resumed[name]), np.asarray(uninterrupted[name]))


def test_a_reranker_saved_but_not_recorded_as_finished_is_finished_on_rerun(trained, tmp_path, monkeypatch):
    workdir, _ = trained
    copy = copy_without_reranker(workdir, tmp_path)
    # The last epoch is saved, its record never written.
    train = fit_until_interrupted(copy, monkeypatch, lambda record: record["finished"], after_writing=False)
    assert MachEnsemble.load(copy).reranker is None  # unfinished: not used
    fit_reranker(tiny_config(), [copy], train, progress=False)
    assert rerank_store.read_record(copy)["finished"] and MachEnsemble.load(copy).reranker is not None


def test_members_trained_further_refuse_the_old_reranker(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    longer = tiny_config().replace(train={"epochs": 3})
    with pytest.raises(WorkdirError, match="members_step"):
        train_and_evaluate(longer, copy, progress=False)


def test_a_group_cannot_train_it_but_the_merged_groups_can(trained, tmp_path):
    with pytest.raises(ConfigError, match="python -m mach_jax.rerank"):
        tiny_config().replace(parallel={"rep_range": (0, 2)}).validate()
    # Two groups of the tiny ensemble's members, trained apart, then one re-ranker for all four:
    # the same members as one run, so the same shortlists, so the same re-ranker.
    workdir, _ = trained
    groups = tmp_path / "groups"
    for rep_range in ((0, 2), (2, 4)):
        train_and_evaluate(get_preset("tiny").replace(parallel={"rep_range": rep_range}), groups, progress=False)
    train, _, _ = sources.load_train_eval(tiny_config().data)
    fit_reranker(tiny_config(), [groups], train, progress=False)
    merged, single = MachEnsemble.load(groups).reranker.params, MachEnsemble.load(workdir).reranker.params
    for name in single:
        np.testing.assert_allclose(np.asarray(merged[name]), np.asarray(single[name]), rtol=1e-5, atol=1e-7)


def test_class_rows_split_over_four_devices_give_the_one_device_reranker(trained, tmp_path):
    workdir, _ = trained
    copy = copy_without_reranker(workdir, tmp_path)
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from mach_jax import get_preset
        from mach_jax.data import sources
        from mach_jax.rerank_stage import fit_reranker
        from mach_jax.readout.ensemble import MachEnsemble
        config = get_preset("tiny").replace(rerank={RERANK!r})
        train, _, _ = sources.load_train_eval(config.data)
        params = fit_reranker(config, [{str(copy)!r}], train, progress=False)
        for where, rows in (("trained", params["class_emb"]),
                            ("read out", MachEnsemble.load({str(copy)!r}).reranker.params["class_emb"])):
            shards = {{shard.data.shape[0] for shard in rows.addressable_shards}}
            print(where, len(rows.addressable_shards), "shards of", shards, "rows of", rows.shape[0])
        _, test = sources.load_datasets(config.data)
        np.save({str(copy / "ids.npy")!r}, MachEnsemble.load({str(copy)!r}).predict(test.features, k=5)[1])
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = reranker.padded_num_classes(300)  # the tiny preset's L
    for where in ("trained", "read out"):
        assert f"{where} 4 shards of {{{rows // 4}}} rows of {rows}" in result.stdout, result.stdout
    sharded, single = MachEnsemble.load(copy).reranker.params, MachEnsemble.load(workdir).reranker.params
    for name in single:
        np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(single[name]), rtol=2e-4, atol=2e-6)
    # The read-out on 4 devices (class rows split) ranks as one device does with its own copy.
    _, test = sources.load_datasets(tiny_config().data)
    np.testing.assert_array_equal(np.load(copy / "ids.npy"), MachEnsemble.load(copy).predict(test.features, k=5)[1])


def test_the_command_adds_a_reranker_to_a_trained_ensemble(trained, tmp_path):
    from support import run_in_process
    workdir, metrics = trained
    copy = copy_without_reranker(workdir, tmp_path)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in RERANK.items()]
    result = run_in_process("mach_jax.rerank", "--workdir", str(copy), "--quiet", *flags, cwd=tmp_path)
    assert "re-ranked (shortlist 20, mix 1)" in result.stdout and "without the re-ranker" in result.stdout
    written = json.loads((copy / "metrics.json").read_text())
    assert written["P@5"] == metrics["P@5"] and written["without_reranker"] == metrics["without_reranker"]
    # The training's own time is kept beside the re-ranker's.
    assert written["train_seconds"] == metrics["train_seconds"] and written["rerank_seconds"] > 0
