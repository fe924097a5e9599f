"""Kernel forms (``model.kernel_forms``): the "loop" and "batched" forms of every loop over the R
members give the same results, "auto" picks per backend, and the batched form's accelerator HLO
has no loop over R.

Equal results: bit for bit (``assert_array_equal``) for the forward pass and the decoders: the
batched form does each member's arithmetic in the same order (vmap batches the same ops), and its
sums over R are XLA reduces, which on the CPU add the members in order from 0, as the loops do.
The optimisers' row updates (and a train step that uses them) agree to ``UPDATE_TOLERANCE`` only:
the same elementwise formulas, but XLA's CPU code for the [U, H] loop body and the batched
[R, U, H] arrays rounds a few elements differently in the last bits (contracted multiply-adds), so
after a step they differ by a few float32 ulps.

The accelerator HLO is the StableHLO of the jitted step lowered from this CPU-only install for
"cuda" and "tpu" (``Traced.lower(lowering_platforms=...)``): nothing is compiled or run there.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import random_batch

from mach_jax.config import Config, ModelConfig
from mach_jax.core import backend, hashing, model
from mach_jax.core import mesh as mesh_lib
from mach_jax.core.ensemble_spec import MemberSpec, logits, member_spec
from mach_jax.readout import approx_decode
from mach_jax.readout.decoders import ApproxDecoder, ExactDecoder, build_approx_decoder
from mach_jax.training import optimizer
from mach_jax.training import step as steps
import support

R, D, N, K, B, L = 4, 40, 8, 5, 16, 70  # R differs from every other loop's trip count below
CHUNK = 16  # the exact decoder's scan: ceil(L / CHUNK) = 5 steps
PLATFORMS = ("cuda", "tpu")
UPDATE_TOLERANCE = {"rtol": 1e-5, "atol": 1e-8}
ENTRIES = N * (K - 1)  # make_batch's nonzero entries: every slot but the last column


def make_batch(seed=0):
    return random_batch(seed, N, K, D, L)


def seeds_for(feat_hash_dim):
    seeds = {"labels": jnp.asarray(hashing.repetition_seeds(0, R))}
    if feat_hash_dim:
        seeds["features"] = jnp.asarray(hashing.repetition_seeds(7, R))
    return seeds


def setup(batched, input_layer="sparse", feat_hash_dim=0, rep_shards=1, lazy=False, optimiser="adam",
          entries_cap=0):
    """(params, spec) of a small ensemble whose members' loops take the given kernel form."""
    config = ModelConfig(num_repetitions=R, num_buckets=B, hidden_sizes=(8,), input_layer=input_layer,
                         feat_hash_dim=feat_hash_dim)
    member = MemberSpec(model.member_graphdef(config, D, K), "softmax", B, feat_hash_dim, rep_shards, batched)
    spec = support.step_spec(member, lazy, learning_rate=1e-2, embedding_optimizer=optimiser,
                    weight_decay=0.01 if lazy else 0.0, entries_cap=entries_cap)
    return model.init_params(config, D, jnp.arange(R), seed=3), spec


def trip_counts(hlo: str) -> list[int]:
    """The trip counts of every ``stablehlo.while`` (all of them are counted loops here)."""
    counts = re.findall(r"stablehlo\.while\(.*?cond \{\s*%\S+ = stablehlo\.constant dense<(\d+)> : "
                        r"tensor<i32>\s*%\S+ = stablehlo\.compare\s+LT", hlo, flags=re.DOTALL)
    assert len(counts) == hlo.count("stablehlo.while("), "a while loop that is not a counted loop"
    return sorted(int(c) for c in counts)


def loop_counts(fn, *args) -> dict[str, list[int]]:
    """``trip_counts`` of jit(fn)(*args) lowered for each accelerator platform (one trace)."""
    traced = jax.jit(fn).trace(*args)
    return {platform: trip_counts(traced.lower(lowering_platforms=(platform,)).as_text())
            for platform in PLATFORMS}


def test_auto_resolves_to_loop_on_cpu_and_batched_on_accelerators():
    assert backend.batched_forms("auto", "cpu") is False
    assert backend.batched_forms("auto", "gpu") is True and backend.batched_forms("auto", "tpu") is True
    assert backend.batched_forms("auto") is False  # the tests' CPU backend
    for name in ("cpu", "gpu", "tpu"):
        assert backend.batched_forms("loop", name) is False and backend.batched_forms("batched", name) is True
    config = Config().replace(model={"num_repetitions": R, "num_buckets": B, "kernel_forms": "batched"})
    mesh = mesh_lib.make_mesh(R, devices=jax.devices()[:1])
    assert member_spec(config, D, K, mesh).batched_forms is True
    assert build_approx_decoder(config, hashing.repetition_seeds(0, R), L, np.ones(L), mesh).batched is True
    auto = config.replace(model={"kernel_forms": "auto"})
    assert member_spec(auto, D, K, mesh).batched_forms is False
    assert build_approx_decoder(auto, hashing.repetition_seeds(0, R), L, np.ones(L), mesh).batched is False


@pytest.mark.parametrize("input_layer, feat_hash_dim, rep_shards",
                         [("sparse", 0, 1), ("sparse", 24, 2), ("dense", 24, 2)])
