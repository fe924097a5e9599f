"""The workdir format's one migration: a format-1 ``config.json`` (or checkpoint record) reads as
format 2, with its retired keys dropped and, without recorded feature entries, the choices format
1 made by the widest row pinned in its config. The reference below is format 1's rule as it was
written then: dense bag for D' <= 16 K, row-sparse Adam for D' >= 1.5 N K (D' = feat_hash_dim or D)."""

import copy
from pathlib import Path

import pytest

from mach_jax import get_preset
from mach_jax.config import FORMAT_VERSION
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import WorkdirError
from mach_jax.storage import migration, run_file


def format_1_tree(num_features: int, max_nnz: int, batch_size: int = 64, feat_hash_dim: int = 0,
                  input_layer: str = "auto", embedding_update: str = "auto") -> dict:
    config = get_preset("tiny").replace(model={"feat_hash_dim": feat_hash_dim, "input_layer": input_layer},
                                        train={"batch_size": batch_size, "embedding_update": embedding_update})
    info = RunInfo(num_features=num_features, num_labels=50, num_train_points=128, max_nnz=max_nnz,
                   max_labels=2, train_source="a.txt")
    tree = run_file.payload(config, info, None)
    tree["format_version"] = 1
    del tree["run_info"]["feature_entries"]
    tree["config"]["eval"]["top_k"] = 10  # retired since
    return tree


def format_1_rule(rows: int, widest: int, batch: int) -> tuple[str, str]:
    dense = rows <= 16 * widest
    return ("dense" if dense else "sparse"), ("lazy" if not dense and rows >= 1.5 * batch * widest else "dense")


@pytest.mark.parametrize("num_features, max_nnz, batch, hashed", [
    (1600, 100, 64, 0),       # D = 16 K: the dense bag's edge
    (1601, 100, 64, 0),       # just past it: a gathered bag, dense Adam
    (9600, 100, 64, 0),       # D = 1.5 N K: row-sparse Adam's edge
    (9599, 100, 64, 0),
    (500_000, 30, 256, 4096),  # hashed: D' = 4096 rows decide
])
def test_format_1_choices_are_pinned_by_its_own_rule(num_features, max_nnz, batch, hashed):
    tree = format_1_tree(num_features, max_nnz, batch, hashed)
    before = copy.deepcopy(tree)
    migrated = migration.migrate(tree, Path("w/config.json"))
    assert tree == before  # the caller's tree is not modified
    assert migrated["format_version"] == FORMAT_VERSION
    expected = format_1_rule(hashed or num_features, max_nnz, batch)
    assert (migrated["config"]["model"]["input_layer"], migrated["config"]["train"]["embedding_update"]) == expected
    assert "top_k" not in migrated["config"]["eval"] and migrated["run_info"]["feature_entries"] == 0


def test_explicit_choices_and_recorded_entries_are_kept():
    explicit = migration.migrate(format_1_tree(1601, 100, input_layer="dense", embedding_update="lazy"), Path("c"))
    assert (explicit["config"]["model"]["input_layer"], explicit["config"]["train"]["embedding_update"]) == (
        "dense", "lazy")
    recorded = format_1_tree(1601, 100)
    recorded["run_info"]["feature_entries"] = 700  # a later format-1 run: today's rule decides
    migrated = migration.migrate(recorded, Path("c"))
    assert migrated["config"]["model"]["input_layer"] == "auto" and migrated["run_info"]["feature_entries"] == 700


def test_the_current_format_is_read_as_it_is_and_an_unknown_one_is_refused():
    current = run_file.payload(get_preset("tiny"), RunInfo(4, 5, 6, 2, 1, "a.txt", 9), None)
    assert migration.migrate(current, Path("c")) is current
    with pytest.raises(WorkdirError, match=r"w/config.json: format_version 7, this mach_jax reads 1 to"):
        migration.migrate({**current, "format_version": 7}, Path("w/config.json"))


def test_a_format_1_checkpoint_identity_reads_as_its_migrated_config():
    tree = format_1_tree(1601, 100)
    identity = {"config": tree["config"], "run_info": tree["run_info"], "data_fingerprint": None}
    migrated = migration.current_identity(identity)
    assert migrated["config"] == migration.migrate(tree, Path("c"))["config"]
    assert identity["config"]["model"]["input_layer"] == "auto"  # not modified


def test_a_run_keeps_recorded_choices_only_where_it_leaves_them_to_auto():
    recorded = get_preset("tiny").replace(model={"input_layer": "sparse"}, train={"embedding_update": "dense"})
    kept = migration.keep_recorded_choices(get_preset("tiny"), recorded)
    assert (kept.model.input_layer, kept.train.embedding_update) == ("sparse", "dense")
    mine = get_preset("tiny").replace(train={"embedding_update": "lazy"})
    assert migration.keep_recorded_choices(mine, recorded).train.embedding_update == "lazy"
    assert migration.keep_recorded_choices(mine, None) is mine
