"""``train_and_evaluate(config, workdir)``: train on the configured data, evaluate, write metrics.

This is where training and read-out meet: the training loop (``training.loop``) knows nothing
of decoders and metrics; it is handed an evaluator built here from ``readout.MachEnsemble``.
It is what ``python -m mach_jax.train``, the scripts and notebooks call.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np

from mach_jax import rerank_stage
from mach_jax.config import Config
from mach_jax.core import model
from mach_jax.data import in_memory, sources
from mach_jax.data.csr import XCDataset
from mach_jax.data.prepare import RunInfo
from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.storage import lock, workdir as wd
from mach_jax.training import loop, resource_check
from mach_jax.training.loop import Evaluate
from mach_jax.training.resolve import fitted_to_data, prepare_run, validated
from mach_jax.training.resources import run_shape

log = logging.getLogger("mach_jax")


def evaluator(config: Config, eval_data: XCDataset, split: str):
    """A ``loop.EvaluatorFactory``: P@k, nDCG@k, PSP@k of the members trained (the first
    ``eval.eval_repetitions``) on ``eval_data``, tagged with its ``split``."""
    def evaluator_for_run(info: RunInfo, counts: np.ndarray, rep_ids: tuple[int, ...],
                          idf: np.ndarray | None) -> Evaluate:
        built: list[MachEnsemble] = []  # one read-out per run: its steps compile once, every epoch reuses them

        def evaluate(params: model.Params, label_table, progress: bool) -> dict:
            label_table = None if label_table is None else np.asarray(jax.device_get(label_table))
            if not built:
                built.append(MachEnsemble(config, info, params, counts, rep_ids=rep_ids, feature_idf=idf,
                                          label_table=label_table))
            ensemble = built[0].with_params(params, label_table)
            return {**ensemble.evaluate(eval_data, progress=progress), "split": split}
        return evaluate
    return evaluator_for_run


def train_and_evaluate(config: Config, workdir: str | Path, progress: bool = True, *,
                       train_data: XCDataset | tuple | None = None, eval_data: XCDataset | tuple | None = None) -> dict:
    """Trains on the configured data, evaluates on its test split, writes ``metrics.json``.

    Args:
      config: the run's settings (validated here, once, and sized for the data).
      workdir: where the run's files go; re-running resumes from its newest checkpoint.
      progress: progress bars on stderr.
      train_data, eval_data: data in memory to use instead of the config's source for that split:
        an ``XCDataset`` or an ``(X, Y)`` pair (scipy.sparse or dense features [N, D]; labels as
        a 0/1 indicator [N, L] or lists of label ids), checked up front (``data.in_memory``).

    With ``rerank.shortlist_size`` K > 0 it then trains the shortlist re-ranker
    (``rerank_stage``) and reports the re-ranked metrics, the members' own under
    ``"without_reranker"`` and the second stage's seconds as ``rerank_seconds`` (the members'
    evaluation in ``metrics.jsonl`` and TensorBoard is the members' own).

    With ``data.valid_frac`` > 0 it trains on the training data less a held-out validation split
    and evaluates on that split instead (``"split": "valid"`` in the metrics), never on the test
    data. With neither a validation split nor test data it trains only (the metrics then hold
    ``train_seconds`` alone). The evaluation is also logged to ``metrics.jsonl`` (with the
    per-epoch ones that ``train.eval_every_epochs`` asks for) and to ``tensorboard/``.

    Once the data is loaded it logs the model's size and refuses a run whose memory estimate
    (``training.resources``) does not fit in what is free, before anything is allocated or written.

    Returns:
      The metrics dict (P@k, nDCG@k, PSP@k for k = 1, 3, 5, the split and the run's settings).
    """
    config = with_absolute_paths(validated(config))  # the paths alone change: valid still
    log_settings(config, workdir)
    if config.rerank.enabled:
        rerank_stage.require_one_process()  # before the members train, not after
    all_train_data, eval_data, split = load_data(config, progress, train_data, eval_data)
    train_data = rerank_stage.members_points(config, all_train_data)
    config = fitted_to_data(config, train_data, workdir)
    if config.rerank.enabled:
        rerank_stage.require_shortlist_within(config.rerank.shortlist_size, train_data.num_labels)
    # Before anything big is allocated or written: a table that cannot fit is refused here.
    shape = run_shape(train_data, eval_data, config.data.max_nnz)
    resource_check.require_fits(config, shape, config.data.train_path)
    run = prepare_run(config, train_data)
    fields = sources.eval_fields(config.data, eval_data, split) if eval_data is not None else {}
    _, metrics = loop.run_training(run, workdir, progress, final_fields=fields,
                                   evaluator=evaluator(config, eval_data, split) if eval_data is not None else None)
    if config.rerank.enabled:
        metrics = {**with_reranker(config, Path(workdir), all_train_data, eval_data, metrics, progress), **fields,
                   "train_seconds": metrics["train_seconds"]}
    if jax.process_index() == 0:
        wd.write_metrics(wd.group_dir(Path(workdir), config.parallel.rep_range), metrics)
    return metrics


def load_data(config: Config, progress: bool, train_data: XCDataset | tuple | None,
              eval_data: XCDataset | tuple | None) -> tuple[XCDataset, XCDataset | None, str | None]:
    """``(train, eval data, split)``: what is given in memory (checked up front), the rest from the
    config's source (``sources.load_train_eval``)."""
    if train_data is not None:
        train_data = in_memory.as_dataset(train_data, "train_data")
    if eval_data is not None:
        eval_data = in_memory.as_dataset(eval_data, "eval_data", train_data.num_labels if train_data else None)
    train_data, eval_data, split = sources.load_train_eval(config.data, progress, train_data, eval_data)
    if eval_data is not None:
        eval_data.require_points("evaluate")
    return train_data, eval_data, split


def with_reranker(config: Config, workdir: Path, train_data: XCDataset, eval_data: XCDataset | None,
                  members: dict, progress: bool) -> dict:
    """Fits the shortlist re-ranker (the workdir held meanwhile) and, with evaluation data, returns
    the re-ranked metrics (the members' under ``"without_reranker"``) with ``rerank_seconds``."""
    start = time.perf_counter()
    with lock.hold(workdir):  # no training run in this workdir while the re-ranker fits
        rerank_stage.fit_reranker(config, [workdir], train_data, progress)
    rerank_seconds = round(time.perf_counter() - start, 2)
    if eval_data is not None:
        members = rerank_stage.evaluate_with_reranker(config, [workdir], eval_data, members, progress)
    return {**members, "rerank_seconds": rerank_seconds}


def log_settings(config: Config, workdir: str | Path) -> None:
    """The run's first status line: R, B, the hidden sizes, the loss and the workdir."""
    model = config.model
    buckets = model.num_buckets or "from the data"
    log.info(f"mach_jax: R={model.num_repetitions} members, B={buckets} buckets, hidden={list(model.hidden_sizes)}, "
             f"loss={config.train.loss.replace('auto', 'from the data')}, workdir={workdir}")


def with_absolute_paths(config: Config) -> Config:
    """The config with its data paths absolute, so that the workdir's ``config.json`` still finds
    them from another folder (they may change on resume: moving the data is allowed)."""
    data = config.data
    paths = {name: str(Path(value).absolute()) for name in ("train_path", "test_path", "cache_dir", "tfds_data_dir")
             if (value := getattr(data, name)) is not None}
    return config.replace(data=paths) if paths else config
