"""Row-sparse (lazy) Adam on the embedding tables against a numpy reference of the same rule."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import batch_fits

from mach_jax.core import hashing, model, sparse_update
from mach_jax.core.ensemble_spec import MemberSpec
from mach_jax.training import lazy_caps
from mach_jax.training import optimizer
from mach_jax.training.spec import uses_lazy_update
from mach_jax.training import step as steps
from mach_jax.config import ModelConfig
import support
from support import loss_gradients

CONFIG = ModelConfig(num_repetitions=2, num_buckets=8, hidden_sizes=(12,), input_layer="sparse")
NUM_FEATURES, NUM_LABELS, LR = 40, 30, 1e-2


def make_batch(rng, num_features=NUM_FEATURES, width=5, num_points=6):
    vals = rng.random((num_points, width)).astype(np.float32)
    vals[:, -1] = 0  # padding slots: they touch nothing
    vals[0, 0] = 0   # an explicit zero value: also nothing
    return {
        "feat_ids": rng.integers(0, num_features, size=(num_points, width)).astype(np.int32),
        "feat_vals": vals,
        "label_ids": rng.integers(0, NUM_LABELS, size=(num_points, 2)).astype(np.int32),
        "label_mask": np.ones((num_points, 2), np.float32),
        "point_mask": np.ones(num_points, np.float32),
    }


def spec(lazy, config=CONFIG, num_features=NUM_FEATURES, **fields):
    member = MemberSpec(graphdef=model.member_graphdef(config, num_features, max_nnz=5), loss_name="softmax",
                        num_buckets=config.num_buckets)
    return support.step_spec(member, lazy, learning_rate=LR, **fields)


def numpy_adam(param, m, v, grad, t):
    m = sparse_update.B1 * m + (1 - sparse_update.B1) * grad
    v = sparse_update.B2 * v + (1 - sparse_update.B2) * grad * grad
    m_hat, v_hat = m / (1 - sparse_update.B1 ** t), v / (1 - sparse_update.B2 ** t)
    return param - LR * m_hat / (np.sqrt(v_hat) + sparse_update.EPS), m, v


def numpy_rowwise_adagrad(rows, acc, grad, lr):
    acc = acc + (grad * grad).mean(axis=-1)
    return rows - lr * grad / (np.sqrt(acc)[..., None] + sparse_update.EPS), acc


def reference_run(params, batches, seeds, embedding_rule="adam", embedding_lr=LR):
    """Numpy: dense gradients from jax.grad of the plain loss, then Adam per leaf, the embedding
    updated (values and moments) only on rows that carry a nonzero feature in the batch, by Adam
    or by row-wise Adagrad."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    moments = jax.tree.map(lambda x: (np.zeros_like(x), np.zeros_like(x)), params)
    accumulator = np.zeros(params["embedding"].shape[:2])
    gradients = loss_gradients(spec(lazy=False))
    for t, batch in enumerate(batches, start=1):
        grads = gradients(params, batch, seeds["labels"])
        touched = np.unique(batch["feat_ids"][batch["feat_vals"] != 0])
        for name in params:
            if name == "embedding" and embedding_rule == "rowwise_adagrad":
                table = params[name]
                table[:, touched], accumulator[:, touched] = numpy_rowwise_adagrad(
                    table[:, touched], accumulator[:, touched], grads[name][:, touched], embedding_lr)
            elif name == "embedding":
                table, (m, v) = params[name], moments[name]
                new_rows, m[:, touched], v[:, touched] = numpy_adam(
                    table[:, touched], m[:, touched], v[:, touched], grads[name][:, touched], t)
                table[:, touched] = new_rows
            else:
                leaves, tree = jax.tree.flatten(params[name])
                new = [numpy_adam(p, *mv, g, t) for p, mv, g in zip(
                    leaves, jax.tree.leaves(moments[name], is_leaf=lambda x: isinstance(x, tuple)),
                    jax.tree.leaves(grads[name]))]
                params[name] = jax.tree.unflatten(tree, [p for p, _, _ in new])
                moments[name] = jax.tree.unflatten(tree, [(m, v) for _, m, v in new])
    return params


def run(lazy, params, batches, seeds, config=CONFIG, num_features=NUM_FEATURES, **fields):
    step_spec = spec(lazy, config, num_features, **fields)
    state = optimizer.create_state(params, step_spec)
    step = jax.jit(functools.partial(steps.train_step, spec=step_spec))
    for batch in batches:
        state, _ = step(state, batch, seeds)
    return state


def test_lazy_adam_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    params = model.init_params(CONFIG, NUM_FEATURES, jnp.arange(2), seed=0)
    batches = [make_batch(rng) for _ in range(3)]
    seeds = {"labels": jnp.asarray(hashing.repetition_seeds(0, 2))}
    ours = run(True, params, batches, seeds)["params"]
    expected = reference_run(params, batches, seeds)
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        ref = jax.tree_util.tree_leaves_with_path(expected)
        np.testing.assert_allclose(np.asarray(leaf), dict(ref)[path], rtol=1e-4, atol=1e-6, err_msg=str(path))
    untouched = np.setdiff1d(np.arange(NUM_FEATURES),
                             np.concatenate([b["feat_ids"][b["feat_vals"] != 0] for b in batches]))
    assert untouched.size  # some rows were never touched: they must not have moved at all
    np.testing.assert_array_equal(np.asarray(ours["embedding"])[:, untouched],
                                  np.asarray(params["embedding"])[:, untouched])


