"""``python -m mach_jax.plot``: PNG files from a trained tiny run, and P@k against r."""

import json
import sys

import jax
import numpy as np
import pytest

from mach_jax import MachEnsemble, get_preset, plot
from mach_jax import experiment
from mach_jax.data import prepare
from mach_jax.data import sources
from support import run_in_process

CONFIG = get_preset("tiny").replace(train={"eval_every_epochs": 1})
KS = (1, 3, 5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (2 epochs, evaluated after the first as well), its test set and metrics."""
    workdir = tmp_path_factory.mktemp("plot") / "run"
    metrics = experiment.train_and_evaluate(CONFIG, workdir, progress=False)
    train, test = sources.load_datasets(CONFIG.data)
    return workdir, train, test, metrics


def test_plot_command_writes_valid_png_files(trained, tmp_path, png_size):
    pytest.importorskip("matplotlib")
    workdir, *_ = trained
    result = run_in_process("mach_jax.plot", str(workdir), "--out", str(tmp_path / "plots"), "--quiet",
                            cwd=tmp_path)
    for name in ("training_curves.png", "precision_vs_repetitions.png"):
        path = tmp_path / "plots" / name
        assert f"wrote {path}" in result.stdout
        assert path.stat().st_size > 0
        width, height = png_size(path)
        assert width > 100 and height > 100
    table = json.loads((tmp_path / "plots" / "precision_vs_repetitions.json").read_text())
    assert [row["num_repetitions"] for row in table] == [1, 2, 3, 4]
    assert "%|" not in result.stderr  # --quiet: no progress bars


def test_precision_vs_repetitions_ends_at_the_full_ensemble_and_starts_at_one_member(trained):
    workdir, train, test, metrics = trained
    results = plot.precision_vs_repetitions(workdir, test)
    assert [row["num_repetitions"] for row in results] == [1, 2, 3, 4]
    full = MachEnsemble.load(workdir)
    full_metrics = full.evaluate(test, progress=False)
    # Member 0 alone, built from the parameters (not through eval_repetitions).
    first = jax.tree.map(lambda leaf: np.asarray(leaf)[:1], full.params)
    one = MachEnsemble(full.config, full.info, first, prepare.label_counts(train))
    one_metrics = one.evaluate(test, progress=False)
    assert one_metrics["num_repetitions"] == 1
    two_metrics = MachEnsemble.load(workdir, eval_repetitions=2).evaluate(test, progress=False)
    for k in KS:
        assert results[-1][f"P@{k}"] == full_metrics[f"P@{k}"] == pytest.approx(metrics[f"P@{k}"])
        assert results[0][f"P@{k}"] == one_metrics[f"P@{k}"]
        assert results[1][f"P@{k}"] == two_metrics[f"P@{k}"]  # a middle r, read from the checkpoint


def test_training_curves_from_the_log_library_call(trained, tmp_path, png_size):
    pytest.importorskip("matplotlib")
    workdir, *_ = trained
    logs = plot._metric_logs(workdir)
    assert [r["step"] for r in logs[0][1] if r["kind"] == "eval"] == [10, 20]
    path = plot.plot_training_curves(logs, tmp_path / "curves.png")
    assert png_size(path)[0] > 100


def test_missing_matplotlib_is_one_line_and_status_2(trained, monkeypatch, capsys):
    workdir, *_ = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot.main([str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: mach_jax.plot needs matplotlib")
