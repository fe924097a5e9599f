"""scripts/compare.py through its command line on a tiny synthetic dataset: mach_jax's row is its
own metrics.json, a peer that does not import is a "not installed" row, an installed one scores."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mach_jax import get_preset
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import write_xc

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "compare.py"
COLUMNS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")
PEERS = {"omikuji Parabel": "omikuji", "omikuji Bonsai": "omikuji", "napkinXC PLT": "napkinxc"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    train, test = make_synthetic(get_preset("tiny").data.synthetic)
    write_xc(folder / "train.txt", train)
    write_xc(folder / "test.txt.gz", test)
    return folder / "train.txt", folder / "test.txt.gz"


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
    result = run_compare(files, tmp_path / "work", "--out", str(tmp_path / "table.md"), pythonpath=[blocked])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "table.md").read_text().strip() == result.stdout.strip()

    table = rows(result.stdout)
    assert list(table) == ["mach_jax (MACH)", *PEERS]
    metrics = json.loads((tmp_path / "work" / "mach_jax" / "workdir" / "metrics.json").read_text())
    assert metrics["split"] == "test"
    mach = table["mach_jax (MACH)"]
    for column in COLUMNS:
        assert mach[column] == f"{100 * metrics[column]:.2f}", column
    assert float(mach["train s"]) == pytest.approx(metrics["train_seconds"], abs=0.05)
    assert float(mach["predict ms/point"]) > 0
    assert mach["model on disk"].endswith("MiB") and mach["peak RSS"].endswith("MiB")
    for name, package in PEERS.items():
        assert table[name]["settings"].startswith(f"not installed ({package}: no {package} here")
        assert all(table[name][column] == "-" for column in COLUMNS)


def test_installed_peers_score_within_range(files, tmp_path):
    installed = {name: package for name, package in PEERS.items() if importable(package)}
    if not installed:
        pytest.skip("neither omikuji nor napkinxc is installed (pip install '.[compare]')")
    methods = {"omikuji Parabel": "parabel", "omikuji Bonsai": "bonsai", "napkinXC PLT": "plt"}
    result = run_compare(files, tmp_path / "work", "--methods", ",".join(methods[name] for name in installed))
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert set(table) == set(installed)
    for name, row in table.items():
        for column in COLUMNS:
            assert 0.0 <= float(row[column]) <= 100.0, (name, column, row[column])
        assert float(row["train s"]) >= 0 and float(row["predict ms/point"]) > 0
        assert float(row["peak RSS"].removesuffix(" MiB").replace(",", "")) > 0
