"""The training loop: data, mesh, state (created sharded or restored), one jitted step, checkpoints.

``train_and_evaluate(config, workdir)`` is what ``python -m mach_jax.train`` and notebooks call.
Re-running it on the same workdir resumes from the newest checkpoint: the data order is a pure
function of (seed, epoch), so the resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mach_jax.data import batches as input_pipeline
from mach_jax.core import mesh as mesh_lib, model
from mach_jax.training import step as steps
from mach_jax.storage import workdir as wd
from mach_jax.config import Config, DataConfig
from mach_jax.errors import ConfigError
from mach_jax.data.csr import XCDataset
from mach_jax.errors import DataFormatError
from mach_jax.readout.ensemble import MachEnsemble, check_top_k, member_seeds, step_spec
from mach_jax.training.metric_log import MetricLog
from mach_jax.training.monitoring import LossLog, StopOnSignals
from mach_jax.errors import TrainingInterrupted
from mach_jax.data.synthetic import make_synthetic
from mach_jax.data.xc_format import read_xc

log = logging.getLogger("mach_jax")

_VALID_STREAM = 0x76616C69  # "vali": seeds the validation split's permutation apart from epoch_order


def read_data_file(path: str, cache_dir: str | None = None, progress: bool = False) -> XCDataset:
    """``read_xc`` with a progress bar over the file's bytes (it moves once, when parsed)."""
    size = Path(path).stat().st_size if Path(path).is_file() else None
    with tqdm(total=size, disable=not progress, desc=f"read {Path(path).name}", unit="B",
              unit_scale=True, unit_divisor=1024, leave=False) as bar:
        dataset = read_xc(path, cache_dir=cache_dir)
        bar.update(size or 0)
    return dataset


def load_datasets(config: DataConfig, progress: bool = False) -> tuple[XCDataset, XCDataset]:
    """The (train, test) pair: the two files, a TFDS source, or the embedded synthetic data."""
    if config.dataset is not None:
        from mach_jax.data.tfds import load_tfds, parse_data_spec

        name = parse_data_spec(config.dataset)
        train, test = (load_tfds(name, config.tfds_data_dir, split=split) for split in ("train", "test"))
        log.info("data: %s (%d points) and %s (%d points), D=%d, L=%d", train.source, train.num_points,
                 test.source, test.num_points, train.num_features, train.num_labels)
        return train, test
    if config.train_path is None:
        train, test = make_synthetic(config.synthetic)
        log.info("data: %s (synthetic, generated in code; pass --train/--test for real files)",
                 train.source.removesuffix(" [train]"))
        return train, test
    train = read_data_file(config.train_path, config.cache_dir, progress)
    test = read_data_file(config.test_path, config.cache_dir, progress)
    for name, train_size, test_size in (("features D", train.num_features, test.num_features),
                                        ("labels L", train.num_labels, test.num_labels)):
        if train_size != test_size:
            raise DataFormatError(test.source, 1, f"header gives {name} = {test_size}, but the "
                                  f"training file {train.source} gives {train_size}")
    log.info("data: %s (%d points) and %s (%d points), D=%d, L=%d", train.source, train.num_points,
             test.source, test.num_points, train.num_features, train.num_labels)
    return train, test


