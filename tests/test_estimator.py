"""``MachClassifier`` against the command line: the same bibtex run gives the same metrics; its
predictions are the same for every input kind and after save / load; bad inputs get one named
error; scikit-learn's clone and Pipeline take it (GridSearchCV runs in the from_text notebook's
test); its defaults size a small text problem about as well as hand-tuned settings."""

import json
import logging

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")
sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from mach_jax import MachClassifier, MachEnsemble, read_xc  # noqa: E402
from mach_jax.data.csr import CsrMatrix  # noqa: E402
from mach_jax.data.tagged_text import make_tagged_texts  # noqa: E402
from mach_jax.readout import xc_metrics  # noqa: E402
from mach_jax.evaluate import main as evaluate_main  # noqa: E402
from mach_jax.train import main as train_main  # noqa: E402

# Cheap settings of the bibtex preset: the same for the command and the estimator.
SETTINGS = {"num_repetitions": 4, "num_buckets": 64, "hidden_sizes": (64,), "epochs": 1}
FLAGS = ["--num-repetitions", "4", "--num-buckets", "64", "--hidden-sizes", "64", "--epochs", "1"]


@pytest.fixture(scope="module")
def bibtex():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    train = read_xc(SHARED_DATA / "bibtex" / "train.txt.gz", as_scipy=True)
    test = read_xc(SHARED_DATA / "bibtex" / "test.txt.gz", as_scipy=True)
    return train, test


@pytest.fixture(scope="module")
def fitted(bibtex, tmp_path_factory):
    (x, y), _ = bibtex
    workdir = tmp_path_factory.mktemp("estimator") / "run"
    return MachClassifier(preset="bibtex", workdir=str(workdir), verbose=False, **SETTINGS).fit(x, y)


def test_the_same_metrics_as_the_command_line(fitted, bibtex, shared_data, tmp_path):
    workdir = tmp_path / "cli"
    assert train_main(["--preset", "bibtex", *FLAGS, "--quiet", "--workdir", str(workdir),
                       "--train", str(shared_data / "bibtex" / "train.txt.gz"),
                       "--test", str(shared_data / "bibtex" / "test.txt.gz")]) == 0
    expected = json.loads((workdir / "metrics.json").read_text())
    _, (x_test, y_test) = bibtex
    found = fitted.ensemble_.evaluate(x_test, y_test, progress=False)
    for name in ("P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5", "PSP@1", "PSP@3", "PSP@5"):
        assert found[name] == expected[name], name
        assert fitted.score(x_test, y_test, metric=name) == expected[name], name
    assert fitted.score(x_test, y_test) == expected["P@1"]
    # Other k: the xc_metrics functions on the predictions (checked against numpy in test_xc_metrics).
    ids, scores = fitted.predict(x_test, k=2)
    assert fitted.score(x_test, y_test, metric="P@2") == xc_metrics.precision(y_test, ids, 2)[1]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_every_input_kind_gives_the_same_predictions(fitted, bibtex):
    _, (x_test, _) = bibtex
    x_test = x_test[:300]
    want = fitted.predict(x_test, k=5)
    for kind in (sp.csc_matrix(x_test), sp.coo_matrix(x_test), sp.csr_array(x_test), x_test.toarray(),
                 CsrMatrix.from_scipy(x_test)):
        got = fitted.predict(kind, k=5)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    scores, ids = fitted.ensemble_.predict(x_test, k=5)  # MachEnsemble takes scipy too
    np.testing.assert_array_equal(ids, want[0])
    by_class = fitted.predict_scores(x_test, [int(want[0][0, 0]), 3])
    assert by_class[0, 0] == want[1][0, 0] and by_class.shape == (300, 2)


