"""Row-sparse Adam for the re-ranker against a numpy lazy Adam on the dense loss's gradients, and
against optax's dense Adam on the first step (where the two agree)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mach_jax import get_preset
from mach_jax.core import reranker, reranker_lazy
from mach_jax.experiment import train_and_evaluate

NUM_FEATURES, NUM_LABELS, DIM, RATE = 30, 50, 4, 0.05
LOSS = dict(num_labels=NUM_LABELS, num_negatives=6, dropout=0.0)


def make_batch(seed):
    rng = np.random.default_rng(seed)
    feat_ids = rng.integers(0, 10, (4, 3)).astype(np.int32)  # rows 10..29 are never touched
    feat_vals = rng.random((4, 3)).astype(np.float32)
    feat_vals[0, 2] = 0.0  # padding: touches nothing
    return {"feat_ids": jnp.asarray(feat_ids), "feat_vals": jnp.asarray(feat_vals),
            "label_ids": jnp.asarray(rng.integers(0, 20, (4, 2)).astype(np.int32)),
            "label_mask": jnp.asarray(np.array([[1, 1], [1, 0], [1, 0], [0, 0]], np.float32)),
            "shortlist": jnp.asarray(rng.integers(0, 25, (4, 5)).astype(np.int32)),
            "point_mask": jnp.asarray(np.array([1, 1, 1, 0], np.float32))}


def numpy_lazy_adam(params, moments, grads, touched, step):
    """Lazy Adam in numpy: the rows in ``touched`` (or every entry, for None) move, the rest keep
    their values and moments."""
    out_params, out_moments = {}, {}
    for name, value in params.items():
        m, v = (np.array(moments[name][0]), np.array(moments[name][1]))
        value, g = np.array(value), np.asarray(grads[name])
        rows = slice(None) if touched[name] is None else touched[name]
        m[rows] = 0.9 * m[rows] + 0.1 * g[rows]
        v[rows] = 0.999 * v[rows] + 0.001 * g[rows] ** 2
        value[rows] -= RATE * (m[rows] / (1 - 0.9 ** step)) / (np.sqrt(v[rows] / (1 - 0.999 ** step)) + 1e-8)
        out_params[name], out_moments[name] = value, (m, v)
    return out_params, out_moments


def touched_of(batch, key):
    feature = set(np.asarray(batch["feat_ids"])[np.asarray(batch["feat_vals"]) != 0].tolist())
    candidates, _ = reranker.training_candidates(batch["shortlist"], batch["label_ids"], batch["label_mask"],
                                                 NUM_LABELS)
    negatives = reranker.draw_negatives(jax.random.split(key)[0], LOSS["num_negatives"], NUM_LABELS)
    classes = set(np.asarray(candidates).ravel().tolist()) | set(np.asarray(negatives).tolist())
    rows = {"feature_emb": sorted(feature), "class_emb": sorted(classes), "class_bias": sorted(classes)}
    return {**{name: np.array(value) for name, value in rows.items()}, "query_bias": None}


def test_two_lazy_steps_match_numpy_lazy_adam_on_the_dense_gradients():
    params = reranker.init_params(jax.random.key(0), NUM_FEATURES, NUM_LABELS, DIM)
    moments = reranker_lazy.init_moments(params)
    reference = {name: np.asarray(value) for name, value in params.items()}
    ref_moments = {name: (np.zeros_like(value), np.zeros_like(value)) for name, value in reference.items()}
    dense_grad = jax.grad(reranker.sampled_softmax_loss)
    for step in (1, 2):
        batch, key = make_batch(step), jax.random.key(10 + step)
        grads = dense_grad({k: jnp.asarray(v) for k, v in reference.items()}, batch, key, **LOSS)
        reference, ref_moments = numpy_lazy_adam(reference, ref_moments, grads, touched_of(batch, key), step)
        params, moments, _ = jax.jit(reranker_lazy.lazy_step, static_argnames=(
            "learning_rate", "num_labels", "num_negatives", "dropout"))(params, moments, batch, key, learning_rate=RATE,
                                                                        **LOSS)
    assert int(moments["count"]) == 2
    for name, value in reference.items():
        np.testing.assert_allclose(np.asarray(params[name]), value, rtol=2e-5, atol=2e-6, err_msg=name)
    assert np.array_equal(np.asarray(params["feature_emb"])[10:], np.asarray(
        reranker.init_params(jax.random.key(0), NUM_FEATURES, NUM_LABELS, DIM)["feature_emb"])[10:])


def test_the_first_lazy_step_is_optax_adams_step():
    params = reranker.init_params(jax.random.key(1), NUM_FEATURES, NUM_LABELS, DIM)
    batch, key = make_batch(0), jax.random.key(3)
    loss, grads = jax.value_and_grad(reranker.sampled_softmax_loss)(params, batch, key, **LOSS)
    optimizer = optax.adam(RATE)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    dense = optax.apply_updates(params, updates)
    lazy, _, lazy_loss = reranker_lazy.lazy_step(params, reranker_lazy.init_moments(params), batch, key,
                                                 learning_rate=RATE, **LOSS)
    assert float(lazy_loss) == pytest.approx(float(loss), rel=1e-6)
    for name in params:
        np.testing.assert_allclose(np.asarray(lazy[name]), np.asarray(dense[name]), rtol=1e-5, atol=1e-6)


def test_a_run_with_the_lazy_reranker_trains_and_improves_on_the_members(tmp_path):
    rerank = {"shortlist_size": 20, "rerank_dim": 16, "rerank_epochs": 2, "sampled_negatives": 32,
              "rerank_update": "lazy"}
    metrics = train_and_evaluate(get_preset("tiny").replace(rerank=rerank), tmp_path / "run", progress=False)
    assert metrics["P@3"] > metrics["without_reranker"]["P@3"] and metrics["P@5"] > metrics["without_reranker"]["P@5"]


def test_auto_picks_lazy_only_where_a_step_touches_few_rows():
    # citeulike-users' shape: every class row, every step -> dense.
    share = reranker_lazy.touched_share(20_000, 7_947, 18.8, 5.2, 256, 100, 1024)
    assert share > 1 and reranker_lazy.resolve_update("auto", share) == "dense"
    # The synthetic L = 10^5 set: (256 x (50 + 100 + 5) + 1024) / (10^5 + 100,032) rows, 20 %:
    # dense; at L = 10^6, 4 %: lazy.
    share = reranker_lazy.touched_share(100_000, 100_000, 50.0, 5.0, 256, 100, 1024)
    assert share == pytest.approx((256 * 155 + 1024) / 200_032)
    assert reranker_lazy.resolve_update("auto", share) == "dense"
    share = reranker_lazy.touched_share(100_000, 1_000_000, 50.0, 5.0, 256, 100, 1024)
    assert share == pytest.approx((256 * 155 + 1024) / 1_100_064)
    assert reranker_lazy.resolve_update("auto", share) == "lazy"
    assert reranker_lazy.resolve_update("dense", share) == "dense"
    assert reranker_lazy.resolve_update("lazy", 2.0) == "lazy"


def test_auto_is_recorded_as_what_it_resolved_to(tmp_path):
    from mach_jax.storage import rerank_store
    rerank = {"shortlist_size": 20, "rerank_dim": 16, "rerank_epochs": 1, "sampled_negatives": 32,
              "rerank_update": "auto"}
    train_and_evaluate(get_preset("tiny").replace(rerank=rerank), tmp_path / "run", progress=False)
    assert rerank_store.read_record(tmp_path / "run")["settings"]["rerank_update"] == "dense"  # D + L = 700 rows
