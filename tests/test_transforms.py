"""Input transforms against a slow numpy reference, and carried by the workdir through training,
evaluation, prediction and export."""

import math

import numpy as np
import pytest

from mach_jax import MachEnsemble, experiment, get_preset
from mach_jax.data import sources, transforms
from mach_jax.data.csr import CsrMatrix


def reference(rows, num_features, name, idf=None):
    """One row at a time, in plain Python: the definitions in data/transforms.py."""
    out = []
    for row in rows:
        values = {}
        for feature, value in row.items():
            if name != "none" and name != "l2":
                value = math.log1p(value)
            if name == "tfidf_l2":
                value *= idf[feature]
            values[feature] = value
        if name.endswith("l2"):
            norm = math.sqrt(sum(v * v for v in values.values())) or 1.0
            values = {f: v / norm for f, v in values.items()}
        out.append(values)
    return out


ROWS = [{0: 3.0, 3: 1.0, 5: 7.0}, {}, {1: 2.0, 3: 4.0}, {5: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}]


def as_csr(rows, num_features=6):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return CsrMatrix(indptr, [f for r in rows for f in r], [v for r in rows for v in r.values()], num_features)


def test_idf_is_the_smoothed_document_frequency():
    idf = transforms.fit_idf(as_csr(ROWS))
    n = len(ROWS)
    doc_freq = [sum(feature in row for row in ROWS) for feature in range(6)]
    np.testing.assert_allclose(idf, [math.log((1 + n) / (1 + df)) + 1 for df in doc_freq], rtol=1e-6)


@pytest.mark.parametrize("name", transforms.TRANSFORMS)
def test_each_transform_matches_the_reference(name):
    features = as_csr(ROWS)
    idf = transforms.fit_idf(features)
    got = transforms.apply(features, name, idf)
    want = reference(ROWS, 6, name, idf)
    np.testing.assert_array_equal(got.indptr, features.indptr)
    np.testing.assert_array_equal(got.indices, features.indices)
    np.testing.assert_allclose(got.values, [v for r in want for v in r.values()], rtol=1e-6)


@pytest.mark.parametrize("name", transforms.TRANSFORMS)
def test_the_batch_form_equals_the_csr_form_on_padded_rows(name):
    import jax.numpy as jnp

    features = as_csr(ROWS)
    idf = transforms.fit_idf(features)
    ids = np.zeros((len(ROWS), 4), np.int32)
    vals = np.zeros((len(ROWS), 4), np.float32)
    for i, row in enumerate(ROWS):
        ids[i, :len(row)], vals[i, :len(row)] = list(row), list(row.values())
    got = np.asarray(transforms.apply_to_batch(jnp.asarray(ids), jnp.asarray(vals), name, jnp.asarray(idf)))
    dense = transforms.apply(features, name, idf)
    for i, row in enumerate(ROWS):
        np.testing.assert_allclose(got[i, :len(row)], dense.values[dense.indptr[i]:dense.indptr[i + 1]],
                                   rtol=1e-6)
        assert not got[i, len(row):].any()  # padding stays zero: it touches no embedding row


def test_an_unknown_transform_is_refused_naming_the_field():
    with pytest.raises(Exception, match="data.input_transform='tfidf'"):
        get_preset("tiny").replace(data={"input_transform": "tfidf"}).validate()


def test_the_workdir_carries_the_transform_and_its_idf(tmp_path):
    config = get_preset("tiny").replace(data={"input_transform": "tfidf_l2"})
    metrics = experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "feature_idf.npy").exists()
    train, test = sources.load_datasets(config.data)
    ensemble = MachEnsemble.load(tmp_path / "run")
    assert ensemble.evaluate(test, progress=False)["P@1"] == metrics["P@1"]
    np.testing.assert_array_equal(ensemble.feature_idf, transforms.fit_idf(train.features))
    # An exported predictor takes the raw values and applies the same transform on device.
    import jax
    import jax.numpy as jnp

    from mach_jax.data.batches import pad_rows
    from mach_jax.readout.export import export_ensemble

    path = export_ensemble(ensemble, tmp_path / "model.stablehlo", batch_size=32, max_nnz=64, k=5)
    feat_ids, feat_vals = pad_rows(test.features, np.arange(32), 64)
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    _, exported_ids = exported.call(jnp.asarray(feat_ids), jnp.asarray(feat_vals))
    np.testing.assert_array_equal(np.asarray(exported_ids), ensemble.predict(test.features[:32], k=5)[1])
    plain = experiment.train_and_evaluate(get_preset("tiny"), tmp_path / "plain", progress=False)
    assert plain["P@1"] != metrics["P@1"]  # the transform reached the model
    assert not (tmp_path / "plain" / "feature_idf.npy").exists()