def test_save_and_load_round_trip(fitted, bibtex, shared_data, tmp_path):
    _, (x_test, y_test) = bibtex
    want = fitted.predict(x_test, k=5)
    copy = MachClassifier.load(fitted.save(tmp_path / "saved"))
    # The command line evaluates the saved workdir as any other.
    assert evaluate_main(["--workdir", str(tmp_path / "saved"), "--quiet",
                          "--test", str(shared_data / "bibtex" / "test.txt.gz")]) == 0
    assert json.loads((tmp_path / "saved" / "eval-exact.json").read_text())["P@1"] == fitted.score(x_test, y_test)
    for got in (copy.predict(x_test, k=5), MachEnsemble.load(tmp_path / "saved").predict(x_test, k=5)[::-1]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    served = MachClassifier.load(fitted.save(tmp_path / "served", for_serving=True, dtype="bfloat16",
                                             num_members=2))
    assert served.config_.model.num_repetitions == 2
    assert abs(served.score(x_test, y_test) - fitted.score(x_test, y_test)) < 0.1
    with pytest.raises(FileExistsError, match="not empty"):
        fitted.save(tmp_path / "saved")


@pytest.mark.parametrize("change, message, at_fit", [
    (lambda x, y: (x[:, :-1], y), "1835 columns .* D=1836", False),  # fit takes any width
    (lambda x, y: (x.toarray() * np.nan, y), "NaN or infinite", True),
    (lambda x, y: (x, y[:-1]), "19 rows but X has 20", True),
    (lambda x, y: (x, [[0, -1]] * x.shape[0]), "negative", True),
    (lambda x, y: (x, [[0, 500]] * x.shape[0]), r"outside \[0, 159\)", False),  # fit: L = 501 classes
    (lambda x, y: (x, [[0, 0]] * x.shape[0]), "appears twice", True),
    (lambda x, y: (x, "labels"), "one list of label ids per point", True),
    (lambda x, y: (x[:, :0].tocsr()[:0], y[:0]), "no rows", True),
])
def test_bad_inputs_are_named(fitted, bibtex, change, message, at_fit):
    _, (x_test, y_test) = bibtex
    x, y = change(x_test[:20], y_test[:20])
    if message != "no rows":
        with pytest.raises((ValueError, TypeError), match=message):
            fitted.score(x, y)
    if at_fit:  # refused before anything is built or trained
        with pytest.raises((ValueError, TypeError), match=message):
            MachClassifier(verbose=False).fit(x, y)


def test_bad_arguments_are_named(fitted, bibtex):
    _, (x_test, y_test) = bibtex
    with pytest.raises(ValueError, match="metric='P@0'"):
        fitted.score(x_test[:20], y_test[:20], metric="P@0")
    with pytest.raises(ValueError, match="k=200"):
        fitted.predict(x_test[:20], k=200)
    with pytest.raises(ValueError, match="classes"):
        fitted.predict_scores(x_test[:20], [159])


def test_scikit_learn_conventions():
    mach = MachClassifier(num_buckets=16, epochs=3, dropout=0.1, verbose=False)
    assert mach.get_params()["epochs"] == 3 and mach.get_params()["dropout"] == 0.1
    copy = clone(mach)
    assert copy.get_params() == mach.get_params() and copy is not mach
    Pipeline([("mach", mach)]).set_params(mach__learning_rate=1e-2, mach__num_buckets=8)
    assert mach.learning_rate == 1e-2 and mach.num_buckets == 8 and clone(mach).learning_rate == 1e-2
    with pytest.raises(ValueError, match="'epoch' is not a configuration field; did you mean epochs"):
        MachClassifier(epoch=3)
    with pytest.raises(ValueError, match="takes the data"):
        MachClassifier(train_path="train.txt")
    with pytest.raises(RuntimeError, match="not fitted"):
        mach.predict(np.zeros((1, 3)))


@pytest.fixture(scope="module")
def texts():
    """600 generated tagged texts (40 tags) as tf-idf rows: 480 to train, 120 to test."""
    texts, tags, _ = make_tagged_texts(600, num_tags=40, seed=0)
    vectorizer = TfidfVectorizer().fit(texts[:480])
    return vectorizer.transform(texts[:480]), tags[:480], vectorizer.transform(texts[480:]), tags[480:]


# The hand-tuned settings of the 40-tag problem: `python -m mach_jax.train -B 16 -R 16 --hidden-sizes 128
# --epochs 20 --batch-size 32` (the default preset's other settings).
HAND_TUNED = {"preset": "default", "num_buckets": 16, "num_repetitions": 16, "hidden_sizes": (128,), "epochs": 20,
              "batch_size": 32}


def test_defaults_size_a_small_problem(texts, capsys):
    x, y, x_test, y_test = texts
    mach = MachClassifier()
    default = mach.fit(x, y).score(x_test, y_test)
    status = capsys.readouterr().err  # verbose: the start-up lines on stderr during fit
    assert "data: <fit(X, Y)>" in status and "\nmodel: " in status
    assert "B = 20: min(L/2, N/4) = min(20, 120) = 20" in status and "7 epochs: 5, or more" in status
    # B, R, hidden size, step size, epochs and batch size from the shape (L = 40, N = 480): config.sizing.
    model, train = mach.config_.model, mach.config_.train
    assert (model.num_buckets, model.num_repetitions, model.hidden_sizes) == (20, 16, (128,))
    assert (train.batch_size, train.learning_rate, train.epochs, train.loss) == (32, 0.01, 7, "sigmoid")
    hand_tuned = MachClassifier(verbose=False, **HAND_TUNED).fit(x, y).score(x_test, y_test)
    assert default >= 0.9 * hand_tuned
    assert not logging.getLogger("mach_jax").handlers  # the handler was the fit's alone