def validation_split(num_points: int, valid_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which training points are held out for validation: a permutation seeded by ``seed``.

    ``round(valid_frac * N)`` points (at least one when ``valid_frac`` > 0) go to validation.

    Returns:
      ``(train_rows, valid_rows)``: int64 ids, each sorted (file order), disjoint, together 0..N-1.
    """
    if valid_frac <= 0:
        return np.arange(num_points, dtype=np.int64), np.zeros(0, np.int64)
    num_valid = max(1, int(np.floor(valid_frac * num_points + 0.5)))
    if num_valid >= num_points:
        raise ConfigError(f"data.valid_frac={valid_frac!r}: holds out {num_valid} of the {num_points} "
                          "training points, leaving none to train on", field="data.valid_frac")
    # Its own stream: epoch_order draws from (seed, epoch), which must not correlate with the split.
    order = np.random.default_rng([_VALID_STREAM, seed]).permutation(num_points)
    return np.sort(order[num_valid:]), np.sort(order[:num_valid])


def split_validation(config: DataConfig, train: XCDataset) -> tuple[XCDataset, XCDataset]:
    """``(training part, validation part)`` of the training data (``data.valid_frac`` > 0)."""
    train_rows, valid_rows = validation_split(train.num_points, config.valid_frac, config.valid_seed)
    base = train.source.removesuffix(" [train]")
    return (train.take(train_rows, f"{train.source} [minus {len(valid_rows)} valid]"),
            train.take(valid_rows, f"{base} [valid]"))


def load_train_eval(config: DataConfig, progress: bool = False) -> tuple[XCDataset, XCDataset, str]:
    """``(train, eval data, split)``: the data a run trains on and is evaluated on.

    With ``valid_frac`` > 0 that is the training part and the validation split ("valid"), else
    the whole training data and the test data ("test").
    """
    train, test = load_datasets(config, progress)
    if config.valid_frac > 0:
        if train.num_points == 0:
            raise DataFormatError(train.source, 1, "the header declares 0 points: nothing to train on")
        return *split_validation(config, train), "valid"
    return train, test, "test"


def load_eval_data(config: DataConfig, path: str | None = None, split: str | None = None,
                   progress: bool = False) -> tuple[XCDataset, str]:
    """A trained run's evaluation data and its split name ("valid" or "test").

    Args:
      config: the run's data config.
      path: an XC file to evaluate on instead (its split is "test").
      split: "valid" or "test" for the run's own validation or test data; None: what the run was
        evaluated on (its validation split when ``valid_frac`` > 0, else its test data).
    """
    if path:
        return read_data_file(path, config.cache_dir, progress), "test"
    split = split or ("valid" if config.valid_frac > 0 else "test")
    if split == "valid" and config.valid_frac <= 0:
        raise ConfigError("data.valid_frac=0.0: the run holds out no validation split; evaluate "
                          "on its test data instead", field="data.valid_frac")
    if split == "test" and config.test_path:
        return read_data_file(config.test_path, config.cache_dir, progress), "test"
    train, test = load_datasets(config, progress)
    return (split_validation(config, train)[1] if split == "valid" else test), split


def eval_fields(config: DataConfig, dataset: XCDataset, split: str) -> dict[str, Any]:
    """What ``metrics.json`` says about the evaluated data: its split and source."""
    fields = {"split": split, f"{split}_source": dataset.source}
    if split == "valid":
        fields.update(valid_frac=config.valid_frac, valid_seed=config.valid_seed)
    return fields


def label_counts(dataset: XCDataset) -> np.ndarray:
    """How many points carry each label: int64 [L]."""
    return np.bincount(dataset.labels.indices, minlength=dataset.num_labels)


def prepare_train_data(config: Config, train: XCDataset) -> tuple[XCDataset, wd.RunInfo]:
    """Caps row widths (K features, M labels) once and records what the data fixed."""
    data = config.data
    max_nnz = data.max_nnz or max(input_pipeline.widest_row(train.features), 1)
    max_labels = data.max_labels or max(input_pipeline.widest_row(train.labels), 1)
    features = input_pipeline.cap_row_width(train.features, max_nnz, data.overflow, keep_largest=True,
                                            source=train.source, what="features")
    labels = input_pipeline.cap_row_width(train.labels, max_labels, data.overflow, keep_largest=False,
                                          source=train.source, what="labels")
    info = wd.RunInfo(num_features=train.num_features, num_labels=train.num_labels,
                      num_train_points=train.num_points, max_nnz=max_nnz, max_labels=max_labels,
                      train_source=train.source)
    return XCDataset(features, labels, train.source), info


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    """Everything a training loop (or a benchmark) needs, built once per config and data.

    Attributes:
      mesh: the (reps, data) device mesh.
      rep_ids: the repetition ids of the R members trained here.
      abstract_state: the state's shapes, dtypes and shardings (for restoring checkpoints).
      create_state: () -> a freshly initialised state, created directly with its shardings.
      train_step: the jitted, donating ``steps.train_step``: (state, batch, seeds) -> (state, metrics).
      batch_caps: (U, T) the lazy step is compiled for, or None (see ``steps.StepSpec``).
      uncapped_train_step: the step for a batch past ``batch_caps`` (compiled if one comes).
      batch_sharding: where a host batch goes (split over ``data``, replicated over ``reps``).
      seeds: the members' hash seeds on device, uint32 [R] each.
      spec: the static side of the step (graphdef, loss, B, lazy embedding update, ...).
    """

    mesh: Any
    rep_ids: tuple[int, ...]
    abstract_state: Any
    create_state: Callable[[], steps.State]
    train_step: Callable
    batch_sharding: Any
    seeds: dict[str, jax.Array]
    spec: steps.StepSpec
    batch_caps: tuple[int, int] | None = None
    uncapped_train_step: Callable | None = None

    def step_for(self, host_batch: input_pipeline.Batch) -> Callable:
        """The train step for this host batch: the capped one unless it exceeds the caps."""
        if self.batch_caps is None or input_pipeline.batch_fits(host_batch, self.batch_caps):
            return self.train_step
        return self.uncapped_train_step


def build_program(config: Config, info: wd.RunInfo, train_data: XCDataset | None = None) -> TrainingProgram:
    """Builds the mesh, shardings, hash seeds and the one jitted step for all R members.

    With ``train_data`` (as prepared by ``prepare_train_data``) a lazy embedding update works
    on capped batch sizes measured from it (``input_pipeline.batch_caps``).
    """
    rep_ids = config.parallel.rep_ids(config.model.num_repetitions)
    mesh = mesh_lib.make_mesh(len(rep_ids), config.parallel.rep_devices, config.parallel.data_devices)
    spec = uncapped_spec = step_spec(config, info, mesh)
    caps = None
    if spec.lazy_embedding and train_data is not None:
        caps = input_pipeline.batch_caps(train_data.features, config.train.batch_size, config.train.seed)
        spec = dataclasses.replace(spec, touched_rows_cap=caps[0], entries_cap=caps[1])
    init_state = functools.partial(_init_state, config, info.num_features, rep_ids, spec)
    abstract_state = jax.eval_shape(init_state)
    state_shardings = mesh_lib.tree_shardings(abstract_state, mesh)
    seeds = member_seeds(config, rep_ids, mesh)
    jit_step = functools.partial(
        jax.jit, in_shardings=(state_shardings, mesh_lib.batched(mesh), mesh_lib.tree_shardings(seeds, mesh)),
        out_shardings=(state_shardings, {"member_loss": mesh_lib.stacked(mesh)}), donate_argnums=0)
    train_step = jit_step(functools.partial(steps.train_step, spec=spec))
    return TrainingProgram(
        mesh=mesh,
        rep_ids=rep_ids,
        abstract_state=jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, state_shardings),
        create_state=jax.jit(init_state, out_shardings=state_shardings),
        train_step=train_step,
        batch_sharding=mesh_lib.batched(mesh),
        seeds=seeds,
        spec=spec,
        batch_caps=caps,
        uncapped_train_step=jit_step(functools.partial(steps.train_step, spec=uncapped_spec)) if caps else None)


def train(config: Config, workdir: str | Path, train_data: XCDataset,
          progress: bool = True) -> tuple[model.Params, wd.RunInfo]:
    """Trains (or resumes training of) the ensemble, or of the group ``parallel.rep_range``.

    A group's files go to ``workdir/reps-START-STOP`` (see ``workdir.group_dir``), so groups
    trained by independent processes can share one workdir. The loss is logged to
    ``metrics.jsonl`` and ``tensorboard/`` there (see ``mach_jax.training.metric_log``).

    Returns:
      ``(params, info)``: stacked parameters [R, ...] after the last step, and the RunInfo.
    """
    params, info, _ = _train(config, workdir, train_data, None, progress)
    return params, info


def _train(config: Config, workdir: str | Path, train_data: XCDataset, test_data: XCDataset | None,
           progress: bool, split: str = "test") -> tuple[model.Params, wd.RunInfo, dict | None]:
    """``train``, plus with ``test_data`` (of ``split``: "test" or "valid") the evaluations: every
    ``train.eval_every_epochs`` epochs and at the end, logged beside the loss; returns the final
    metrics too (else None)."""
    start = time.perf_counter()
    config.validate()
    workdir = wd.group_dir(Path(workdir), config.parallel.rep_range)
    if train_data.num_points == 0:
        raise DataFormatError(train_data.source, 1, "the header declares 0 points: nothing to train on")
    check_top_k(config, train_data.num_labels)
    counts = label_counts(train_data)  # before any --max-labels cut: PSP@k uses the true counts
    train_data, info = prepare_train_data(config, train_data)
    wd.write_run(workdir, config, info, counts)
    if config.model.num_buckets >= info.num_labels:
        log.warning("B=%d buckets >= L=%d labels: hashing compresses nothing; use B < L",
                    config.model.num_buckets, info.num_labels)
    program = build_program(config, info, train_data)
    manager = wd.checkpoint_manager(workdir, config.train.keep_checkpoints)
    state = wd.restore_latest(manager, program.abstract_state)
    if state is None:
        state = program.create_state()
    else:
        log.info("resuming from the checkpoint at step %d in %s", int(state["step"]), workdir)
    evaluate = None if test_data is None else functools.partial(
        _evaluate, config, info, counts, program.rep_ids, test_data, split)
    steps_per_epoch = input_pipeline.num_batches(train_data.num_points, config.train.batch_size)
    shape = input_pipeline.BatchShape(config.train.batch_size, info.max_nnz, info.max_labels)
    with MetricLog(workdir, int(state["step"]), jax.process_index(), steps_per_epoch) as metric_log:
        try:
            state = _loop(config, program, state, train_data, shape, workdir, manager, metric_log,
                          evaluate, progress)
        finally:
            manager.wait_until_finished()  # an async save in flight completes before we leave
            manager.close()
        if evaluate is None:
            return state["params"], info, None
        train_seconds = time.perf_counter() - start
        result = evaluate(state["params"], progress=progress)
        result.update(eval_fields(config.data, test_data, split), train_seconds=round(train_seconds, 2))
        metric_log.write("eval", int(state["step"]), final=True, **result)
        return state["params"], info, result


def _loop(config: Config, program: TrainingProgram, state: steps.State, train_data: XCDataset,
          shape: input_pipeline.BatchShape, workdir: Path, manager, metric_log: MetricLog,
          evaluate: Callable | None, progress: bool) -> steps.State:
    """Runs the steps from ``state["step"]`` to the end: logs, checkpoints, per-epoch evaluations."""
    steps_per_epoch = input_pipeline.num_batches(train_data.num_points, shape.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    checkpoint_every = config.train.checkpoint_every_steps or steps_per_epoch
    eval_every = config.train.eval_every_epochs * steps_per_epoch if evaluate else 0
    step = int(state["step"])
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step")
    def write_train(kind: str, at_step: int, **fields) -> None:  # with the step size of the logged step
        scheduled = config.train.learning_rate * float(program.spec.schedule(at_step - 1))
        metric_log.write(kind, at_step, learning_rate=scheduled, **fields)

    loss_log = LossLog(program.rep_ids, shape.batch_size, bar, write_train)
    batches = _batches_from(train_data, shape, config.train.seed, step, steps_per_epoch,
                            config.train.epochs)
    place = functools.partial(_place, program=program)
    try:
        with StopOnSignals() as stop, input_pipeline.Prefetcher(batches, place) as prefetched:
            for _, batch, train_step in prefetched:
                state, step_metrics = train_step(state, batch, program.seeds)
                step += 1
                bar.update()
                loss_log.add(step, step_metrics["member_loss"])
                if step % config.train.log_every_steps == 0:
                    loss_log.flush()
                if eval_every and step % eval_every == 0 and step < total_steps:  # the last: final
                    loss_log.flush()
                    # It ends (its sums are fetched) before the next step donates the params.
                    result = evaluate(state["params"], progress=False)
                    metric_log.write("eval", step, final=False, **result)
                    loss_log.restart_clock()
                    if progress:
                        bar.write(f"epoch {step // steps_per_epoch}: " + "  ".join(
                            f"P@{k} {100 * result[f'P@{k}']:.2f}" for k in (1, 3, 5)))
                if step % checkpoint_every == 0 or step == total_steps or stop.signum:
                    loss_log.flush()  # never checkpoint a state whose loss went non-finite
                    wd.save_state(manager, step, state)
                if stop.signum:
                    raise TrainingInterrupted(stop.signum, step, workdir)
    finally:
        bar.close()
    return state


def _evaluate(config: Config, info: wd.RunInfo, counts: np.ndarray, rep_ids: tuple[int, ...],
              test_data: XCDataset, split: str, params: model.Params, progress: bool) -> dict:
    """P@k, nDCG@k, PSP@k of these members (the first ``eval.eval_repetitions``) on test_data."""
    ensemble = MachEnsemble(config, info, params, counts, rep_ids=rep_ids)
    return {**ensemble.evaluate(test_data, progress=progress), "split": split}


def _place(item: tuple[int, input_pipeline.Batch], program: TrainingProgram) -> tuple[int, dict, Callable]:
    """On the prefetch thread: the batch on device, and the step to run it with."""
    epoch, batch = item
    return epoch, mesh_lib.put(batch, program.batch_sharding), program.step_for(batch)


def _batches_from(data: XCDataset, shape: input_pipeline.BatchShape, seed: int, start_step: int,
                  steps_per_epoch: int, epochs: int):
    """Yields ``(epoch, batch)`` from global step ``start_step`` to the end of the last epoch."""
    for epoch in range(start_step // steps_per_epoch, epochs):
        skip = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for batch in input_pipeline.train_batches(data, shape, seed, epoch, start_batch=skip):
            yield epoch, batch


def _init_state(config: Config, num_features: int, rep_ids: tuple[int, ...],
                spec: steps.StepSpec) -> steps.State:
    params = model.init_params(config.model, num_features, jnp.asarray(rep_ids, jnp.int32),
                               config.train.seed)
    return steps.create_state(params, spec)


def train_and_evaluate(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    """Trains on the configured data, evaluates on its test split, writes ``metrics.json``.

    With ``data.valid_frac`` > 0 it trains on the training data less a held-out validation split
    and evaluates on that split instead (``"split": "valid"`` in the metrics), never on the test
    data. The evaluation is also logged to ``metrics.jsonl`` (with the per-epoch ones that
    ``train.eval_every_epochs`` asks for) and to ``tensorboard/``.

    Returns:
      The metrics dict (P@k, nDCG@k, PSP@k for k = 1, 3, 5, the split and the run's settings).
    """
    config.validate()
    train_data, eval_data, split = load_train_eval(config.data, progress)
    if eval_data.num_points == 0:
        raise DataFormatError(eval_data.source, 1, "the header declares 0 points: nothing to evaluate")
    _, _, metrics = _train(config, workdir, train_data, eval_data, progress, split)
    if jax.process_index() == 0:
        wd.write_metrics(wd.group_dir(Path(workdir), config.parallel.rep_range), metrics)
    return metrics
