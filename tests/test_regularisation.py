"""Dropout, weight decay, label smoothing and learning-rate schedules against numpy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax.core import hashing, losses, model, sparse_update
from mach_jax.core.ensemble_spec import MemberSpec
from mach_jax.training import optimizer
from mach_jax.training import step as steps
from mach_jax.config import Config, ModelConfig
from mach_jax.errors import ConfigError
from mach_jax.core.ensemble_spec import member_seeds
import support
from support import loss_gradients

CONFIG = ModelConfig(num_repetitions=3, num_buckets=8, hidden_sizes=(12, 10), input_layer="sparse")
NUM_FEATURES, NUM_LABELS, LR = 40, 30, 1e-2


def make_batch(rng, num_points=6, width=5):
    vals = rng.random((num_points, width)).astype(np.float32)
    vals[:, -1] = 0  # padding slots touch no row
    return {
        "feat_ids": rng.integers(0, NUM_FEATURES, size=(num_points, width)).astype(np.int32),
        "feat_vals": vals,
        "label_ids": rng.integers(0, NUM_LABELS, size=(num_points, 2)).astype(np.int32),
        "label_mask": np.ones((num_points, 2), np.float32),
        "point_mask": np.ones(num_points, np.float32),
    }


def make_spec(lazy=False, **fields):
    member = MemberSpec(graphdef=model.member_graphdef(CONFIG, NUM_FEATURES, max_nnz=5), loss_name="sigmoid",
                        num_buckets=CONFIG.num_buckets)
    return support.step_spec(member, lazy, learning_rate=LR, **fields)


def run(spec, params, batches, seeds):
    state = optimizer.create_state(params, spec)
    step = jax.jit(functools.partial(steps.train_step, spec=spec))
    for batch in batches:
        state, _ = step(state, batch, seeds)
    return state["params"]


def label_seeds(rep_ids):
    return {"labels": jnp.asarray(hashing.repetition_seeds(0, np.asarray(rep_ids)))}


# ---- learning-rate schedules ------------------------------------------------------------------

def numpy_schedule(name, warmup, total, count):
    if count < warmup:
        return count / warmup
    t = min(count - warmup, max(total - warmup, 1)) / max(total - warmup, 1)
    return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * t)), "linear": 1.0 - t}[name]


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 4])
def test_schedules_match_their_closed_forms(name, warmup):
    schedule = optimizer.learning_rate_schedule(name, warmup, total_steps=20)
    for count in range(0, 25):
        np.testing.assert_allclose(float(schedule(count)), numpy_schedule(name, warmup, 20, count),
                                   atol=1e-6, err_msg=f"count {count}")


# ---- weight decay and schedules in the update rules -------------------------------------------

def numpy_adamw(param, m, v, grad, t, lr, decay):
    m = sparse_update.B1 * m + (1 - sparse_update.B1) * grad
    v = sparse_update.B2 * v + (1 - sparse_update.B2) * grad * grad
    m_hat, v_hat = m / (1 - sparse_update.B1 ** t), v / (1 - sparse_update.B2 ** t)
    return param - lr * (m_hat / (np.sqrt(v_hat) + sparse_update.EPS) + decay * param), m, v


def reference_run(params, batches, seeds, *, lazy, embedding_rule, weight_decay, schedule, embedding_lr=LR):
    """Numpy AdamW per leaf from jax.grad of the plain loss: decay on the [R, in, out] weights
    only; with ``lazy``, the embedding (values, moments, decay) changes only on touched rows."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    moments = jax.tree.map(lambda x: (np.zeros_like(x), np.zeros_like(x)), params)
    accumulator = np.zeros(params["embedding"].shape[:2])
    plain = make_spec()
    gradients = loss_gradients(plain)
    for t, batch in enumerate(batches, start=1):
        factor = numpy_schedule(schedule, 0, len(batches), t - 1)
        grads = gradients(params, batch, seeds["labels"])
        touched = np.unique(batch["feat_ids"][batch["feat_vals"] != 0]) if lazy else slice(None)
        for name in params:
            rows = touched if name == "embedding" else slice(None)
            leaves, tree = jax.tree.flatten(params[name])
            pairs = jax.tree.leaves(moments[name], is_leaf=lambda x: isinstance(x, tuple))
            new_leaves = []
            for leaf, (m, v), grad in zip(leaves, pairs, jax.tree.leaves(grads[name])):
                decay = weight_decay if leaf.ndim >= 3 else 0.0
                if name == "embedding" and embedding_rule == "rowwise_adagrad":
                    accumulator[:, rows] += (grad[:, rows] ** 2).mean(-1)
                    lr = embedding_lr * factor
                    leaf[:, rows] -= lr * (grad[:, rows] / (np.sqrt(accumulator[:, rows])[..., None]
                                                            + sparse_update.EPS) + decay * leaf[:, rows])
                else:
                    leaf[:, rows], m[:, rows], v[:, rows] = numpy_adamw(
                        leaf[:, rows], m[:, rows], v[:, rows], grad[:, rows], t, LR * factor, decay)
                new_leaves.append(leaf)
            params[name] = jax.tree.unflatten(tree, new_leaves)
    return params


