"""The ensemble: losses against numpy, masking, and members that really share nothing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax.core import hashing, losses, model
from support import bucket_lookup
from mach_jax.core.ensemble_spec import MemberSpec
from mach_jax.training import optimizer
from mach_jax.training import step as steps
from mach_jax.config import ModelConfig
import support

CONFIG = ModelConfig(num_repetitions=4, num_buckets=16, hidden_sizes=(12, 10))
NUM_FEATURES, NUM_LABELS = 40, 60


def make_batch(seed=0, num_points=8, width=5, max_labels=3):
    rng = np.random.default_rng(seed)
    label_mask = (np.arange(max_labels) < rng.integers(1, max_labels + 1, size=(num_points, 1)))
    return {
        "feat_ids": rng.integers(0, NUM_FEATURES, size=(num_points, width)).astype(np.int32),
        "feat_vals": rng.random((num_points, width)).astype(np.float32),
        "label_ids": rng.integers(0, NUM_LABELS, size=(num_points, max_labels)).astype(np.int32),
        "label_mask": label_mask.astype(np.float32),
        "point_mask": np.ones(num_points, np.float32),
    }


def seeds_for(rep_ids):
    return {"labels": jnp.asarray(hashing.repetition_seeds(0, np.asarray(rep_ids)))}


def spec_for(loss_name="softmax", config=CONFIG, lazy=False, feat_hash_dim=0):
    member = MemberSpec(graphdef=model.member_graphdef(config, NUM_FEATURES, max_nnz=5),
                        loss_name=loss_name, num_buckets=config.num_buckets, feat_hash_dim=feat_hash_dim)
    return support.step_spec(member, lazy, learning_rate=1e-2)


def run_steps(rep_ids, batches, seeds, loss_name="softmax"):
    spec = spec_for(loss_name)
    state = optimizer.create_state(model.init_params(CONFIG, NUM_FEATURES, jnp.asarray(rep_ids), seed=3), spec)
    step = jax.jit(functools.partial(steps.train_step, spec=spec))
    for batch in batches:
        state, _ = step(state, batch, seeds)
    return state["params"]


def member(params, r):
    return jax.tree.map(lambda leaf: np.asarray(leaf[r]), params)


def assert_trees_equal(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, **tolerance)


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_changing_member_s_data_changes_no_parameter_of_member_r(loss_name):
    reps = np.arange(4)
    batches = [make_batch(i) for i in range(3)]
    base_seeds = seeds_for(reps)
    changed = np.asarray(base_seeds["labels"]).copy()
    changed[2] += 1000  # member 2's hash, so its bucket targets, change
    base = run_steps(reps, batches, base_seeds, loss_name)
    other = run_steps(reps, batches, {"labels": jnp.asarray(changed)}, loss_name)
    for r in (0, 1, 3):
        assert_trees_equal(member(base, r), member(other, r), rtol=0, atol=0)
    with pytest.raises(AssertionError):
        assert_trees_equal(member(base, 2), member(other, 2), rtol=0, atol=0)


def test_gradient_of_member_r_ignores_member_s_parameters():
    reps = jnp.arange(4)
    params = model.init_params(CONFIG, NUM_FEATURES, reps, seed=0)
    graphdef = model.member_graphdef(CONFIG, NUM_FEATURES, max_nnz=5)
    batch = make_batch(1)
    buckets = jnp.take(jnp.asarray(bucket_lookup(NUM_LABELS, CONFIG.num_buckets, 0, 4)),
                       batch["label_ids"], axis=1)

    def objective(p):
        logits = model.apply_ensemble(graphdef, p, batch["feat_ids"], batch["feat_vals"])
        return losses.member_losses("softmax", logits, buckets, batch["label_mask"], batch["point_mask"]).sum()

    gradient = jax.jit(jax.grad(objective))  # one program for both, rather than op by op
    grads = gradient(params)
    perturbed = jax.tree.map(lambda leaf: leaf.at[1].add(0.5), params)
    grads_perturbed = gradient(perturbed)
    for r in (0, 2, 3):
        assert_trees_equal(member(grads, r), member(grads_perturbed, r), rtol=0, atol=0)


def test_member_trained_in_the_ensemble_equals_member_trained_alone():
    batches = [make_batch(i) for i in range(4)]
    together = run_steps(np.arange(4), batches, seeds_for(np.arange(4)))
    alone = run_steps(np.array([2]), batches, seeds_for(np.array([2])))
    assert_trees_equal(member(together, 2), member(alone, 0), rtol=1e-6, atol=1e-7)


def test_members_are_initialised_independently():
    params = model.init_params(CONFIG, NUM_FEATURES, jnp.arange(3), seed=0)
    kernels = np.asarray(params["embedding"])
    assert not np.allclose(kernels[0], kernels[1])


def numpy_member_loss(loss_name, logits, buckets, label_mask, point_mask):
    total, count = 0.0, 0.0
    for n in range(logits.shape[0]):
        labels = buckets[n][label_mask[n] > 0]
        if point_mask[n] == 0 or len(labels) == 0:
            continue
        if loss_name == "softmax":
            target = np.zeros(logits.shape[1])
            for b in labels:
                target[b] += 1 / len(labels)
            log_probs = logits[n] - np.log(np.exp(logits[n]).sum())
            total += -(target * log_probs).sum()
        else:
            target = np.zeros(logits.shape[1])
            target[labels] = 1
            probs = 1 / (1 + np.exp(-logits[n]))
            total += -(target * np.log(probs) + (1 - target) * np.log(1 - probs)).mean()
        count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_losses_match_numpy_and_mask_points_without_labels(loss_name):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 6, 9)).astype(np.float32)
    buckets = rng.integers(0, 9, size=(2, 6, 3)).astype(np.int32)
    buckets[:, 0, :2] = 4  # two labels in one bucket
    label_mask = np.ones((6, 3), np.float32)
    label_mask[1] = 0          # a point with no labels
    label_mask[2, 1:] = 0
    point_mask = np.array([1, 1, 1, 1, 1, 0], np.float32)  # a padding point
    ours = np.asarray(losses.member_losses(loss_name, jnp.asarray(logits), jnp.asarray(buckets),
                                           jnp.asarray(label_mask), jnp.asarray(point_mask)))
    for r in range(2):
        expected = numpy_member_loss(loss_name, logits[r], buckets[r], label_mask, point_mask)
        np.testing.assert_allclose(ours[r], expected, rtol=1e-5)


@pytest.mark.parametrize("input_layer", ["sparse", "dense"])
def test_member_forward_matches_numpy(input_layer):
    import dataclasses

    config = dataclasses.replace(CONFIG, input_layer=input_layer)
    params = model.init_params(config, NUM_FEATURES, jnp.arange(2), seed=0)
    batch = make_batch(4)
    batch["feat_ids"][0, :2] = 7  # a repeated feature id adds up
    logits = model.apply_ensemble(model.member_graphdef(config, NUM_FEATURES, max_nnz=5), params,
                                  batch["feat_ids"], batch["feat_vals"])
    for r in range(2):
        p = member(params, r)
        bag = np.zeros((8, 12))
        for n in range(8):
            for f, v in zip(batch["feat_ids"][n], batch["feat_vals"][n]):
                bag[n] += v * p["embedding"][f]
        hidden = np.maximum(bag + p["embedding_bias"], 0)
        hidden = np.maximum(hidden @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0)
        expected = hidden @ p["output"]["kernel"] + p["output"]["bias"]
        np.testing.assert_allclose(np.asarray(logits[r]), expected, rtol=1e-4, atol=1e-5)


def test_auto_input_layer_picks_dense_for_small_d_only():
    # Runs recorded without the mean row: the widest row decides (D <= 16 K), as it did for them.
    assert model.uses_dense_input(CONFIG, num_features=1836, max_nnz=271)
    assert not model.uses_dense_input(CONFIG, num_features=135_909, max_nnz=300)
    # The mean row decides (D <= 28 x mean, core/backend.py): bibtex (mean 68.5) keeps the dense
    # matmul, corel5k (D = 499, mean 8.2) and Amazon-670K (mean 75) gather the entries' rows.
    assert model.uses_dense_input(CONFIG, num_features=1836, max_nnz=271, mean_nnz=68.5)
    assert not model.uses_dense_input(CONFIG, num_features=499, max_nnz=10, mean_nnz=8.2)
    assert not model.uses_dense_input(CONFIG, num_features=135_909, max_nnz=300, mean_nnz=75.0)
    # A set whose widest row is 20x its mean: the widest row said dense, the typical row says gather.
    assert model.uses_dense_input(CONFIG, num_features=4000, max_nnz=400)
    assert not model.uses_dense_input(CONFIG, num_features=4000, max_nnz=400, mean_nnz=20.0)


def test_members_drawn_one_by_one_are_the_members_drawn_at_once():
    from mach_jax.core import mesh as mesh_lib

    rep_ids = jnp.arange(3, 7, dtype=jnp.int32)  # a group's members: their own keys
    at_once = model.init_params(CONFIG, NUM_FEATURES, rep_ids, seed=5)
    one_by_one = jax.jit(lambda ids: model.init_params_by_member(CONFIG, NUM_FEATURES, ids, 5,
                                                                 mesh_lib.make_mesh(4)))(rep_ids)
    for a, b in zip(jax.tree.leaves(at_once), jax.tree.leaves(one_by_one)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
