"""The TFDS builder and `load_tfds`: XC files -> ArrayRecord -> XCDataset, without TensorFlow.

Built from small synthetic XC files (a test-only config) and, when ../shared/data is there, from
the real Bibtex files through the registry's config and the command line.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from mach_jax.data.csr import CsrMatrix, XCDataset  # noqa: E402
from mach_jax.errors import DataFormatError
from mach_jax.errors import DatasetError
from mach_jax.data.tfds import load_tfds, parse_data_spec, prepare  # noqa: E402
from mach_jax import cli, tfds as tfds_cli  # noqa: E402
from support import run_in_process  # noqa: E402
from mach_jax.data.tfds.builder import XcConfig, find_split_file  # noqa: E402
from mach_jax.data.xc_format import read_xc, write_xc  # noqa: E402

D, L, N_TRAIN, N_TEST = 60, 25, 300, 70
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synthetic(n: int, seed: int) -> XCDataset:
    """Random rows plus the awkward ones: empty rows, edge ids, -0.0, tiny and huge values."""
    rng = np.random.default_rng(seed)
    nnz, k = rng.integers(0, 12, n), rng.integers(0, 5, n)
    nnz[:3], k[:3] = [0, 4, 0], [0, 0, 3]  # nothing; features only; labels only
    ids = np.concatenate([rng.choice(D, c, replace=False) for c in nnz])
    values = rng.standard_normal(len(ids)).astype(np.float32)
    ids[:4], values[:4] = [D - 1, 0, 7, 8], [-0.0, 1e-30, 3.4e38, 2.0]
    labels = np.concatenate([rng.choice(L, c, replace=False) for c in k])
    labels[0] = L - 1
    return XCDataset(CsrMatrix(np.r_[0, np.cumsum(nnz)], ids, values, D),
                     CsrMatrix(np.r_[0, np.cumsum(k)], labels, np.ones(len(labels)), L))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(manual_dir, data_dir) of the test-only config 'tiny-test', built once."""
    root = tmp_path_factory.mktemp("tfds")
    manual = root / "manual"
    manual.mkdir()
    write_xc(manual / "train.txt", _synthetic(N_TRAIN, 0))
    write_xc(manual / "test.txt.gz", _synthetic(N_TEST, 1))
    config = XcConfig(name="tiny-test", num_features=D, num_labels=L, num_train=N_TRAIN,
                      num_test=N_TEST)
    path = prepare(config, manual, root / "data")
    assert path == root / "data" / "extreme_classification" / "tiny-test" / "1.0.0"
    assert sorted(p.name for p in path.glob("*.array_record*")) == [
        "extreme_classification-test.array_record-00000-of-00001",
        "extreme_classification-train.array_record-00000-of-00001"]
    return manual, root / "data"


@pytest.mark.parametrize("split,source", [("train", "train.txt"), ("test", "test.txt.gz")])
def test_load_tfds_equals_read_xc(tiny, split, source):
    manual, data_dir = tiny
    expected = read_xc(manual / source, use_cache=False)
    got = load_tfds("tiny-test", data_dir, split=split, batch_size=64)  # 64: several reads
    assert got.features == expected.features and got.labels == expected.labels
    assert (got.num_features, got.num_labels) == (D, L)
    assert got.source.startswith("tfds:extreme_classification/tiny-test [")
    sliced = load_tfds("tiny-test", data_dir, split=f"{split}[5:12]")
    assert sliced.features == expected.features[5:12]
    assert sliced.labels == expected.labels[5:12]


def test_data_source_reads_without_tensorflow(tiny):
    """Plain tfds.data_source (TFDS's own decoding) and load_tfds, in a fresh process."""
    manual, data_dir = tiny
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow_datasets as tfds
        from mach_jax.data.xc_format import read_xc

        # The files alone (no mach_jax builder imported): TFDS reads them from their metadata.
        source = tfds.data_source("extreme_classification/tiny-test", split="train",
                                  data_dir={str(data_dir)!r}, download=False)
        assert "mach_jax.data.tfds.builder" not in sys.modules
        expected = read_xc({str(manual / 'train.txt')!r}, use_cache=False)
        assert len(source) == expected.num_points == {N_TRAIN}
        rows = source.__getitems__(list(range(len(source))))
        f, l = expected.features, expected.labels
        for i, row in enumerate(rows):
            assert row["feature_ids"].dtype == np.int32 and row["labels"].dtype == np.int32
            assert row["feature_values"].dtype == np.float32
            s, e = f.indptr[i], f.indptr[i + 1]
            assert np.array_equal(row["feature_ids"], f.indices[s:e])
            assert row["feature_values"].tobytes() == f.values[s:e].tobytes()  # -0.0 too
            assert np.array_equal(row["labels"], l.indices[l.indptr[i]:l.indptr[i + 1]])

        from mach_jax.data.tfds import load_tfds
        assert load_tfds("tiny-test", {str(data_dir)!r}, split="train") == expected
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        print("ok", len(rows))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["ok", str(N_TRAIN)]


