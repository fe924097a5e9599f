"""scripts/plot_scaling.py: compare.py's results read per L, seeds averaged, skipped runs left out,
and the plot and its points written."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_scaling.py"


def load_script():
    spec = importlib.util.spec_from_file_location("plot_scaling_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(p1, p5, seconds, rss):
    return {"P@1": p1, "P@3": 0.5, "P@5": p5, "train_seconds": seconds, "peak_rss_bytes": rss}


def test_points_per_l_with_seeds_averaged_and_skipped_runs_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    small, large = tmp_path / "small", tmp_path / "large"
    for folder in (small, large):
        folder.mkdir()
    (small / "results.json").write_text(json.dumps({
        "mach_jax@0": result(0.8, 0.4, 100.0, 2 * 2**30), "mach_jax@1": result(0.6, 0.2, 300.0, 4 * 2**30),
        "bonsai": result(0.9, 0.45, 50.0, 2**30), "plt": {"skipped": "not installed"}}))
    (large / "results.json").write_text(json.dumps({
        "mach_jax": result(0.5, 0.3, 400.0, 3 * 2**30), "bonsai": {"failed": "exit 1: out of memory"}}))
    out = tmp_path / "plots" / "scaling.png"
    assert load_script().main(["--run", f"1000={small}", "--run", f"100000={large}", "--out", str(out)]) == 0
    points = json.loads(out.with_suffix(".json").read_text())
    assert set(points) == {"mach_jax", "bonsai"}
    assert points["mach_jax"]["1000"] == pytest.approx({"P@1": 0.7, "P@5": 0.3, "train_seconds": 200.0,
                                                        "peak_rss_bytes": 3 * 2**30})
    assert points["mach_jax"]["100000"]["P@1"] == 0.5 and set(points["bonsai"]) == {"1000"}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_run_argument_or_folder_is_one_line(tmp_path):
    script = load_script()
    with pytest.raises(SystemExit, match="expected L=FOLDER"):
        script.main(["--run", "big=runs/x", "--out", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit, match="results.json: cannot read"):
        script.main(["--run", f"1000={tmp_path / 'missing'}", "--out", str(tmp_path / "a.png")])