def test_logits_are_equal_across_forms(input_layer, feat_hash_dim, rep_shards):
    batch, seeds = make_batch(), seeds_for(feat_hash_dim)
    results = []
    for batched in (False, True):
        params, spec = setup(batched, input_layer, feat_hash_dim, rep_shards)
        results.append(jax.jit(functools.partial(logits, spec=spec.member))(params, batch, seeds))
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize("lazy, optimiser, feat_hash_dim, rep_shards, entries_cap", [
    (False, "adam", 24, 2, 0), (False, "adam", 0, 2, ENTRIES), (True, "adam", 24, 1, 0),
    (True, "rowwise_adagrad", 0, 2, 0)],
    ids=["dense_adam_hashed_2_shards", "dense_adam_flat_entries_2_shards", "lazy_adam_hashed",
         "rowwise_adagrad_2_shards"])
def test_a_train_step_is_equal_across_forms_and_batched_has_no_member_loop(lazy, optimiser, feat_hash_dim,
                                                                           rep_shards, entries_cap):
    """Two steps (the second reads the first one's moments) agree: bit for bit with dense updates
    (the bag is the only loop), to ``UPDATE_TOLERANCE`` with the row-sparse ones (their bags and
    row gradients, gathered from [R, U] or [U] rows, and lazy Adam or row-wise Adagrad).

    The same trace lowered for the accelerators: the loop form loops over each shard's R / S
    members (while loops of that trip count: the bag, its gradient, the lazy update); the batched
    form has no such loop. (The lazy step's one other loop is ``jnp.searchsorted``'s binary search
    over the N K slots: 6 steps.)"""
    members_per_shard, seeds, results = R // rep_shards, seeds_for(feat_hash_dim), []
    for batched in (False, True):
        params, spec = setup(batched, "sparse", feat_hash_dim, rep_shards, lazy, optimiser, entries_cap)
        state = optimizer.create_state(params, spec)
        traced = jax.jit(functools.partial(steps.train_step, spec=spec)).trace(state, make_batch(0), seeds)
        for platform in PLATFORMS:
            counts = trip_counts(traced.lower(lowering_platforms=(platform,)).as_text())
            assert (members_per_shard in counts) == (not batched), (platform, batched, counts)
            assert set(counts) <= {members_per_shard, 6}, (platform, batched, counts)
        step = traced.lower().compile()
        for seed in (0, 1):
            state, metrics = step(state, make_batch(seed), seeds)
        results.append((state, metrics))
    if lazy:
        jax.tree.map(functools.partial(np.testing.assert_allclose, **UPDATE_TOLERANCE), *results)
    else:
        jax.tree.map(np.testing.assert_array_equal, *results)


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
@pytest.mark.parametrize("feat_hash_dim, rep_shards", [(0, 1), (24, 2)], ids=["shared_ids", "hashed_2_shards"])
def test_a_dense_adam_step_over_the_flat_entries_equals_the_padded_bag(batched, feat_hash_dim, rep_shards):
    """The gathered bag summed over the T nonzero entries (``StepSpec.entries_cap``) against the
    N x K padded slots: the same two steps of dense Adam, to ``UPDATE_TOLERANCE`` (the bags add the
    same products in another order)."""
    seeds, results = seeds_for(feat_hash_dim), []
    for entries_cap in (0, ENTRIES):
        params, spec = setup(batched, "sparse", feat_hash_dim, rep_shards, entries_cap=entries_cap)
        state = optimizer.create_state(params, spec)
        step = jax.jit(functools.partial(steps.train_step, spec=spec))
        for seed in (0, 1):
            state, metrics = step(state, make_batch(seed), seeds)
        results.append((state, metrics))
    jax.tree.map(functools.partial(np.testing.assert_allclose, **UPDATE_TOLERANCE), *results)


def bucket_scores(seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((R, N, B), np.float32))


def read_out(decoder, scores, seeds):
    """The top 5 of a decoder passed as a pytree, as the read-out step does."""
    return decoder(scores, seeds, 5)


def test_exact_decode_is_equal_across_forms():
    scores, seeds = bucket_scores(), seeds_for(0)["labels"]
    results = [jax.jit(read_out)(ExactDecoder(L, CHUNK, batched), scores, seeds) for batched in (False, True)]
    jax.tree.map(np.testing.assert_array_equal, *results)


def test_approx_decode_is_equal_across_forms():
    """With a capped index (the per-bucket cutoffs) and a vote threshold: every step of the read."""
    bucket_cap, min_votes = 2, 2
    seeds = seeds_for(0)["labels"]
    counts = np.random.default_rng(1).integers(0, 50, L)
    index, shape = approx_decode.build_inverse_index(np.asarray(seeds), L, B, counts, bucket_cap)
    index = jax.tree.map(jnp.asarray, index)
    results = [jax.jit(read_out)(ApproxDecoder(index, 4, shape.bucket_cap, min_votes, batched), bucket_scores(), seeds)
               for batched in (False, True)]
    jax.tree.map(np.testing.assert_array_equal, *results)


def test_the_batched_decoders_have_no_loop_over_the_members():
    """Exact: the class scan (ceil(L / C) = 5 steps) is the batched form's only loop; the loop form
    has a loop over R inside it. Approximate: the batched form has no loop at all."""
    scores, seeds = bucket_scores(), seeds_for(0)["labels"]
    index, shape = approx_decode.build_inverse_index(np.asarray(seeds), L, B)  # uncapped: no cutoffs
    index = jax.tree.map(jnp.asarray, index)
    num_chunks = -(-L // CHUNK)
    for batched, exact_loops, approx_loops in ((False, [R, num_chunks], [R]), (True, [num_chunks], [])):
        for decoder, loops in ((ExactDecoder(L, CHUNK, batched), exact_loops),
                               (ApproxDecoder(index, 4, shape.bucket_cap, 2, batched), approx_loops)):
            counts = loop_counts(read_out, decoder, scores, seeds)
            assert counts == {platform: loops for platform in PLATFORMS}, (decoder, counts)