@pytest.mark.parametrize("lazy,rule", [(False, "adam"), (True, "adam"), (True, "rowwise_adagrad")])
@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_weight_decay_and_schedule_match_numpy_adamw(lazy, rule, schedule):
    rng = np.random.default_rng(1)
    params = model.init_params(CONFIG, NUM_FEATURES, jnp.arange(3), seed=0)
    batches = [make_batch(rng) for _ in range(3)]
    seeds = label_seeds(range(3))
    fields = {"weight_decay": 0.3, "lr_schedule": schedule, "total_steps": len(batches)}
    if rule == "rowwise_adagrad":
        fields.update(embedding_optimizer="rowwise_adagrad", embedding_learning_rate=0.05)
    ours = run(make_spec(lazy, **fields), params, batches, seeds)
    expected = reference_run(params, batches, seeds, lazy=lazy, embedding_rule=rule, weight_decay=0.3,
                             schedule=schedule, embedding_lr=0.05 if rule == "rowwise_adagrad" else LR)
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        ref = dict(jax.tree_util.tree_leaves_with_path(expected))[path]
        np.testing.assert_allclose(np.asarray(leaf), ref, rtol=1e-4, atol=1e-6, err_msg=str(path))
    # The decay really acted: without it the weights differ.
    plain = run(make_spec(lazy, **{**fields, "weight_decay": 0.0}), params, batches, seeds)
    assert not np.allclose(np.asarray(plain["output"]["kernel"]), np.asarray(ours["output"]["kernel"]))


# ---- label smoothing --------------------------------------------------------------------------

def numpy_smoothed_loss(loss_name, logits, buckets, eps):
    """One member, every point labelled: the mean over points of the smoothed loss."""
    total = 0.0
    num_buckets = logits.shape[1]
    for n in range(logits.shape[0]):
        if loss_name == "softmax":
            target = np.zeros(num_buckets)
            for b in buckets[n]:
                target[b] += 1 / len(buckets[n])
            target = (1 - eps) * target + eps / num_buckets
            log_probs = logits[n] - np.log(np.exp(logits[n]).sum())
            total += -(target * log_probs).sum()
        else:
            target = np.zeros(num_buckets)
            target[buckets[n]] = 1
            target = target * (1 - eps) + eps / 2
            probs = 1 / (1 + np.exp(-logits[n]))
            total += -(target * np.log(probs) + (1 - target) * np.log(1 - probs)).mean()
    return total / logits.shape[0]


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_label_smoothing_matches_numpy(loss_name):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 9)).astype(np.float32)
    buckets = rng.integers(0, 9, size=(2, 5, 3)).astype(np.int32)
    label_mask, point_mask = np.ones((5, 3), np.float32), np.ones(5, np.float32)
    ours = np.asarray(losses.member_losses(loss_name, jnp.asarray(logits), jnp.asarray(buckets),
                                           jnp.asarray(label_mask), jnp.asarray(point_mask), 0.2))
    for r in range(2):
        np.testing.assert_allclose(ours[r], numpy_smoothed_loss(loss_name, logits[r], buckets[r], 0.2), rtol=1e-5)


