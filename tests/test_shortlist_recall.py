"""``scripts/shortlist_recall.py``: recall@K of the members' read-out, checked point by point
against the read-out's own top classes."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from mach_jax import get_preset
from mach_jax.experiment import train_and_evaluate
from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.data.synthetic import make_synthetic

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shortlist_recall.py"


def load_script_and_train(tmp_path):
    """The script as a module, and the tiny preset trained for one epoch in ``tmp_path / "w"``."""
    spec = importlib.util.spec_from_file_location("shortlist_recall", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = get_preset("tiny").replace(train={"epochs": 1})
    train_and_evaluate(config, tmp_path / "w", progress=False)
    return script, config


def true_share(labels_csr, ids) -> float:
    """The mean share of each point's labels among its ``ids`` (0 for a point without labels)."""
    labels = [set(labels_csr.indices[a:b]) for a, b in zip(labels_csr.indptr[:-1], labels_csr.indptr[1:])]
    return np.mean([len(y & set(top)) / len(y) if y else 0.0 for y, top in zip(labels, ids.tolist())])


def test_recall_at_k_is_the_share_of_labels_in_the_top_k(tmp_path, capsys):
    script, config = load_script_and_train(tmp_path)
    script.main(["--workdir", str(tmp_path / "w"), "--k", "1", "5", "300", "--quiet"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["k"] for r in records] == [1, 5, 300] and records[-1]["recall"] == 1.0  # K = L: every label
    _, test = make_synthetic(config.data.synthetic)
    _, ids = MachEnsemble.load(tmp_path / "w").predict(test.features, k=5)
    assert abs(records[1]["recall"] - true_share(test.labels, ids)) < 1e-4 and records[0]["recall"] <= records[1]["recall"]


def test_the_aggregation_can_be_chosen(tmp_path, capsys):
    script, config = load_script_and_train(tmp_path)
    script.main(["--workdir", str(tmp_path / "w"), "--k", "3", "--aggregation", "log_prob", "--quiet"])
    record = json.loads(capsys.readouterr().out)
    _, test = make_synthetic(config.data.synthetic)
    _, ids = MachEnsemble.load(tmp_path / "w", aggregation="log_prob").predict(test.features, k=3)
    assert record["aggregation"] == "log_prob" and abs(record["recall"] - true_share(test.labels, ids)) < 1e-4
