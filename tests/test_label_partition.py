"""Learned class -> bucket partitions: the affinity and the assignment against slow references,
the table as training state (checkpointed, resumed, exported) and every read-out that uses it."""

import json

import jax
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax import experiment
from mach_jax.core import ensemble_spec, hashing, label_partition
from mach_jax.data import batches
from mach_jax.data.synthetic import make_synthetic
from mach_jax.errors import ConfigError
from mach_jax.readout import approx_decode, decode
from mach_jax.readout.export import export_ensemble, export_params
from mach_jax.training import loop as trainer

TINY = get_preset("tiny")
LEARNED = TINY.replace(partition={"label_buckets": "learned"}, train={"epochs": 3})


def random_top(seed: int, num_points: int, num_buckets: int, m: int):
    rng = np.random.default_rng(seed)
    top = np.stack([rng.choice(num_buckets, m, replace=False) for _ in range(num_points)])
    scores = rng.dirichlet(np.ones(m), num_points) * rng.uniform(0.2, 1.0, (num_points, 1))
    return top, scores


def random_labels(seed: int, num_points: int, num_labels: int):
    rng = np.random.default_rng(seed)
    rows = [rng.choice(num_labels, rng.integers(0, 4), replace=False) for _ in range(num_points)]
    indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
    return indptr, np.concatenate(rows).astype(np.int32)


def test_affinities_equal_a_dense_sum_over_each_class_points():
    num_points, num_labels, num_buckets, m = 60, 25, 12, 4
    top, scores = random_top(0, num_points, num_buckets, m)
    indptr, indices = random_labels(1, num_points, num_labels)
    dense = np.zeros((num_labels, num_buckets))  # the [L, B] array the sparse form never builds
    for n in range(num_points):
        for c in indices[indptr[n]:indptr[n + 1]]:
            dense[c, top[n]] += scores[n]
    classes, buckets, affinity = label_partition.label_affinities(top, scores, indptr, indices, num_buckets)
    expected = [(c, b, dense[c, b]) for c in range(num_labels)
                for b in sorted(np.flatnonzero(dense[c]), key=lambda b: (-dense[c, b], b))]
    assert [(int(c), int(b)) for c, b, _ in expected] == list(zip(classes.tolist(), buckets.tolist()))
    np.testing.assert_allclose(affinity, [a for _, _, a in expected], rtol=1e-12)