# ---- dropout ----------------------------------------------------------------------------------

def test_dropout_zeroes_the_rate_and_rescales_the_rest():
    hidden = jnp.ones((400, 50))
    dropped = np.asarray(model._dropout(hidden, 0.3, jax.random.key(0), 0))
    np.testing.assert_allclose(np.unique(dropped), [0.0, 1 / 0.7], rtol=1e-6)
    assert abs((dropped == 0).mean() - 0.3) < 0.02
    assert np.array_equal(np.asarray(model._dropout(hidden, 0.3, None, 0)), np.asarray(hidden))


def dropout_seeds(rep_ids, train_seed=0):
    config = Config().replace(train={"dropout": 0.5, "seed": train_seed})
    seeds = {name: np.asarray(value) for name, value in
             member_seeds(config, tuple(rep_ids), jax.make_mesh((1, 1), ("reps", "data"))).items()}
    return {name: jnp.asarray(value) for name, value in seeds.items()}


@pytest.mark.parametrize("lazy", [False, True])
def test_dropout_masks_are_per_member_seeded_and_reproducible(lazy):
    rng = np.random.default_rng(3)
    batches = [make_batch(rng) for _ in range(3)]
    spec = make_spec(lazy, dropout=0.5)
    params = model.init_params(CONFIG, NUM_FEATURES, jnp.arange(3), seed=0)
    first = run(spec, params, batches, dropout_seeds(range(3)))
    again = run(spec, params, batches, dropout_seeds(range(3)))
    other_seed = run(spec, params, batches, dropout_seeds(range(3), train_seed=1))
    without = run(make_spec(lazy), params, batches, label_seeds(range(3)))
    kernel = lambda p: np.asarray(p["output"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(kernel(first), kernel(again))
    assert not np.allclose(kernel(first), kernel(other_seed))
    assert not np.allclose(kernel(first), kernel(without))
    # Member 2 trained alone (as on another device) sees the same masks as in the ensemble.
    alone = run(spec, jax.tree.map(lambda leaf: leaf[2:], params), batches, dropout_seeds([2]))
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(first)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[2], rtol=1e-5, atol=1e-7)


def test_bad_regularisation_settings_are_refused():
    for fields in ({"dropout": 1.0}, {"weight_decay": -1.0}, {"label_smoothing": 1.0},
                   {"lr_schedule": "step"}, {"warmup_steps": -1}):
        with pytest.raises(ConfigError):
            Config().replace(train=fields).validate()


# ---- resuming a scheduled, dropped-out run ----------------------------------------------------

def test_a_scheduled_run_resumed_from_its_first_epoch_equals_the_uninterrupted_run(tmp_path):
    """The schedule's count and the dropout masks come back with the checkpoint; changing the
    epochs of a decaying schedule (which would redraw its past) is refused."""
    import shutil

    from mach_jax import get_preset
    from mach_jax.training import loop as trainer
    from mach_jax.data.synthetic import make_synthetic
    from mach_jax.storage.checkpoints import CHECKPOINT_DIR
    from mach_jax.errors import WorkdirError

    config = get_preset("tiny").replace(train={"lr_schedule": "cosine", "warmup_steps": 3, "dropout": 0.2,
                                               "weight_decay": 0.01})
    train, _ = make_synthetic(config.data.synthetic)
    full, _ = trainer.train(config, tmp_path / "run", train, progress=False)
    shutil.rmtree(tmp_path / "run" / CHECKPOINT_DIR / "20")  # as if stopped after epoch 1 (step 10)
    resumed, _ = trainer.train(config, tmp_path / "run", train, progress=False)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(WorkdirError, match="train.epochs=2, this run asks for 3"):
        trainer.train(config.replace(train={"epochs": 3}), tmp_path / "run", train, progress=False)
