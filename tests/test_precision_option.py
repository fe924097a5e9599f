"""``model.precision`` (issue #14, mixed precision): "float32" is the code of before, bit for bit;
"bfloat16" computes the matmuls and activations in bfloat16 from float32 parameters;
"bfloat16_tables" also stores the embedding tables (and dense Adam's first moments of them) in
bfloat16. Both bf16 options give float32 logits close to a float32 numpy reference, train on the
dense and the lazy path in both kernel forms, keep their dtypes through a checkpoint, and a
resume with another precision is refused in one line.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from support import one_error_line, random_batch, run_in_process

from mach_jax import MachEnsemble, cli
from mach_jax import train as train_command
from mach_jax.config import ModelConfig, get_preset
from mach_jax.core import hashing, model
from mach_jax.core.ensemble_spec import MemberSpec
from mach_jax.errors import ConfigError
from mach_jax.training import optimizer
from mach_jax.training import step as steps
import support

R, D, N, K, B, L, H = 4, 40, 16, 5, 16, 30, 8
BF16 = ("bfloat16", "bfloat16_tables")
# Update paths: (input layer, lazy embedding update, embedding optimiser).
PATHS = {"dense_adam": ("dense", False, "adam"), "gathered_dense_adam": ("sparse", False, "adam"),
         "lazy_adam": ("sparse", True, "adam"), "rowwise_adagrad": ("sparse", True, "rowwise_adagrad")}


def make_batch(seed=0):
    return random_batch(seed, N, K, D, L)


SEEDS = {"labels": jnp.asarray(hashing.repetition_seeds(0, R))}


def setup(precision, path="dense_adam", batched=False, hidden=(H,)):
    """(config, initial state, spec) of a small ensemble at this precision and update path."""
    input_layer, lazy, optimiser = PATHS[path]
    config = ModelConfig(num_repetitions=R, num_buckets=B, hidden_sizes=hidden, input_layer=input_layer,
                         precision=precision)
    member = MemberSpec(model.member_graphdef(config, D, K), "softmax", B, 0, 1, batched)
    spec = support.step_spec(member, lazy, learning_rate=1e-2, embedding_optimizer=optimiser)
    return config, optimizer.create_state(model.init_params(config, D, jnp.arange(R), seed=3), spec), spec


@functools.cache
def jitted_step(spec):
    return jax.jit(functools.partial(steps.train_step, spec=spec))


def train(state, spec, steps_count=25):
    step = jitted_step(spec)
    losses = []
    for _ in range(steps_count):
        state, metrics = step(state, make_batch(), SEEDS)
        losses.append(float(metrics["member_loss"].mean()))
    return state, losses


def dtypes(tree):
    return jax.tree.map(lambda leaf: jnp.dtype(leaf.dtype), tree)


def test_precision_is_validated_and_has_a_flag():
    with pytest.raises(ConfigError, match=r"model.precision='float16': must be one of \('float32', 'bfloat16', "
                                          r"'bfloat16_tables'\)"):
        ModelConfig(precision="float16").validate()
    assert get_preset("tiny").model.precision == "float32"
    args = train_command.parse_arguments(["--preset", "tiny", "--precision", "bfloat16_tables"])
    assert cli.config_from_args(args).model.precision == "bfloat16_tables"
    with pytest.raises(ConfigError, match="--precision"):
        train_command.parse_arguments(["--precision", "fp16"])


@pytest.mark.parametrize("path", ["dense_adam", "lazy_adam"])
def test_float32_is_the_default_and_compiles_no_bfloat16(path):
    _, state, spec = setup("float32", path)
    default_config = ModelConfig(num_repetitions=R, num_buckets=B, hidden_sizes=(H,), input_layer=PATHS[path][0])
    assert default_config.precision == "float32"
    default_state = optimizer.create_state(model.init_params(default_config, D, jnp.arange(R), seed=3), spec)
    jaxpr = str(jax.make_jaxpr(functools.partial(steps.train_step, spec=spec))(state, make_batch(), SEEDS))
    assert "bf16" not in jaxpr
    ours, _ = train(state, spec, 3)
    default, _ = train(default_state, spec, 3)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def numpy_logits(params, batch, r):
    """Member r's float32 logits from its parameters (upcast from bf16 where stored so)."""
    p = jax.tree.map(lambda leaf: np.asarray(leaf[r], np.float32), params)
    bag = np.zeros((N, H), np.float32)
    for n in range(N):
        for f, v in zip(batch["feat_ids"][n], batch["feat_vals"][n]):
            bag[n] += v * p["embedding"][f]
    hidden = np.maximum(bag + p["embedding_bias"], 0)
    hidden = np.maximum(hidden @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0)
    return hidden @ p["output"]["kernel"] + p["output"]["bias"]


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
@pytest.mark.parametrize("path", ["dense_adam", "gathered_dense_adam"])
@pytest.mark.parametrize("precision", BF16)
def test_bfloat16_logits_are_float32_and_close_to_a_float32_reference(precision, path, batched):
    config, state, _ = setup(precision, path, batched, hidden=(H, H))
    params = state["params"]
    batch = make_batch(1)
    graphdef = model.member_graphdef(config, D, K)
    logits = model.apply_ensemble(graphdef, params, batch["feat_ids"], batch["feat_vals"], batched=batched)
    assert logits.dtype == jnp.float32
    float32_params = jax.tree.map(lambda leaf: leaf.astype(jnp.float32), params)
    float32_graphdef = model.member_graphdef(ModelConfig(**{**config.__dict__, "precision": "float32"}), D, K)
    float32_logits = model.apply_ensemble(float32_graphdef, float32_params, batch["feat_ids"], batch["feat_vals"])
    assert not np.array_equal(np.asarray(logits), np.asarray(float32_logits))  # bf16 was really used
    for r in range(R):
        expected = numpy_logits(params, batch, r)
        # Three bf16 matmuls, each input rounded to 8 bits of mantissa (2^-9 relative): about 1 %
        # of the logits' scale, far more than float32's 1e-6 and far less than their spread.
        scale = np.abs(expected).max()
        np.testing.assert_allclose(np.asarray(logits[r]), expected, rtol=0, atol=0.02 * scale)
        np.testing.assert_allclose(np.asarray(float32_logits[r]), expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("precision", ["float32", *BF16])
def test_stored_dtypes_are_what_the_option_says(precision, path):
    _, state, _ = setup(precision, path)
    table = jnp.bfloat16 if precision == "bfloat16_tables" else jnp.float32
    params = dtypes(state["params"])
    assert params.pop("embedding") == table
    assert set(jax.tree.leaves(params)) == {jnp.dtype(jnp.float32)}
    opt = state["opt_state"]
    adam = [s for s in jax.tree.leaves(opt if not PATHS[path][1] else opt["rest"],
                                       is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    (adam,) = adam
    assert set(jax.tree.leaves(dtypes(adam.nu))) == {jnp.dtype(jnp.float32)}  # second moments: float32
    mu = dtypes(adam.mu)
    if "embedding" in mu:  # dense Adam: the table's first moment follows the table
        assert mu.pop("embedding") == table
    assert set(jax.tree.leaves(mu)) == {jnp.dtype(jnp.float32)}
    for name in ("embedding_moments", "embedding_accumulator"):  # the lazy step's: float32
        if PATHS[path][1] and name in opt:
            assert opt[name].dtype == jnp.float32


LEARNING_RUNS = [(precision, path, batched) for precision in BF16 for path in ("dense_adam", "lazy_adam")
                 for batched in (False, True)] + [("bfloat16_tables", "gathered_dense_adam", False),
                                                  ("bfloat16_tables", "rowwise_adagrad", True)]


@pytest.mark.parametrize("precision, path, batched", LEARNING_RUNS,
                         ids=[f"{p}-{path}-{'batched' if b else 'loop'}" for p, path, b in LEARNING_RUNS])
def test_a_tiny_bfloat16_run_learns_on_both_paths_and_forms(precision, path, batched):
    _, state, spec = setup(precision, path, batched)
    before = dtypes(state)
    state, losses = train(state, spec)
    assert dtypes(state) == before  # the state keeps its dtypes step after step
    assert losses[-1] < 0.8 * losses[0]
    float32 = float32_final_loss(path, batched)
    assert abs(losses[-1] - float32) < 0.05 * float32


@functools.cache
def float32_final_loss(path, batched):
    _, state, spec = setup("float32", path, batched)
    return train(state, spec)[1][-1]


@pytest.fixture(scope="module")
def bf16_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    run_in_process("mach_jax.train", "--preset", "tiny", "--precision", "bfloat16_tables", "--workdir", "w",
                   "--quiet", cwd=root)
    return root


def test_a_checkpoint_round_trip_keeps_the_dtypes(bf16_workdir):
    ensemble = MachEnsemble.load(bf16_workdir / "w")
    assert ensemble.params["embedding"].dtype == jnp.bfloat16
    assert ensemble.params["output"]["kernel"].dtype == jnp.float32
    # A resumed run restores the whole state with its dtypes and trains on (one more epoch).
    result = run_in_process("mach_jax.train", "--preset", "tiny", "--precision", "bfloat16_tables",
                            "--workdir", "w", "--epochs", "3", "--quiet", cwd=bf16_workdir)
    assert "resuming from the checkpoint at step" in result.stderr
    resumed = MachEnsemble.load(bf16_workdir / "w")
    assert resumed.final_step > ensemble.final_step
    assert resumed.params["embedding"].dtype == jnp.bfloat16


@pytest.mark.parametrize("other", ["float32", "bfloat16"])
def test_resuming_with_another_precision_is_refused_in_one_line(bf16_workdir, other):
    result = run_in_process("mach_jax.train", "--preset", "tiny", "--precision", other, "--workdir", "w",
                            "--quiet", cwd=bf16_workdir, check=False)
    line = one_error_line(result)
    assert f"model.precision='bfloat16_tables', this run asks for {other!r}" in line