def slow_assignment(preferences, current, num_buckets, choices, capacity, order):
    """The assignment rule of ``label_partition``'s docstring, one class at a time."""
    placed = {c: int(current[c]) for c in range(len(current)) if not preferences.get(c)}
    load = np.bincount(list(placed.values()), minlength=num_buckets)
    visiting = [c for c in order if preferences.get(c)]
    chunk = max(num_buckets // label_partition.CHUNK_PER_BUCKETS, 1)
    for start in range(0, len(visiting), chunk):
        frozen = load.copy()
        taken = np.zeros(num_buckets, int)
        for c in visiting[start:start + chunk]:  # visiting order = priority order
            options = [b for b in preferences[c][:choices] if frozen[b] < capacity]
            if not options:
                continue
            best = min(options, key=lambda b: frozen[b])  # first of the least loaded: higher affinity
            if taken[best] < capacity - frozen[best]:
                placed[c] = best
                taken[best] += 1
        load = frozen + taken
    for c in visiting:  # back to the current bucket, in visiting order, where there is room
        if c not in placed and load[current[c]] < capacity:
            placed[c] = int(current[c])
            load[current[c]] += 1
    slots = [b for b in sorted(range(num_buckets), key=lambda b: (load[b], b)) for _ in range(capacity - load[b])]
    for c in visiting:
        if c not in placed:
            placed[c] = slots.pop(0)
    return np.array([placed[c] for c in range(len(current))])


@pytest.mark.parametrize("seed,choices,load_cap", [(0, 1, 1.0), (1, 3, 1.5), (2, 10, 2.0), (3, 4, 1.0)])
def test_assignment_equals_the_one_class_at_a_time_reference(seed, choices, load_cap):
    num_points, num_labels, num_buckets, m = 300, 90, 16, 5
    top, scores = random_top(seed, num_points, num_buckets, m)
    indptr, indices = random_labels(seed + 10, num_points, num_labels)
    current = hashing.hashed_table(hashing.repetition_seeds(seed, 1), num_labels, num_buckets)[0]
    classes, buckets, _ = label_partition.label_affinities(top, scores, indptr, indices, num_buckets)
    order = np.random.default_rng(seed).permutation(num_labels)
    capacity = label_partition.bucket_capacity(num_labels, num_buckets, load_cap)
    new = label_partition.assign_buckets(classes, buckets, current, num_buckets=num_buckets, choices=choices,
                                         capacity=capacity, order=order)
    preferences = {}
    for c, b in zip(classes.tolist(), buckets.tolist()):
        preferences.setdefault(c, []).append(b)
    np.testing.assert_array_equal(new, slow_assignment(preferences, current, num_buckets, choices, capacity, order))
    assert new.dtype == current.dtype
    seen = np.isin(np.arange(num_labels), classes)
    np.testing.assert_array_equal(new[~seen], current[~seen])  # no training point: not moved
    moved_load = np.bincount(new[seen], minlength=num_buckets) + np.bincount(current[~seen], minlength=num_buckets)
    assert moved_load.max() <= max(capacity, np.bincount(current[~seen], minlength=num_buckets).max())


def test_the_assignment_refuses_a_capacity_that_cannot_hold_every_class():
    with pytest.raises(ValueError, match="cannot hold"):
        label_partition.assign_buckets(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(10, np.int16),
                                       num_buckets=3, choices=2, capacity=3, order=np.arange(10))


def test_repartition_is_a_function_of_its_seed():
    top, scores = random_top(5, 200, 16, 4)
    indptr, indices = random_labels(6, 200, 60)
    current = hashing.hashed_table(hashing.repetition_seeds(0, 1), 60, 16)[0]
    run = lambda seed: label_partition.repartition(top, scores, indptr, indices, current, num_buckets=16,  # noqa: E731
                                                   choices=3, load_cap=1.5, seed=seed)
    np.testing.assert_array_equal(run((0, 7)), run((0, 7)))
    assert not np.array_equal(run((0, 7)), run((1, 7)))


def test_class_buckets_read_a_table_as_the_hashes_it_was_made_from():
    seeds = hashing.repetition_seeds(3, 5)
    table = hashing.hashed_table(seeds, 1000, 40)
    ids = np.random.default_rng(0).integers(0, 1000, (7, 3))
    np.testing.assert_array_equal(hashing.class_buckets(ids, table, 40), hashing.class_buckets(ids, seeds, 40))
    assert hashing.table_dtype(32_768) == np.int16 and hashing.table_dtype(32_769) == np.int32


def test_both_decoders_read_a_learned_table():
    rng = np.random.default_rng(0)
    num_reps, num_points, num_buckets, num_labels, k = 3, 5, 8, 40, 4
    scores = rng.random((num_reps, num_points, num_buckets)).astype(np.float32)
    table = rng.integers(0, num_buckets, (num_reps, num_labels)).astype(np.int16)
    reference = sum(scores[r][:, table[r]] for r in range(num_reps))  # [N, L], the count-min sum
    best = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    _, ids = decode.decode_topk(scores, table, num_labels, k, chunk_size=16)
    np.testing.assert_array_equal(np.asarray(ids), best)
    index, shape = approx_decode.build_inverse_index(table, num_labels, num_buckets)
    _, approx_ids = approx_decode.approx_decode_topk(scores, table, index, k=k, top_buckets=num_buckets,
                                                     bucket_cap=shape.bucket_cap)
    np.testing.assert_array_equal(np.sort(np.asarray(approx_ids), axis=1), np.sort(best, axis=1))


def member_logits(ensemble, dataset):
    """The members' [R, N, B] logits on every point of ``dataset``, in one batch."""
    shape = batches.BatchShape(dataset.num_points, batches.widest_row(dataset.features),
                               batches.widest_row(dataset.labels))
    batch = batches.make_batch(dataset, np.arange(dataset.num_points), shape)
    return ensemble_spec.logits(ensemble.params, batch, ensemble.seeds, ensemble.spec)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(TINY.data.synthetic)


def test_hashed_runs_carry_no_table_and_learned_runs_move_classes(tmp_path, data):
    train, _ = data
    trainer.train(TINY, tmp_path / "hashed", train, progress=False)
    assert MachEnsemble.load(tmp_path / "hashed").label_table is None
    trainer.train(LEARNED, tmp_path / "learned", train, progress=False)
    table = MachEnsemble.load(tmp_path / "learned").label_table
    start = hashing.hashed_table(hashing.repetition_seeds(0, 4), 300, 32)
    assert table.shape == (4, 300) and table.dtype == np.int16
    assert np.mean(table != start) > 0.2  # re-assigned at the ends of epochs 1 and 2
    capacity = label_partition.bucket_capacity(300, 32, LEARNED.partition.bucket_load_cap)
    assert max(np.bincount(row, minlength=32).max() for row in table.astype(int)) <= capacity + 10


def test_learned_runs_resume_exactly_and_read_out_as_trained(tmp_path, data):
    train, test = data
    full, _ = trainer.train(LEARNED, tmp_path / "full", train, progress=False)
    trainer.train(LEARNED.replace(train={"epochs": 2}), tmp_path / "resumed", train, progress=False)
    resumed, _ = trainer.train(LEARNED, tmp_path / "resumed", train, progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first, second = MachEnsemble.load(tmp_path / "full"), MachEnsemble.load(tmp_path / "resumed")
    np.testing.assert_array_equal(first.label_table, second.label_table)
    # The read-out scores class c by its learned buckets: the count-min sum, recomputed here.
    ids = first.predict(test.features, k=3)[1]
    probs = np.asarray(jax.nn.softmax(member_logits(first, test), axis=-1))  # [R, N, B]
    reference = sum(probs[r][:, first.label_table[r]] for r in range(probs.shape[0]))
    np.testing.assert_array_equal(ids, np.argsort(-reference, axis=1, kind="stable")[:, :3])


def test_the_table_goes_into_exports_and_the_approximate_decoder(tmp_path, data):
    train, test = data
    metrics = experiment.train_and_evaluate(LEARNED, tmp_path / "run", progress=False)
    loaded = MachEnsemble.load(tmp_path / "run")
    assert loaded.evaluate(test, progress=False)["P@1"] == pytest.approx(metrics["P@1"], abs=1e-9)
    export_params(tmp_path / "served", tmp_path / "run", num_members=2)
    served = MachEnsemble.load(tmp_path / "served")
    np.testing.assert_array_equal(served.label_table, loaded.label_table[:2])
    np.testing.assert_array_equal(served.predict(test.features, k=3)[1],
                                  loaded.with_eval(eval_repetitions=2).predict(test.features, k=3)[1])
    exact = loaded.predict(test.features, k=3, approx=False)[1]
    approx = loaded.with_eval(top_buckets=32).predict(test.features, k=3, approx=True)[1]
    np.testing.assert_array_equal(np.sort(exact, axis=1), np.sort(approx, axis=1))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["partition"]["label_buckets"] == "learned"
    # The StableHLO export bakes the table in.
    features = test.features[:8]
    path = export_ensemble(loaded, tmp_path / "model.stablehlo", batch_size=8, max_nnz=64, k=3)
    feat_ids, feat_vals = batches.pad_rows(features, np.arange(8), 64)
    _, exported_ids = jax.export.deserialize(bytearray(path.read_bytes())).call(feat_ids, feat_vals)
    np.testing.assert_array_equal(np.asarray(exported_ids), loaded.predict(features, k=3)[1])


def test_a_learned_run_is_not_resumed_as_hashed(tmp_path, data):
    train, _ = data
    trainer.train(LEARNED.replace(train={"epochs": 1}), tmp_path / "run", train, progress=False)
    with pytest.raises(Exception, match="partition.label_buckets"):
        trainer.train(TINY, tmp_path / "run", train, progress=False)


@pytest.mark.parametrize("field,value", [("label_buckets", "sorted"), ("bucket_load_cap", 0.5),
                                         ("bucket_choices", 0), ("affinity_buckets", 0),
                                         ("repartition_every_epochs", 0), ("repartition_last_epoch", -1)])
def test_bad_partition_settings_are_named(field, value):
    with pytest.raises(ConfigError, match=f"partition.{field}"):
        TINY.replace(partition={field: value}).validate()


def test_groups_trained_apart_learn_the_tables_of_one_run(tmp_path, data):
    # Member r's re-assignment reads only member r's predictions and its own seed: groups of
    # members trained apart learn the rows the whole ensemble learns, and load as one table.
    train, _ = data
    trainer.train(LEARNED, tmp_path / "whole", train, progress=False)
    for rep_range in ((0, 2), (2, 4)):
        trainer.train(LEARNED.replace(parallel={"rep_range": rep_range}), tmp_path / "groups", train, progress=False)
    whole, groups = MachEnsemble.load(tmp_path / "whole"), MachEnsemble.load(tmp_path / "groups")
    np.testing.assert_array_equal(groups.label_table, whole.label_table)
    assert np.mean(groups.label_table != hashing.hashed_table(hashing.repetition_seeds(0, 4), 300, 32)) > 0.2