def test_registry_config_from_downloader_layout(shared_data, tmp_path):
    """Bibtex through its registry config: the CLI builds it, load_tfds reads it back."""
    result = run_in_process("mach_jax.tfds", "Bibtex", "--manual-dir", str(shared_data),
                            "--data-dir", str(tmp_path / "cli"), cwd=tmp_path)
    assert result.stdout.strip().endswith(os.path.join("extreme_classification", "bibtex",
                                                       "1.0.0"))
    expected = read_xc(shared_data / "bibtex" / "test.txt.gz")
    assert load_tfds("BibTeX", tmp_path / "cli", split="test") == expected
    # load_tfds builds a registry dataset itself when given the manual_dir.
    got = load_tfds("bibtex", tmp_path / "auto", split="train", manual_dir=shared_data)
    assert got == read_xc(shared_data / "bibtex" / "train.txt.gz")
    assert (got.num_features, got.num_labels, got.num_points) == (1836, 159, 4880)


def test_parse_data_spec():
    assert parse_data_spec("tfds:Amazon-670K") == "Amazon-670K"
    assert parse_data_spec("tfds:tiny-test") == "tiny-test"
    assert parse_data_spec("data/train.txt") is None
    assert parse_data_spec("synthetic") is None
    for bad in ("tfds:", "tfds:a/b", "tfds:x y"):
        with pytest.raises(DatasetError, match="expected tfds:NAME"):
            parse_data_spec(bad)


def test_unbuilt_dataset_and_bad_split(tiny, tmp_path):
    with pytest.raises(DatasetError, match=r"extreme_classification/bibtex is not built.*"
                                           r"python -m mach_jax\.tfds Bibtex --manual-dir"):
        load_tfds("Bibtex", tmp_path, split="train")
    with pytest.raises(DatasetError, match="is not built"):
        load_tfds("no-such-config", tmp_path, split="train")
    with pytest.raises(DatasetError, match="bad split 'validation'") as error:
        load_tfds("tiny-test", tiny[1], split="validation")
    assert "\n" not in str(error.value)


def test_find_split_file(tmp_path):
    config = XcConfig(name="amazon-670k", folder="Amazon-670K")
    (tmp_path / "Amazon-670K").mkdir()
    (tmp_path / "Amazon-670K" / "train.txt.gz").write_bytes(b"")
    assert find_split_file(tmp_path, config, "train") == tmp_path / "Amazon-670K" / "train.txt.gz"
    (tmp_path / "train.txt").write_bytes(b"")
    assert find_split_file(tmp_path, config, "train") == tmp_path / "train.txt"  # DIR first
    with pytest.raises(DatasetError, match=r"amazon-670k: no test file in .*test\.txt\.gz"):
        find_split_file(tmp_path, config, "test")


def test_build_errors(tiny, tmp_path, capsys):
    manual, _ = tiny
    wrong = XcConfig(name="wrong-d", num_features=D + 1, num_labels=L)
    with pytest.raises(DataFormatError, match=rf"train\.txt:1: header has D={D} but wrong-d "
                                              rf"has D={D + 1}"):
        prepare(wrong, manual, tmp_path)
    with pytest.raises(DatasetError, match="no train file"):
        prepare(XcConfig(name="empty", num_features=D, num_labels=L), tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'Nope'; known: Mediamill, Bibtex"):
        prepare("Nope", manual, tmp_path)
    capsys.readouterr()  # TFDS's progress bars so far
    with pytest.raises(SystemExit) as stopped:  # the command's own error path: one line, status 2
        cli.run_cli(lambda: tfds_cli.main(["Nope", "--manual-dir", str(manual), "--data-dir", str(tmp_path)]),
                    process_ends=False)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'Nope'; known: ")


def test_records_that_do_not_fit_the_metadata(tiny, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny[1] / "extreme_classification", data_dir / "extreme_classification")
    meta = data_dir / "extreme_classification" / "tiny-test" / "1.0.0" / "metadata.json"
    meta.write_text(json.dumps({"num_features": D - 1, "num_labels": L}))
    with pytest.raises(DataFormatError, match=rf"1\.0\.0: split 'train': column ids must lie "
                                              rf"in \[0, {D - 1}\)"):
        load_tfds("tiny-test", data_dir, split="train")


def test_training_on_a_tfds_source_equals_training_on_its_files(tiny, tmp_path):
    """--data tfds:NAME trains on exactly the data of the XC files it was built from."""
    manual, data_dir = tiny
    common = ["--preset", "tiny", "--quiet", "--epochs", "1"]
    run_in_process("mach_jax.train", *common, "--data", "tfds:tiny-test", "--tfds-data-dir", str(data_dir),
                   "--workdir", "a", cwd=tmp_path)
    run_in_process("mach_jax.train", *common, "--train", str(manual / "train.txt"), "--test",
                   str(manual / "test.txt.gz"), "--workdir", "b", cwd=tmp_path)
    via_tfds, via_files = (json.loads((tmp_path / w / "metrics.json").read_text()) for w in ("a", "b"))
    for key in ("P@1", "P@3", "P@5", "nDCG@5"):
        assert via_tfds[key] == via_files[key], key
    bad = run_in_process("mach_jax.train", *common, "--data", "nope", "--workdir", "c", cwd=tmp_path,
                         check=False)
    assert bad.returncode == 2 and "data.dataset" in bad.stderr and "Traceback" not in bad.stderr
