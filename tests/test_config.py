"""Config tree: validation names the field (and the CLI its flag), round trips, presets."""

import pytest

from mach_jax import cli
from mach_jax.config import PRESETS, Config, get_preset, resumable_fields
from mach_jax.errors import ConfigError
from mach_jax.train import parse_arguments

BAD_VALUES = [
    ("model", "num_buckets", 1, "--num-buckets"),
    ("model", "num_repetitions", 0, "--num-repetitions"),
    ("model", "hidden_sizes", (), "--hidden-sizes"),
    ("model", "hidden_sizes", (64, 0), "--hidden-sizes"),
    ("model", "feat_hash_dim", -1, "--feat-hash-dim"),
    ("model", "input_layer", "conv", "--input-layer"),
    ("train", "batch_size", 0, "--batch-size"),
    ("train", "epochs", 0, "--epochs"),
    ("train", "learning_rate", 0.0, "--learning-rate"),
    ("eval", "aggregation", "max", "--aggregation"),
    ("eval", "eval_repetitions", 99, "--eval-repetitions"),
    ("data", "max_nnz", 0, "--max-nnz"),
    ("data", "overflow", "drop", "--overflow"),
]


@pytest.mark.parametrize("section, field, value, flag", BAD_VALUES)
def test_bad_values_name_field_value_and_flag(section, field, value, flag):
    with pytest.raises(ConfigError) as caught:
        Config().replace(**{section: {field: value}}).validate()
    assert caught.value.field == f"{section}.{field}"
    assert f"{section}.{field}={value!r}" in str(caught.value)
    assert cli.flag_of(caught.value.field) == flag


def test_synthetic_fields_have_prefixed_flags():
    with pytest.raises(ConfigError) as caught:
        Config().replace(data={"synthetic": {"num_labels": 0}}).validate()
    assert cli.flag_of(caught.value.field) == "--synthetic-num-labels"


def test_round_trip_through_dict_and_json():
    import json

    for name, config in PRESETS.items():
        assert Config.from_dict(json.loads(config.to_json())) == config, name


def test_unknown_fields_and_presets_are_refused():
    with pytest.raises(ConfigError, match="unknown config field model.num_bucket"):
        Config().replace(model={"num_bucket": 3})
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({"model": {"bogus": 1}})
    with pytest.raises(ConfigError, match="known presets"):
        get_preset("nope")


def test_every_preset_is_valid():
    for config in PRESETS.values():
        config.validate()


def test_flags_override_only_what_is_given():
    args = parse_arguments(["--preset", "bibtex", "-B", "64", "--hidden", "128,64", "--lr", "0.01"])
    config = cli.config_from_args(args)
    assert config.model.num_buckets == 64 and config.model.hidden_sizes == (128, 64)
    assert config.train.learning_rate == 0.01
    assert config.model.num_repetitions == get_preset("bibtex").model.num_repetitions
    args = parse_arguments(["--max-nnz", "none"])
    assert cli.config_from_args(args).data.max_nnz is None


@pytest.mark.parametrize("preset,dataset,buckets", [
    ("amazon670k", "Amazon-670K", 10_000), ("delicious200k", "Delicious-200K", 5_000),
    ("wiki10_31k", "Wiki10-31K", 2_000)])
def test_paper_presets_build_the_reference_model_for_their_dataset(preset, dataset, buckets):
    """The MACH paper's settings (R = 32, B, two hidden layers of 500), shaped without allocating."""
    import jax
    import jax.numpy as jnp

    from mach_jax.core import model
    from mach_jax.data import registry

    config = get_preset(preset)
    config.validate()
    info = registry.get_dataset(dataset)
    params = jax.eval_shape(lambda: model.init_params(config.model, info.num_features, jnp.arange(32), seed=0))
    rows = config.model.feat_hash_dim or info.num_features
    assert params["embedding"].shape == (32, rows, 500)
    assert params["hidden_0"]["kernel"].shape == (32, 500, 500)
    assert params["output"]["kernel"].shape == (32, 500, buckets)
    assert rows <= 110_000  # hashed where D is large, so 32 tables fit one accelerator
    # The 100,000-row hashed tables are updated row-sparsely, on rows as wide as the repository's
    # (Amazon-670K's mean is 75 nonzeros, its widest in the hundreds).
    from mach_jax.training.spec import uses_lazy_update

    lazy = uses_lazy_update(config.model, config.train.embedding_update, info.num_features, 512,
                            config.train.batch_size, config.train.embedding_optimizer)
    assert lazy == bool(config.model.feat_hash_dim)


def test_a_config_json_written_before_eval_top_k_was_retired_still_loads():
    tree = Config().to_dict()
    tree["eval"]["top_k"] = 5  # what every config.json held before
    assert Config.from_dict(tree) == Config()
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({**tree, "eval": {**tree["eval"], "top_kk": 5}})


def test_the_fields_a_resumed_run_may_change_are_declared_on_the_fields():
    # The list the workdir kept as strings before the fields declared it themselves.
    before = {"train.epochs", "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
              "train.eval_every_epochs", "data.cache_dir", "data.train_path", "data.test_path",
              "data.tfds_data_dir", "parallel.rep_devices", "parallel.data_devices"}
    eval_fields = {f"eval.{name}" for name in Config().to_dict()["eval"]}
    # The re-ranker's settings never change the members (but for the points held out from them
    # to choose its mix on); its own record guards its resumption.
    rerank_fields = {f"rerank.{name}" for name in Config().to_dict()["rerank"]} - {"rerank.mix_holdout_frac"}
    # Who builds the host batches, where the batches live, how many steps a call runs and how
    # the members' loops compile change neither the batches, their order nor the arithmetic.
    # The longest line a data file may have bounds what is read, not what is trained on.
    added = {"data.host_loader", "data.device_data", "train.steps_per_call", "model.kernel_forms",
             "data.max_line_bytes"}
    # How often and how learned partitions are re-assigned changes the members' training, like
    # train.epochs, but not the state's shape: only partition.label_buckets fixes that.
    partition_fields = {f"partition.{name}" for name in Config().to_dict()["partition"]} - {"partition.label_buckets"}
    assert resumable_fields() == before | eval_fields | rerank_fields | added | partition_fields
