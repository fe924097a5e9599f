"""Streaming prediction through the real command (in-process), and the exported StableHLO
predictor (in a subprocess that never imports mach_jax)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset
from mach_jax.training import loop as trainer
from mach_jax.errors import DataFormatError
from mach_jax.data.batches import pad_rows
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.data.xc_stream import iter_xc_chunks
from support import run_in_process

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    train, test = make_synthetic(TINY.data.synthetic)
    trainer.train(TINY, root / "work", train, progress=False)
    write_xc(root / "test.txt.gz", test)
    return root, test


def test_chunks_concatenate_to_the_whole_file(trained):
    root, test = trained
    chunks = list(iter_xc_chunks(root / "test.txt.gz", rows_per_chunk=7))
    assert [c.num_points for c in chunks] == [7] * 28 + [4]
    whole = read_xc(root / "test.txt.gz", use_cache=False)
    rows = [chunk.features.to_dense() for chunk in chunks]
    np.testing.assert_array_equal(np.concatenate(rows), whole.features.to_dense())
    np.testing.assert_array_equal(np.concatenate([c.labels.to_dense() for c in chunks]),
                                  whole.labels.to_dense())


def test_stream_errors_name_the_line_in_the_whole_file(tmp_path):
    lines = ["30 5 4"] + [f"{i % 4} {i % 5}:1" for i in range(30)]
    lines[22] = "1 7:1"  # data row 21 (line 23): feature id 7 >= D = 5
    (tmp_path / "bad.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as whole:
        read_xc(tmp_path / "bad.txt", use_cache=False)
    with pytest.raises(DataFormatError) as streamed:
        list(iter_xc_chunks(tmp_path / "bad.txt", rows_per_chunk=4))
    assert streamed.value.line == whole.value.line == 23
    good = ["30 5 4"] + [f"{i % 4} {i % 5}:1" for i in range(30)]
    (tmp_path / "short.txt").write_text("\n".join(["31 5 4"] + good[1:]) + "\n")
    with pytest.raises(DataFormatError, match="header declares 31 points but the file has 30"):
        list(iter_xc_chunks(tmp_path / "short.txt", rows_per_chunk=8))


def test_predict_command_streams_the_same_top_k(trained):
    root, test = trained
    shown = run_in_process("mach_jax.predict", "--workdir", "work", "--input", "test.txt.gz", "--k", "3",
                           "--chunk-rows", "64", "--output", "out.txt", cwd=root)
    assert "predict: 4chunk" in shown.stderr  # a progress bar over the streamed chunks
    quiet = run_in_process("mach_jax.predict", "--workdir", "work", "--input", "test.txt.gz", "--k", "3",
                           "--output", "quiet.txt", "--quiet", cwd=root)
    assert "chunk" not in quiet.stderr
    assert (root / "quiet.txt").read_text() == (root / "out.txt").read_text()
    lines = (root / "out.txt").read_text().splitlines()
    assert len(lines) == test.num_points
    pairs = [[item.split(":") for item in line.split()] for line in lines]
    ids = np.array([[int(i) for i, _ in row] for row in pairs])
    scores = np.array([[float(s) for _, s in row] for row in pairs])
    expected_scores, expected_ids = MachEnsemble.load(root / "work").predict(test.features, k=3)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_exported_predictor_runs_without_mach_jax_and_matches(trained):
    from mach_jax.readout.export import export_ensemble

    root, test = trained
    ensemble = MachEnsemble.load(root / "work")
    path = export_ensemble(ensemble, root / "model.stablehlo", batch_size=32, max_nnz=64, k=5)
    feat_ids, feat_vals = pad_rows(test.features, np.arange(32), 64)
    np.save(root / "ids.npy", feat_ids)
    np.save(root / "vals.npy", feat_vals)
    script = ("import sys, numpy as np, jax, jax.numpy as jnp\n"
              "exported = jax.export.deserialize(bytearray(open('model.stablehlo', 'rb').read()))\n"
              "scores, ids = exported.call(jnp.asarray(np.load('ids.npy')), jnp.asarray(np.load('vals.npy')))\n"
              "assert 'mach_jax' not in sys.modules\n"
              "np.save('exported_ids.npy', np.asarray(ids)); np.save('exported_scores.npy', np.asarray(scores))\n")
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, capture_output=True,
                   env=dict(os.environ, JAX_PLATFORMS="cpu"))
    expected_scores, expected_ids = ensemble.predict(test.features[:32], k=5)
    np.testing.assert_array_equal(np.load(root / "exported_ids.npy"), expected_ids)
    np.testing.assert_allclose(np.load(root / "exported_scores.npy"), expected_scores, rtol=1e-5)
    assert path.exists() and (root / "model.stablehlo.json").exists()


def test_approximate_predictions_through_api_and_command(trained, fresh_steps):
    root, test = trained
    exact = MachEnsemble.load(root / "work")
    num_buckets = exact.config.model.num_buckets
    exact_scores, exact_ids = exact.predict(test.features, k=5, approx=False)
    # Every bucket a top bucket: every class is a candidate, so approx is exact.
    everything = MachEnsemble.load(root / "work", top_buckets=num_buckets)
    all_scores, all_ids = everything.predict(test.features, k=5, approx=True)
    np.testing.assert_array_equal(all_ids, exact_ids)
    np.testing.assert_allclose(all_scores, exact_scores, rtol=1e-5)
    # With one top bucket the candidates are fewer, and the command streams what the API returns.
    one = MachEnsemble.load(root / "work", decoder="approx", top_buckets=1)
    expected_scores, expected_ids = one.predict(test.features, k=5)
    assert not np.array_equal(expected_ids, exact_ids)
    compiled = one._predict_step._cache_size()  # shared with exact's and everything's, one program each
    assert compiled == 3
    run_in_process("mach_jax.predict", "--workdir", "work", "--input", "test.txt.gz", "--decoder", "approx",
                   "--top-buckets", "1", "--chunk-rows", "50", "--output", "approx.txt", cwd=root)
    rows = [[item.split(":") for item in line.split()] for line in (root / "approx.txt").read_text().splitlines()]
    np.testing.assert_array_equal([[int(i) for i, _ in row] for row in rows], expected_ids)
    widest = int(np.argmax(test.features.row_nnz()))
    compiled = one._predict_step._cache_size()  # and the command's chunks of 50 rows
    one.predict(test.features.take(np.r_[widest, 0:36]), k=5)  # fewer points, same K: no new compile
    assert one._predict_step._cache_size() == compiled
    found = one.evaluate(test, progress=False)
    assert found["decoder"].startswith("approx (top_buckets=1")
    assert 0 < found["P@1"] <= 1