@pytest.mark.parametrize("fields,rule", [
    ({"embedding_optimizer": "rowwise_adagrad", "embedding_learning_rate": 0.05}, "rowwise_adagrad"),
    # Caps below the batch sizes are never used (the trainer sends such batches to the uncapped
    # step); caps at least as large as the batch must give the same result as none.
    ({"touched_rows_cap": 20, "entries_cap": 26}, "adam"),
])
def test_lazy_variants_match_the_numpy_reference(fields, rule):
    rng = np.random.default_rng(2)
    params = model.init_params(CONFIG, NUM_FEATURES, jnp.arange(2), seed=0)
    batches = [make_batch(rng) for _ in range(3)]
    seeds = {"labels": jnp.asarray(hashing.repetition_seeds(0, 2))}
    for batch in batches:
        touched = batch["feat_ids"][batch["feat_vals"] != 0]
        assert len(np.unique(touched)) <= 20 and touched.size <= 26 < batch["feat_ids"].size
    ours = run(True, params, batches, seeds, **fields)["params"]
    expected = reference_run(params, batches, seeds, rule, fields.get("embedding_learning_rate", LR))
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        ref = dict(jax.tree_util.tree_leaves_with_path(expected))[path]
        np.testing.assert_allclose(np.asarray(leaf), ref, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_batch_caps_bound_epoch_0_and_batch_fits_checks_both():
    from mach_jax.data import batches as input_pipeline
    from mach_jax.data.csr import CsrMatrix

    rng = np.random.default_rng(3)
    rows = [np.sort(rng.choice(50, rng.integers(1, 9), replace=False)) for _ in range(40)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    features = CsrMatrix(indptr, np.concatenate(rows).astype(np.int32),
                         np.ones(indptr[-1], np.float32), 50)
    max_rows, max_entries = lazy_caps.batch_caps(features, 8, seed=1, margin=1.0, multiple=1)
    order = input_pipeline.epoch_order(40, 1, 0)
    batches = [features.take(order[i:i + 8]) for i in range(0, 40, 8)]
    assert max_entries == max(b.indices.size for b in batches)
    assert max_rows == max(len(np.unique(b.indices)) for b in batches)
    batch = {"feat_ids": np.array([[1, 2, 3], [1, 4, 0]]), "feat_vals": np.array([[1.0, 1, 1], [1, 1, 0]])}
    assert batch_fits(batch, (4, 5))
    assert not batch_fits(batch, (3, 5))  # 4 distinct rows
    assert not batch_fits(batch, (4, 4))  # 5 entries


def test_lazy_equals_dense_when_every_row_is_touched_every_step():
    rng = np.random.default_rng(1)
    num_features = 5
    config = dataclasses.replace(CONFIG, input_layer="sparse")
    params = model.init_params(config, num_features, jnp.arange(2), seed=1)
    batches = []
    for _ in range(3):
        batch = make_batch(rng, num_features=num_features)
        batch["feat_ids"][:, :num_features] = np.arange(num_features)  # all rows, nonzero values
        batch["feat_vals"] = rng.random(batch["feat_vals"].shape).astype(np.float32) + 0.1
        batches.append(batch)
    seeds = {"labels": jnp.asarray(hashing.repetition_seeds(0, 2))}
    lazy = run(True, params, batches, seeds, config, num_features)["params"]
    dense = run(False, params, batches, seeds, config, num_features)["params"]
    for a, b in zip(jax.tree.leaves(lazy), jax.tree.leaves(dense)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_touched_rows_are_distinct_sorted_and_skip_zero_values():
    ids = jnp.asarray([[3, 1, 3, 0], [7, 1, 2, 0]], jnp.int32)
    vals = jnp.asarray([[1.0, 2.0, 1.0, 0.0], [0.5, 1.0, 0.0, 0.0]])
    rows, local = sparse_update.touched_rows(ids, vals, num_rows=10)
    assert np.asarray(rows).tolist() == [1, 3, 7] + [10] * 5
    np.testing.assert_array_equal(np.asarray(rows)[np.asarray(local)][np.asarray(vals) != 0],
                                  np.asarray(ids)[np.asarray(vals) != 0])


def test_lazy_update_needs_the_sparse_input_layer():
    from mach_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the sparse input layer"):
        uses_lazy_update(dataclasses.replace(CONFIG, input_layer="dense"), "lazy", 40, 5, 6)
    assert uses_lazy_update(CONFIG, "lazy", 40, 5, 6)
    auto = dataclasses.replace(CONFIG, input_layer="auto")
    assert not uses_lazy_update(auto, "auto", 40, 5, 6)  # small D: the dense bag, dense Adam
    assert not uses_lazy_update(auto, "auto", 30_000, 131, 256)  # measured: lazy 0.95x dense
    assert uses_lazy_update(auto, "auto", 100_000, 143, 256)  # measured: lazy 2.15x dense
    # The typical row decides where the mean is known: the bench's rows (mean 73, widest 143)...
    assert not uses_lazy_update(auto, "auto", 30_000, 143, 256, mean_nnz=73.0)
    assert uses_lazy_update(auto, "auto", 100_000, 143, 256, mean_nnz=73.0)
    # ...and citeulike-users' (D = 20,000, mean 18.8, widest 351), where lazy Adam was 1.63x as
    # fast as dense over 5 epochs and as precise (docs/large_labels.md): the widest row said dense.
    assert uses_lazy_update(auto, "auto", 20_000, 351, 256, mean_nnz=18.8)
    assert not uses_lazy_update(auto, "auto", 20_000, 351, 256)
    with pytest.raises(ConfigError, match="rowwise_adagrad' needs the sparse input layer"):
        uses_lazy_update(dataclasses.replace(CONFIG, input_layer="dense"), "auto", 40, 5, 6,
                               "rowwise_adagrad")
    assert uses_lazy_update(CONFIG, "dense", 40, 5, 6, "rowwise_adagrad")  # always row-sparse
