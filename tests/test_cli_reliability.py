"""The commands as a new user meets them: one ``error:`` line and status 2 for every expected
failure, values refused where they are given, results on stdout and status on stderr, outputs
that are complete or untouched, and evaluations that say what they read.

Every command runs in-process through its real error path (``support.run_in_process``), on one
tiny run trained once for the module.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from mach_jax.config import get_preset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import read_xc, write_xc
from mach_jax.data.xc_stream import iter_xc_chunks
from mach_jax.experiment import train_and_evaluate
from mach_jax.readout import metrics
from support import run_in_process

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (2 epochs of 10 steps, checkpoints 10 and 20) and its test file."""
    root = tmp_path_factory.mktemp("cli_reliability")
    _, test = make_synthetic(TINY.data.synthetic)
    train_and_evaluate(TINY, root / "work", progress=False)
    write_xc(root / "test.txt", test)
    return root


def run(root, module, *args):
    return run_in_process(f"mach_jax.{module}", *args, cwd=root, check=False)


def assert_one_error_line(result, *expected):
    """Status 2, and stderr ends with one ``error:`` line holding every expected text."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in last, last
    return last


@pytest.mark.parametrize("module, args, expected", [
    ("train", ["--seed", "-1"], ["--seed: train.seed=-1: must be in [0, 2**32)"]),
    ("train", ["--seed", str(2**64)], ["--seed: 18446744073709551616 is out of range"]),
    ("predict", ["--k", "301"], ["--k 301: the model has only L=300 classes"]),
    ("predict", ["--k", "-1"], ["--k: must be >= 1, got -1"]),
    ("predict", ["--output", "."], ["--output .: is a folder"]),
])
def test_case7_bad_seeds_k_and_a_folder_as_output_are_one_line_errors(trained, module, args, expected):
    common = ["--preset", "tiny", "--workdir", "new"] if module == "train" else [
        "--workdir", "work", "--input", "test.txt"]
    assert_one_error_line(run(trained, module, *common, "--quiet", *args), *expected)
    assert not (trained / "new").exists()  # refused before the workdir was made


def test_case9_a_failed_predict_leaves_the_output_file_as_it_was(trained):
    good = (trained / "test.txt").read_text().splitlines()
    bad = good[:80] + ["1 7:1:2"] + good[81:]  # point 79 (line 81) is malformed
    (trained / "bad.txt").write_text("\n".join(bad) + "\n")
    (trained / "out.txt").write_text("the previous predictions\n")
    result = run(trained, "predict", "--workdir", "work", "--input", "bad.txt", "--output", "out.txt",
                 "--chunk-rows", "16", "--quiet")  # 4 chunks are scored before the bad line
    assert_one_error_line(result, "bad.txt:81:")
    assert (trained / "out.txt").read_text() == "the previous predictions\n"
    assert sorted(p.name for p in trained.iterdir() if p.name.startswith(".out.txt")) == []
    # The input may be its own output: it is read whole before it is replaced.
    shutil.copy(trained / "test.txt", trained / "inplace.txt")
    run(trained, "predict", "--workdir", "work", "--input", "inplace.txt", "--output", "inplace.txt", "--quiet")
    on_stdout = run(trained, "predict", "--workdir", "work", "--input", "test.txt")  # a progress bar
    assert (trained / "inplace.txt").read_text() == on_stdout.stdout and len(on_stdout.stdout.splitlines()) == 200
    assert all(len(line.split()) == 5 for line in on_stdout.stdout.splitlines())  # predictions alone
    assert "predict: " in on_stdout.stderr  # status on stderr


@pytest.mark.parametrize("module, args, expected", [
    ("predict", ["--k", "0"], "--k: must be >= 1, got 0"),
    ("predict", ["--chunk-rows", "0"], "--chunk-rows: must be >= 1, got 0"),
    ("predict", ["--export", "e.hlo", "--export-max-nnz", "0"], "--export-max-nnz: must be >= 1, got 0"),
    ("train", ["--hidden", "32,,16"], "--hidden-sizes/--hidden: expected comma-separated integers, got '32,,16'"),
    ("train", ["--propensity-a", "nan"], "--propensity-a: eval.propensity_a=nan: must be > 0 and finite"),
    ("evaluate", ["--propensity-a", "nan"], "--propensity-a: eval.propensity_a=nan: must be > 0 and finite"),
])
def test_values_that_were_accepted_are_refused_where_they_are_given(trained, module, args, expected):
    common = {"train": ["--preset", "tiny", "--workdir", "new"], "evaluate": ["--workdir", "work"],
              "predict": ["--workdir", "work", "--input", "test.txt"]}[module]
    assert_one_error_line(run(trained, module, *common, "--quiet", *args), expected)
    assert not (trained / "new").exists() and not (trained / "e.hlo").exists()


def test_evaluate_writes_eval_decoder_json_beside_metrics_json_and_names_the_decoder(trained):
    metrics_json = (trained / "work" / "metrics.json").read_text()
    assert "train_seconds" in json.loads(metrics_json)
    for decoder in ("exact", "approx"):
        result = run(trained, "evaluate", "--workdir", "work", "--test", "test.txt", "--decoder", decoder, "--quiet")
        assert result.returncode == 0, result.stderr
        written = json.loads((trained / "work" / f"eval-{decoder}.json").read_text())
        assert written["decoder"].startswith(decoder) and written["checkpoint_step"] == 20
        assert written["num_points"] == 200 and 0 < written["P@1"] <= 1
        # The results alone on stdout (a heading naming the decoder, three lines); status on stderr.
        out = result.stdout.splitlines()
        assert len(out) == 4 and out[0].startswith("test metrics on 200 points (test.txt)")
        assert out[0].endswith(f", {written['decoder']} decoder:"), out[0]
        assert [line.split()[0] for line in out[1:]] == ["P@1", "nDCG@1", "PSP@1"]
        assert result.stderr == f"written to work/eval-{decoder}.json\n"  # and no warning: the final step
    assert (trained / "work" / "metrics.json").read_text() == metrics_json  # train_seconds kept


def test_evaluate_and_predict_warn_when_the_checkpoint_is_not_the_run_final_step(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "unfinished")
    shutil.rmtree(tmp_path / "unfinished" / "checkpoints" / "20")  # as if stopped after epoch 1
    warning = ("warning: unfinished: evaluating step 10 of 20: the run has not finished "
               "(or another run is writing here)")
    shutil.copy(trained / "test.txt", tmp_path)
    result = run(tmp_path, "evaluate", "--workdir", "unfinished", "--quiet")
    assert result.returncode == 0 and warning in result.stderr.splitlines()
    result = run(tmp_path, "predict", "--workdir", "unfinished", "--input", "test.txt", "--k", "1", "--quiet")
    assert result.returncode == 0 and "predicting with step 10 of 20" in result.stderr
    # The run's last step is what its checkpoint recorded, not what config.json's epochs would give.
    shutil.copytree(trained / "work", tmp_path / "finished")
    saved = json.loads((tmp_path / "finished" / "config.json").read_text())
    saved["config"]["train"]["epochs"] = 5
    (tmp_path / "finished" / "config.json").write_text(json.dumps(saved))
    result = run(tmp_path, "evaluate", "--workdir", "finished", "--quiet")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_flags_are_whole_words_and_predict_offers_only_what_affects_prediction(trained):
    # `--top 10` was read as --top-buckets 10 (argparse's prefix matching), `--epoch` as --epochs.
    assert_one_error_line(run(trained, "predict", "--workdir", "work", "--input", "test.txt", "--top", "10"),
                          "unrecognized arguments: --top 10")
    assert_one_error_line(run(trained, "train", "--preset", "tiny", "--epoch", "1"),
                          "unrecognized arguments: --epoch 1")
    assert_one_error_line(run(trained, "evaluate", "--workdir", "work", "--agg", "logit"),
                          "unrecognized arguments: --agg logit")
    shown = run(trained, "predict", "--help")
    assert shown.returncode == 0 and "--top-buckets" in shown.stdout and "--eval-batch-size" in shown.stdout
    assert "--propensity" not in shown.stdout
    assert_one_error_line(run(trained, "predict", "--workdir", "work", "--input", "test.txt",
                              "--propensity-a", "0.5"), "unrecognized arguments: --propensity-a")


def test_a_utf8_byte_order_mark_is_accepted_by_both_readers(trained, tmp_path):
    text = (trained / "test.txt").read_bytes()
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text)
    plain = read_xc(trained / "test.txt", use_cache=False)
    assert read_xc(tmp_path / "bom.txt", use_cache=False).features == plain.features
    streamed = list(iter_xc_chunks(tmp_path / "bom.txt", rows_per_chunk=150))
    assert [chunk.num_points for chunk in streamed] == [150, 50]
    assert streamed[0].labels == plain.labels.take(np.arange(150))


def test_data_with_fewer_than_5_labels_trains_and_reports_the_k_it_has(tmp_path):
    def write(name, num_points):
        rows = [f"{i % 3} {i % 3}:1 {3 + i % 7}:0.5" for i in range(num_points)]
        (tmp_path / name).write_text("\n".join([f"{num_points} 10 3", *rows]) + "\n")
    write("train.txt", 64)
    write("test.txt", 30)
    result = run(tmp_path, "train", "--preset", "tiny", "--train", "train.txt", "--test", "test.txt",
                 "-R", "2", "-B", "2", "--hidden", "8", "--epochs", "2", "--eval-every-epochs", "1", "--workdir", "w")
    assert result.returncode == 0, result.stderr
    assert "P@1" in result.stdout and "P@3" in result.stdout and "P@5" not in result.stdout
    epoch_line = next(line for line in result.stderr.splitlines() if "epoch 1: " in line)  # on stderr
    assert "P@3" in epoch_line and "P@5" not in epoch_line
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert {"P@1", "P@3", "PSP@3"} <= set(metrics) and "P@5" not in metrics and "nDCG@5" not in metrics
    assert "written to w/metrics.json" in result.stderr  # status on stderr
    assert_one_error_line(run(tmp_path, "predict", "--workdir", "w", "--input", "test.txt", "--k", "4"),
                          "--k 4: the model has only L=3 classes")


def test_case8_files_that_cannot_be_read_or_written_are_one_line_errors(trained, tmp_path):
    shutil.copytree(trained / "work", tmp_path / "work", ignore=shutil.ignore_patterns("eval-*.json"))
    (tmp_path / "work" / "eval-exact.json").mkdir()  # a folder where the results go
    shutil.copy(trained / "test.txt", tmp_path)
    result = run(tmp_path, "evaluate", "--workdir", "work", "--quiet")
    # The results are printed first; a workdir that cannot take them (read-only, say) is warned of.
    assert result.returncode == 0 and result.stdout.startswith("test metrics on 200 points")
    assert result.stderr.strip().splitlines()[-1] == (
        "warning: cannot write work/eval-exact.json (Is a directory): the metrics above are not saved")
    assert [p.name for p in (tmp_path / "work").iterdir() if p.name.endswith(".tmp")] == []
    assert_one_error_line(run(tmp_path, "evaluate", "--workdir", "work", "--test", ".", "--quiet"),
                          ".: cannot read file (Is a directory)")
    missing = run(tmp_path, "predict", "--workdir", "work", "--input", "nowhere.txt", "--export", "e.hlo")
    assert_one_error_line(missing, "nowhere.txt: cannot read file (No such file or directory)")
    assert not (tmp_path / "e.hlo").exists()  # nothing written for a refused run
    assert_one_error_line(run(tmp_path, "predict", "--workdir", "work", "--export", "work"),
                          "--export work: is a folder")
    assert_one_error_line(run(tmp_path, "predict", "--workdir", "work", "--input", "test.txt",
                              "--output", "no/such/folder.txt"), "the folder no/such does not exist")
    assert_one_error_line(run(tmp_path, "predict", "--workdir", "work"), "nothing to do: give --input FILE")


def test_metrics_of_fewer_than_5_classes_are_those_of_k_up_to_l():
    """Top 3 of L = 3 classes: P@1 and P@3 as the first 3 columns of a top 5 give them, no P@5."""
    rng = np.random.default_rng(0)
    top5 = np.stack([rng.permutation(5) for _ in range(8)]).astype(np.int32)
    label_ids = rng.integers(0, 3, size=(8, 2)).astype(np.int32)
    label_mask = np.array([[1, float(a != b)] for a, b in label_ids], np.float32)
    inputs = (label_ids, label_mask, np.ones(8, np.float32), np.ones(5, np.float32))
    sums = jax.jit(metrics.metric_sums)  # one compile per width, not one per operation
    wide = metrics.finalize(sums(top5, *inputs))
    narrow = metrics.finalize(sums(top5[:, :metrics.top_k(3)], *inputs))
    assert set(narrow) == {"num_points"} | {f"{name}@{k}" for name in ("P", "nDCG", "PSP") for k in (1, 3)}
    for key in narrow:
        assert narrow[key] == pytest.approx(wide[key]), key
    shown = metrics.format_metrics({**narrow, "num_repetitions": 2, "aggregation": "prob", "decoder": "exact"})
    assert shown.splitlines()[1] == f"P@1 {100 * narrow['P@1']:6.2f}  P@3 {100 * narrow['P@3']:6.2f}"


def test_a_tab_between_labels_and_features_or_after_labels_reads_as_a_space(tmp_path):
    from mach_jax.data.xc_format import read_xc

    (tmp_path / "tabs.txt").write_text("3 4 3\n0,1\t0:1 2:0.5\n2\t\n\t1:2\n")
    (tmp_path / "spaces.txt").write_text("3 4 3\n0,1 0:1 2:0.5\n2 \n 1:2\n")
    tabs, spaces = (read_xc(tmp_path / name, use_cache=False) for name in ("tabs.txt", "spaces.txt"))
    np.testing.assert_array_equal(tabs.features.to_dense(), spaces.features.to_dense())
    np.testing.assert_array_equal(tabs.labels.to_dense(), spaces.labels.to_dense())
    assert tabs.labels.to_dense()[1].tolist() == [0, 0, 1] and tabs.features.to_dense()[1].sum() == 0


def test_train_prints_only_its_results_on_stdout(tmp_path):
    result = run(tmp_path, "train", "--preset", "tiny", "--workdir", "w", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("test metrics on 200 points")
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["P@1", "nDCG@1", "PSP@1"]
    for status in ("mach_jax: R=4 members", "data: synthetic", "model: R=4", "written to w/metrics.json"):
        assert status in result.stderr
