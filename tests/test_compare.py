"""scripts/compare.py through its command line on a tiny synthetic dataset: mach_jax's row is its
own metrics.json, a peer that does not import is a "not installed" row, an installed one scores."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mach_jax import get_preset
from support import write_tiny_files

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "compare.py"
COLUMNS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")
PEERS = {"omikuji Parabel": "omikuji", "omikuji Bonsai": "omikuji", "napkinXC PLT": "napkinxc"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_files(tmp_path_factory.mktemp("data"), "test.txt.gz")


def run_compare(files, workdir: Path, *extra: str, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [env.get("PYTHONPATH", "")])
    command = [sys.executable, str(SCRIPT), "--train", str(files[0]), "--test", str(files[1]),
               "--preset", "tiny", "--workdir", str(workdir), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def rows(markdown: str) -> dict[str, dict[str, str]]:
    """{method: {column: cell}} of the Markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells))
    return table


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_mach_jax_row_is_its_metrics_json_and_missing_peers_are_skipped(files, tmp_path):
    blocked = tmp_path / "blocked"  # stand-ins that fail to import, as an absent package does
    for package in ("omikuji", "napkinxc"):
        (blocked / package).mkdir(parents=True)
        (blocked / package / "__init__.py").write_text(f"raise ImportError('no {package} here')\n")
    result = run_compare(files, tmp_path / "work", "--out", str(tmp_path / "table.md"), "--seeds", "0,1",
                         "--override", "model.num_buckets=24", pythonpath=[blocked])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "table.md").read_text().strip() == result.stdout.strip()

    table = rows(result.stdout)
    runs = ["mach_jax (MACH), seed 0", "mach_jax (MACH), seed 1"]
    assert list(table) == [*runs, *PEERS, "**mach_jax (MACH), mean**"]
    seeds = []
    for seed, name in enumerate(runs):
        metrics = json.loads((tmp_path / "work" / f"mach_jax@{seed}" / "workdir" / "metrics.json").read_text())
        config = json.loads((tmp_path / "work" / f"mach_jax@{seed}" / "workdir" / "config.json").read_text())
        assert metrics["split"] == "test" and config["config"]["train"]["seed"] == seed
        assert config["config"]["model"]["num_buckets"] == 24 and "B=24" in table[name]["settings"]
        mach = table[name]
        for column in COLUMNS:
            assert mach[column] == f"{100 * metrics[column]:.2f}", column
        assert mach["train s"] == f"{metrics['train_seconds']:.1f}"  # the cell is the figure, rounded
        assert float(mach["predict ms/point"]) > 0
        assert mach["model on disk"].endswith("MiB") and mach["peak RSS"].endswith("MiB")
        seeds.append(metrics)
    assert seeds[0]["P@5"] != seeds[1]["P@5"]  # the seed reaches the run
    for column in COLUMNS:
        mean = 100 * (seeds[0][column] + seeds[1][column]) / 2
        assert float(table["**mach_jax (MACH), mean**"][column]) == pytest.approx(mean, abs=0.006)
    for name, package in PEERS.items():
        assert table[name]["settings"].startswith(f"not installed ({package}: no {package} here")
        assert all(table[name][column] == "-" for column in COLUMNS)


def test_installed_peers_score_within_range(files, tmp_path):
    installed = {name: package for name, package in PEERS.items() if importable(package)}
    if not installed:
        pytest.skip("neither omikuji nor napkinxc is installed (pip install '.[compare]')")
    methods = {"omikuji Parabel": "parabel", "omikuji Bonsai": "bonsai", "napkinXC PLT": "plt"}
    result = run_compare(files, tmp_path / "work", "--methods", ",".join(methods[name] for name in installed),
                         "--peer-transform", "l2")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert set(table) == set(installed)
    for name, row in table.items():
        assert row["settings"].endswith("l2 input")
        for column in COLUMNS:
            assert 0.0 <= float(row[column]) <= 100.0, (name, column, row[column])
        assert float(row["train s"]) >= 0 and float(row["predict ms/point"]) > 0
        assert float(row["peak RSS"].removesuffix(" MiB").replace(",", "")) > 0


def test_a_reranked_run_also_shows_its_members_alone():
    spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    run = {**dict.fromkeys(COLUMNS, 0.5), "train_seconds": 1.0, "predict_seconds": 0.1, "num_test_points": 10,
           "model_bytes": 1, "peak_rss_bytes": 1, "settings": "s",
           "without_reranker": {**dict.fromkeys(COLUMNS, 0.25), "nDCG@1": 0.3}}
    table = rows(compare.table({"mach_jax": run}))
    assert list(table) == ["mach_jax (MACH)", "mach_jax (MACH) members alone"]
    assert table["mach_jax (MACH)"]["P@1"] == "50.00"
    assert table["mach_jax (MACH) members alone"]["P@5"] == "25.00"
    assert table["mach_jax (MACH) members alone"]["train s"] == "-"


def test_on_a_validation_split_mach_jax_matches_its_own_valid_frac_run(files, tmp_path):
    from mach_jax.experiment import train_and_evaluate

    result = run_compare(files, tmp_path / "work", "--methods", "mach_jax", "--valid-frac", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("0.2 of the training file held out (seed 0)")
    row = rows(result.stdout)["mach_jax (MACH)"]
    config = get_preset("tiny").replace(data={"train_path": str(files[0]), "test_path": str(files[1]),
                                              "valid_frac": 0.2})
    own = train_and_evaluate(config, tmp_path / "own", progress=False)
    assert own["split"] == "valid"
    for column in COLUMNS:
        assert row[column] == f"{100 * own[column]:.2f}", column
