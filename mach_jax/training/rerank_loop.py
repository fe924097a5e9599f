"""Training the shortlist re-ranker (``core.reranker``): the second stage, after the members.

It is handed each training point's shortlist (the read-out's best K classes, computed by the
caller, ``mach_jax.rerank_stage``), so training still knows nothing of decoders. One jitted Adam
step per batch over the sampled-softmax loss; the class rows live split over the devices
(``reranker.class_row_sharding``, as in the read-out). A checkpoint after every epoch
under ``workdir/rerank/``; re-running resumes from the newest one; the batches are a pure function
of (seed, epoch), as for the members.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from mach_jax.config import RerankConfig
from mach_jax.core import mesh as mesh_lib
from mach_jax.core import reranker, reranker_lazy
from mach_jax.core.compiled import shared_jit
from mach_jax.data import batches
from mach_jax.data.csr import XCDataset
from mach_jax.storage import checkpoints, lock, rerank_store
from mach_jax.training import loop, monitoring

log = logging.getLogger("mach_jax")

# Folded into the run's seed: the re-ranker's draws never repeat the members' streams.
_RERANK_STREAM = 0x52524B


def train_reranker(settings: RerankConfig, seed: int, workdir: Path, data: XCDataset, shortlist: np.ndarray,
                   identity: dict, progress: bool = True) -> reranker.RerankParams:
    """Trains (or resumes, or returns the finished) re-ranker of a workdir.

    Args:
      settings: the ``rerank`` section.
      seed: ``train.seed``.
      workdir: the ensemble's (top) workdir; files go to ``workdir/rerank/``.
      data: the training points, features transformed and capped as the members saw them, labels
        cut to ``settings.rerank_max_labels`` per point.
      shortlist: int32 [N, K], each point's read-out shortlist (L: empty slot).
      identity: what a saved re-ranker must match to be resumed (D, L, settings, shortlist source).

    Returns:
      The parameters (``reranker.RerankParams``), class rows sharded over the devices.
    """
    folder = rerank_store.rerank_dir(workdir)
    with lock.hold(folder, enabled=jax.process_index() == 0):
        record = rerank_store.read_record(workdir)
        rerank_store.check_resumable(workdir, record, identity)
        mesh = mesh_lib.make_mesh(jax.device_count())
        abstract = _abstract_state(settings, data, mesh)
        restored = checkpoints.restore_latest(folder, abstract)
        if restored is None:
            state = _initial_state(settings, seed, data, mesh, abstract)
            rerank_store.write_record(workdir, {**identity, "epochs_done": 0, "finished": False})
        else:
            state = restored.state
            log.info("resuming the re-ranker after epoch %d in %s", int(state["epoch"]), folder)
        with checkpoints.opened(folder, keep=1) as manager:
            state = _run_epochs(settings, seed, data, shortlist, state, manager, workdir, identity, mesh, progress)
    return state["params"]


def _optimizer(settings: RerankConfig) -> optax.GradientTransformation:
    return optax.adam(settings.rerank_learning_rate)


def _init(key, *, settings: RerankConfig, num_features: int, num_labels: int) -> dict:
    params = reranker.init_params(key, num_features, num_labels, settings.rerank_dim)
    opt_state = (reranker_lazy.init_moments(params) if settings.rerank_update == "lazy"
                 else _optimizer(settings).init(params))
    return {"epoch": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}


def _abstract_state(settings: RerankConfig, data: XCDataset, mesh) -> dict:
    init = functools.partial(_init, settings=settings, num_features=data.num_features, num_labels=data.num_labels)
    shapes = jax.eval_shape(init, jax.random.key(0))
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=_sharding_of(path, mesh)), shapes)


def _sharding_of(path, mesh) -> NamedSharding:
    """Class rows (``class_emb``, ``class_bias`` and their Adam moments) as
    ``reranker.class_row_sharding`` lays them out; everything else replicated."""
    is_class_rows = any(str(getattr(part, "key", "")).startswith("class_") for part in path)
    return reranker.class_row_sharding(mesh) if is_class_rows else mesh_lib.replicated(mesh)


def _initial_state(settings: RerankConfig, seed: int, data: XCDataset, mesh, abstract: dict) -> dict:
    init = shared_jit(_init, {"settings": settings, "num_features": data.num_features, "num_labels": data.num_labels},
                      out_shardings=jax.tree.map(lambda leaf: leaf.sharding, abstract))
    return init(jax.random.fold_in(jax.random.key(seed), _RERANK_STREAM))


def _step(state, batch, key, *, settings: RerankConfig, num_labels: int):
    """One Adam step of the re-ranker's sampled-softmax loss: ``(state, loss [1])``; dense, or
    row-sparse (``rerank.rerank_update``, ``core.reranker_lazy``)."""
    if settings.rerank_update == "lazy":
        params, moments, value = reranker_lazy.lazy_step(
            state["params"], state["opt_state"], batch, key, learning_rate=settings.rerank_learning_rate,
            num_labels=num_labels, num_negatives=settings.sampled_negatives, dropout=settings.rerank_dropout)
        return {**state, "params": params, "opt_state": moments}, value[None]
    loss = functools.partial(reranker.sampled_softmax_loss, num_labels=num_labels,
                             num_negatives=settings.sampled_negatives, dropout=settings.rerank_dropout)
    value, grads = jax.value_and_grad(loss)(state["params"], batch, key)
    updates, opt_state = _optimizer(settings).update(grads, state["opt_state"], state["params"])
    state = {**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
    return state, value[None]  # one "member": the loss log's shape


def _run_epochs(settings: RerankConfig, seed: int, data: XCDataset, shortlist: np.ndarray, state: dict,
                manager, workdir: Path, identity: dict, mesh, progress: bool) -> dict:
    """Epochs from ``state["epoch"]`` to the last through ``loop.run_loop``, the members' loop: the
    loss logged and checked, a checkpoint and a record after each epoch. A stop inside an epoch
    resumes from the epoch's start (its batches are a pure function of (seed, epoch))."""
    shape = batches.BatchShape(settings.rerank_batch_size, batches.widest_row(data.features) or 1,
                               settings.rerank_max_labels)
    steps_per_epoch = batches.num_batches(data.num_points, shape.batch_size)
    schedule = loop.Schedule(total_steps=settings.rerank_epochs * steps_per_epoch, log_every=steps_per_epoch,
                             checkpoint_every=steps_per_epoch)
    first = int(state["epoch"])
    epoch_loss = {}

    def write_loss(kind: str, step: int, loss: float, **fields) -> None:
        epoch_loss[step // steps_per_epoch] = loss
        log.info("re-ranker epoch %d: loss %.4f", step // steps_per_epoch, loss)

    def save(step: int, state: dict) -> int:
        epoch = step // steps_per_epoch
        if step % steps_per_epoch == 0:
            checkpoints.save_state(manager, epoch, {**state, "epoch": jnp.asarray(epoch, jnp.int32)})
            checkpoints.wait_until_saved(manager)
            rerank_store.write_record(workdir, {**identity, "epochs_done": epoch,
                                                "finished": epoch == settings.rerank_epochs,
                                                "last_epoch_loss": epoch_loss[epoch]})
        return epoch * steps_per_epoch

    bar = tqdm(total=schedule.total_steps, initial=first * steps_per_epoch, disable=not progress, desc="rerank",
               unit="step")
    loss_log = monitoring.LossLog((0,), shape.batch_size, bar, write_loss, remedy="lower --rerank-lr")
    updates = _updates(settings, seed, data, shortlist, shape, first, mesh)
    try:
        state = loop.run_loop(state, first * steps_per_epoch, updates, schedule, loss_log=loss_log, save=save,
                              workdir=rerank_store.rerank_dir(workdir))
    finally:
        bar.close()
    if first == settings.rerank_epochs:  # stopped after the last save, before its record
        rerank_store.write_record(workdir, {**identity, "epochs_done": first, "finished": True})
    return state


def _updates(settings: RerankConfig, seed: int, data: XCDataset, shortlist: np.ndarray,
             shape: batches.BatchShape, first_epoch: int, mesh):
    """``(1, update)`` for each step from epoch ``first_epoch`` on; ``update(state) -> (state,
    loss [1])`` runs the jitted ``_step`` on the step's batch and shortlists."""
    step = shared_jit(_step, {"settings": settings, "num_labels": data.num_labels}, donate_argnums=0)
    base_key = jax.random.fold_in(jax.random.key(seed), _RERANK_STREAM + 1)
    everywhere = mesh_lib.replicated(mesh)
    steps_per_epoch = batches.num_batches(data.num_points, shape.batch_size)
    for epoch in range(first_epoch, settings.rerank_epochs):
        order = batches.epoch_order(data.num_points, seed + _RERANK_STREAM, epoch)
        for index in range(steps_per_epoch):
            rows = order[index * shape.batch_size:(index + 1) * shape.batch_size]
            batch = batches.make_batch(data, rows, shape)
            batch["shortlist"] = _shortlist_rows(shortlist, rows, shape.batch_size, data.num_labels)
            key = jax.random.fold_in(base_key, epoch * steps_per_epoch + index)
            yield 1, functools.partial(step, batch=mesh_lib.put(batch, everywhere), key=key)


def _shortlist_rows(shortlist: np.ndarray, rows: np.ndarray, batch_size: int, num_labels: int) -> np.ndarray:
    """int32 [batch, K]: the shortlists of ``rows``, padding points' all L (empty)."""
    out = np.full((batch_size, shortlist.shape[1]), num_labels, np.int32)
    out[:len(rows)] = shortlist[rows]
    return out
