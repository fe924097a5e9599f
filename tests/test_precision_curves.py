"""``scripts/precision_curves.py`` on the tiny preset: records per (B, r), PNG files, reused runs."""

import contextlib
import importlib.util
import io
import json
import logging
import sys
from pathlib import Path

import pytest

from mach_jax import MachEnsemble, cli, get_preset
from mach_jax.data import sources
from mach_jax.training.metric_log import METRICS_LOG, read_records
from mach_jax.storage.checkpoints import CHECKPOINT_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "precision_curves.py"

BUCKETS = (8, 32)
R = 3  # the tiny preset's R = 4, cut by a training flag after --: also checks those reach the runs
KS = (1, 3, 5)


def load_script():
    spec = importlib.util.spec_from_file_location("precision_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def run_script(out, root) -> str:
    """Runs the script's main on tiny (B = 8, 32; R = 3); returns its stdout."""
    argv = ["--preset", "tiny", "--buckets", *map(str, BUCKETS), "--out", str(out),
            "--workdir-root", str(root), "--quiet", "--", "-R", str(R)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert script.main(argv) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """One run of the script: (out folder, workdir root, its JSON, its stdout)."""
    pytest.importorskip("matplotlib")
    base = tmp_path_factory.mktemp("curves")
    out, root = base / "plots", base / "runs"
    stdout = run_script(out, root)
    return out, root, json.loads((out / script.JSON_FILE).read_text()), stdout


def test_one_record_per_bucket_count_and_repetition(curves):
    _, root, table, _ = curves
    records = table["records"]
    assert [(row["B"], row["r"]) for row in records] == [(b, r) for b in BUCKETS for r in range(1, R + 1)]
    assert all(row["outputs"] == row["B"] * row["r"] for row in records)
    assert all(0 <= row[f"P@{k}"] <= 1 for row in records for k in KS)
    meta = table["metadata"]
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["split"] == "test"
    assert meta["R"] == R and meta["buckets"] == list(BUCKETS) and meta["train_flags"] == ["-R", str(R)]
    assert "JAX" in meta["hardware"]
    for b in BUCKETS:  # each run trained its own B, with the flags after --
        ensemble = MachEnsemble.load(root / f"B{b}")
        assert ensemble.config.model.num_buckets == b and ensemble.config.model.num_repetitions == R


def test_full_r_matches_an_independent_evaluation_of_each_workdir(curves):
    _, root, table, _ = curves
    _, test = sources.load_datasets(get_preset("tiny").data)
    for b in BUCKETS:
        full = MachEnsemble.load(root / f"B{b}").evaluate(test, progress=False)
        row = [row for row in table["records"] if row["B"] == b and row["r"] == R][0]
        for k in KS:
            assert row[f"P@{k}"] == full[f"P@{k}"]


def test_png_files_and_markdown_table(curves, png_size):
    out, _, table, stdout = curves
    for name in (script.BUCKETS_PLOT, script.REPETITIONS_PLOT):
        path = out / name
        assert f"wrote {path}" in stdout
        width, height = png_size(path)
        assert width > 100 and height > 100
    assert "| B | outputs R·B | P@1 | P@3 | P@5 |" in stdout
    for row in script.full_r(table["records"]):
        assert f"| {row['B']} | {R * row['B']} ({R}·{row['B']}) | {100 * row['P@1']:.2f} |" in stdout


def test_second_run_reuses_the_finished_workdirs(curves):
    out, root, table, _ = curves

    def snapshot():
        files = sorted(p for b in BUCKETS for p in (root / f"B{b}" / CHECKPOINT_DIR).rglob("*"))
        return {str(p): p.stat().st_mtime_ns for p in files}

    def train_records(b):
        return [r for r in read_records(root / f"B{b}" / METRICS_LOG) if r["kind"] == "train"]

    before, logged = snapshot(), {b: train_records(b) for b in BUCKETS}
    run_script(out, root)
    assert snapshot() == before  # no checkpoint written
    for b in BUCKETS:
        assert train_records(b) == logged[b]  # no training step logged
        starts = [r for r in read_records(root / f"B{b}" / METRICS_LOG) if r["kind"] == "start"]
        assert starts[-1]["step"] == logged[b][-1]["step"]  # resumed at the last step
    assert json.loads((out / script.JSON_FILE).read_text())["records"] == table["records"]


@pytest.fixture
def cli_errors(monkeypatch, capsys):
    """Runs argv through ``cli.run_cli``; returns (exit status, stderr). Restores the logger after."""
    logger = logging.getLogger("mach_jax")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)

    def run(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_cli(lambda: script.main(argv), process_ends=False)
        return exit_info.value.code, capsys.readouterr().err
    return run


@pytest.mark.parametrize("argv, message", [
    (["--buckets"], "--buckets: give at least one bucket count B"),
    (["--buckets", "8", "1"], "--buckets: B=1 must be >= 2"),
    (["--buckets", "8", "--train", "nowhere/train.txt", "--test", "nowhere/test.txt"],
     "--train nowhere/train.txt: no such file"),
    (["--buckets", "8", "--", "--num-buckets", "4"], "--num-buckets after --: give it as --buckets"),
    (["--buckets", "8", "--", "--eval-reps", "2"], "--eval-repetitions: not for this script"),
    (["--buckets", "8", "--", "--epochs", "0"], "--epochs: train.epochs=0: must be >= 1"),
])
def test_bad_arguments_are_one_line_and_status_2(cli_errors, tmp_path, argv, message):
    pytest.importorskip("matplotlib")
    status, err = cli_errors(["--preset", "tiny", "--out", str(tmp_path), *argv])
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_missing_matplotlib_is_one_line_and_status_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert script.main(["--preset", "tiny", "--buckets", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: precision_curves.py needs matplotlib")


def test_own_flags_and_training_flags_reach_every_config():
    args = script.parse_arguments(["--preset", "tiny", "--buckets", "64", "16", "--out", "x", "--valid-frac",
                                   "0.2", "--seed", "3", "--", "--epochs", "1", "--aggregation", "logit"])
    configs = script.build_configs(args)
    assert list(configs) == [16, 64]  # in order of B
    for b, config in configs.items():
        assert config.model.num_buckets == b and config.model.num_repetitions == 4  # the rest: tiny's
        assert config.data.valid_frac == 0.2 and config.train.seed == 3
        assert config.train.epochs == 1 and config.eval.aggregation == "logit"
    assert script.workdir_root(args) == Path("x") / "runs"
