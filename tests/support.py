"""What the tests share (not library code): datasets from Python rows, random padded batches,
the host-side class -> bucket table that the on-device hashing is checked against, the per-batch
cap check that ``lazy_caps.epoch_fits`` is checked against, and commands run in-process."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax.core.hashing import hash_to_range, repetition_seeds
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.training import step as steps
from mach_jax.training.spec import StepSpec, spec_from_train


def from_rows(feature_rows, label_rows, num_features: int, num_labels: int,
              source: str = "<memory>") -> XCDataset:
    """Builds a dataset from Python rows (for tests and small examples).

    Args:
      feature_rows: N dicts {feature id: value}.
      label_rows: N lists of distinct label ids.
      num_features: D.
      num_labels: L.
      source: description stored in the dataset.

    Returns:
      The dataset with features [N, D] and labels [N, L], ids in the given order.
    """
    if len(feature_rows) != len(label_rows):
        raise ValueError(f"{len(feature_rows)} feature rows but {len(label_rows)} label rows")
    if any(len(set(row)) != len(row) for row in label_rows):
        raise ValueError("a label row repeats a label id")
    fptr = np.cumsum([0] + [len(row) for row in feature_rows])
    lptr = np.cumsum([0] + [len(row) for row in label_rows])
    features = CsrMatrix(fptr, np.array([k for row in feature_rows for k in row], np.int64),
                         [v for row in feature_rows for v in row.values()], num_features)
    label_ids = np.array([k for row in label_rows for k in row], np.int64)
    labels = CsrMatrix(lptr, label_ids, np.ones(len(label_ids), np.float32), num_labels)
    return XCDataset(features, labels, source)


def random_batch(seed: int, num_points: int, width: int, num_features: int, num_labels: int) -> dict:
    """A padded batch of N = ``num_points`` rows of K = ``width`` random features in [0, D) (the
    last slot of every row padding: value 0) and 2 random labels in [0, L) each, all unmasked."""
    rng = np.random.default_rng(seed)
    vals = rng.random((num_points, width)).astype(np.float32)
    vals[:, -1] = 0  # padding
    return {"feat_ids": rng.integers(0, num_features, (num_points, width)).astype(np.int32), "feat_vals": vals,
            "label_ids": rng.integers(0, num_labels, (num_points, 2)).astype(np.int32),
            "label_mask": np.ones((num_points, 2), np.float32), "point_mask": np.ones(num_points, np.float32)}


def loss_gradients(spec):
    """``(params, batch, label_seeds) -> grads`` for the numpy optimiser references: the gradients
    of the members' summed loss (the step's own ``_member_losses``, no dropout), by ``jax.grad``
    compiled once, with the buckets hashed on the host (``hash_to_range``'s numpy path); params
    and grads are float64 numpy trees."""
    gradient = jax.jit(lambda params, batch, buckets: jax.grad(steps._member_losses, has_aux=True)(
        params, batch["feat_ids"], batch, buckets, None, spec)[0])

    def gradients(params, batch, label_seeds):
        buckets = hash_to_range(batch["label_ids"], np.asarray(label_seeds), spec.member.num_buckets)
        grads = gradient(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), batch, buckets)
        return jax.tree.map(lambda x: np.asarray(x, np.float64), grads)

    return gradients


def batch_fits(batch: dict, caps: tuple[int, int]) -> bool:
    """Whether a host batch touches at most ``caps = (U, T)`` distinct rows and nonzero entries."""
    touched = batch["feat_ids"][batch["feat_vals"] != 0]
    return touched.size <= caps[1] and len(np.unique(touched)) <= caps[0]


def bucket_lookup(num_labels: int, num_buckets: int, base_seed: int, repetitions) -> np.ndarray:
    """Class -> bucket table of every repetition.

    Args:
      num_labels: L.
      num_buckets: B.
      base_seed: seed of repetition 0; repetition r uses ``base_seed + r``.
      repetitions: R, or an explicit array of repetition ids (a subset of an ensemble).

    Returns:
      int32 [R, L]: entry [r, c] is ``h_r(c)`` in [0, B).
    """
    return hash_to_range(np.arange(num_labels, dtype=np.uint32),
                         repetition_seeds(base_seed, repetitions), num_buckets)


@dataclasses.dataclass
class CommandResult:
    """What a command run in-process returned and printed (as ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(module: str, *args: str, cwd: Path, check: bool = True) -> CommandResult:
    """``python -m module args`` in this process, through the command's real error path
    (``cli.run_cli``: one line and status 2 for expected errors), from ``cwd`` with its own
    parse cache. For tests where the process boundary itself is not what is tested: it saves
    the 3-4 s a fresh Python + JAX process costs."""
    from mach_jax import cli

    main = importlib.import_module(module).main
    logger = logging.getLogger("mach_jax")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()  # run_cli attaches a handler to the redirected stderr
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("MACH_JAX_CACHE_DIR", str(Path(cwd) / "cache"))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.run_cli(lambda: main(list(args)), process_ends=False)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
    result = CommandResult(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{module} {args} exited {code}:\n{result.stdout}\n{result.stderr}")
    return result


def one_error_line(result: CommandResult) -> str:
    """The one ``error:`` line a refused command ends with (status 2, no traceback)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return last


def step_spec(member, lazy: bool = False, **fields) -> StepSpec:
    """A ``StepSpec`` for ``member`` whose optimiser settings are ``TrainConfig``'s defaults but
    for ``fields`` (``TrainConfig`` fields, and the caps ``touched_rows_cap`` / ``entries_cap``)."""
    from mach_jax.config import TrainConfig

    caps = {name: fields.pop(name) for name in ("touched_rows_cap", "entries_cap", "total_steps") if name in fields}
    return spec_from_train(member, TrainConfig(**fields), lazy_embedding=lazy, **caps)


def write_tiny_files(folder: Path, test_name: str = "test.txt") -> tuple[Path, Path]:
    """The tiny preset's synthetic train and test data as XC files in ``folder`` (``train.txt``
    and ``test_name``, gzip when it ends in .gz): ``(train path, test path)``."""
    from mach_jax import get_preset
    from mach_jax.data.synthetic import make_synthetic
    from mach_jax.data.xc_format import write_xc

    train, test = make_synthetic(get_preset("tiny").data.synthetic)
    write_xc(folder / "train.txt", train)
    write_xc(folder / test_name, test)
    return folder / "train.txt", folder / test_name
