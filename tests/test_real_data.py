"""Short runs of the real-data presets on ../shared/data (skipped when the data is absent)."""

import pytest

from mach_jax import get_preset
from mach_jax import experiment

# (preset, a P@1 floor, epochs run here). Delicious gets there in 3 epochs, which keeps CI short;
# the bibtex and corel5k presets (sigmoid, B = 128) need their full 10. Corel5k's floor is
# omikuji Parabel's test P@1 on the same files (36.8, README "Comparison").
CASES = [("bibtex", 0.60, 10), ("delicious", 0.64, 3), ("corel5k", 0.37, 10)]


@pytest.mark.parametrize("name, min_p_at_1, epochs", CASES)
def test_preset_reaches_the_target_precision(tmp_path, shared_data, name, min_p_at_1, epochs):
    folder = shared_data / name
    config = get_preset(name).replace(
        data={"train_path": str(folder / "train.txt.gz"), "test_path": str(folder / "test.txt.gz"),
              "cache_dir": str(tmp_path / "cache")},
        train={"epochs": epochs})
    metrics = experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert metrics["P@1"] >= min_p_at_1
    assert metrics["P@1"] >= metrics["P@3"] >= metrics["P@5"] > 0
