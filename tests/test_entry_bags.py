"""The read-out's gathered bag over a batch's nonzero entries (``ensemble_spec.logits`` with an
``entries_cap``) against the bag over its N x K padded slots, and the cap the ensemble picks.

The two add the same products in another order, so logits agree to float32 rounding
(``UPDATE_TOLERANCE`` of test_kernel_forms), and a trained ensemble's top classes and metrics
are the same either way. The train step's counterpart is tested in test_kernel_forms.py
(``test_a_dense_adam_step_over_the_flat_entries_equals_the_padded_bag``).
"""

import functools

import jax
import numpy as np
import pytest
from test_kernel_forms import ENTRIES, UPDATE_TOLERANCE, make_batch, seeds_for, setup

from mach_jax import MachEnsemble, get_preset
from mach_jax.core.ensemble_spec import logits
from mach_jax.data import batches
from mach_jax.data.synthetic import make_synthetic
from mach_jax.training import loop as trainer


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
@pytest.mark.parametrize("feat_hash_dim, rep_shards", [(0, 1), (24, 2)], ids=["shared_ids", "hashed_2_shards"])
def test_logits_over_the_nonzero_entries_equal_the_padded_bag(batched, feat_hash_dim, rep_shards):
    params, spec = setup(batched, "sparse", feat_hash_dim, rep_shards)
    batch, seeds = make_batch(), seeds_for(feat_hash_dim)
    read_out = jax.jit(functools.partial(logits, spec=spec.member), static_argnames=("entries_cap",))
    padded = read_out(params, batch, seeds)
    for cap in (ENTRIES, 2 * ENTRIES):  # exactly the entries, and room to spare
        np.testing.assert_allclose(read_out(params, batch, seeds, entries_cap=cap), padded, **UPDATE_TOLERANCE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ensemble with the gathered bag (``--input-layer sparse``), and its test data."""
    config = get_preset("tiny").replace(model={"input_layer": "sparse"}, train={"epochs": 1})
    train, test = make_synthetic(config.data.synthetic)
    params, info = trainer.train(config, tmp_path_factory.mktemp("run"), train, progress=False)
    counts = np.bincount(train.labels.indices, minlength=train.num_labels)
    return MachEnsemble(config, info, params, counts), test


def test_the_read_out_cap_is_the_most_entries_of_a_batch(trained):
    ensemble, test = trained
    assert not ensemble.spec.dense_input
    shape = batches.BatchShape(64, batches.next_power_of_two(batches.widest_row(test.features)), 1)
    widths = np.diff(test.features.indptr)
    most = max(int(np.count_nonzero(test.features.values[test.features.indptr[start]:
                                                         test.features.indptr[min(start + 64, len(widths))]]))
               for start in range(0, len(widths), 64))
    cap = ensemble._entries_cap(test.features, shape)
    assert cap == batches.next_power_of_two(most) and most <= cap < 64 * shape.max_nnz


def test_predict_and_evaluate_are_the_same_over_the_entries_and_the_padded_slots(trained, monkeypatch):
    ensemble, test = trained
    flat = ensemble.predict(test.features, k=5), ensemble.evaluate(test, progress=False)
    monkeypatch.setattr(MachEnsemble, "_entries_cap", lambda self, features, shape: 0)
    padded = ensemble.predict(test.features, k=5), ensemble.evaluate(test, progress=False)
    np.testing.assert_allclose(flat[0][0], padded[0][0], **UPDATE_TOLERANCE)
    np.testing.assert_array_equal(flat[0][1], padded[0][1])
    numbers = [key for key, value in padded[1].items() if isinstance(value, float)]
    assert len(numbers) >= 9 and flat[1].keys() == padded[1].keys()
    assert {key: flat[1][key] for key in numbers} == pytest.approx({key: padded[1][key] for key in numbers})
