"""Two exports of a trained ensemble for serving, neither with the optimiser's moments.

``export_ensemble``: the ensemble plus its decoder (and re-ranker, if any) as one serialized
StableHLO function (jax.export). The file runs with nothing but JAX installed: parameters and hash
seeds are baked in, and the input is a fixed-shape batch (pad the last one):

    exported = jax.export.deserialize(bytearray(open("model.stablehlo", "rb").read()))
    scores, ids = exported.call(feat_ids, feat_vals)   # int32 [N, K], float32 [N, K] -> [N, k] each

A JSON file beside it records N, K, k, D and L. Both files are written to a temporary file beside
their target and renamed once complete, so an existing export is never left half overwritten.

``export_params``: a serving folder that ``MachEnsemble.load`` reads like a workdir (any batch
size, either decoder, other eval settings): ``config.json``, the label counts (and idf) and one
checkpoint of the parameters alone, a third of a training checkpoint under Adam; in bfloat16 or
float16 a sixth, and fewer members smaller still. Groups trained apart are merged into one.
Training cannot resume from it (its record says ``params_only``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.data.files import write_bytes_atomically, write_json_atomically
from mach_jax.data import transforms
from mach_jax.errors import WorkdirError
from mach_jax.readout import step
from mach_jax.readout.ensemble import MachEnsemble
from mach_jax.readout.restore import restore_members
from mach_jax.readout.rerank import load_reranker
from mach_jax.storage import checkpoints, rerank_store, run_file, workdir as wd


def export_ensemble(ensemble: MachEnsemble, path: str | Path, batch_size: int, max_nnz: int,
                    k: int = 5) -> Path:
    """Serializes ``predict(feat_ids [N, K], feat_vals [N, K]) -> (scores, ids) [N, k]``.

    Args:
      ensemble: a loaded ensemble (its eval settings: aggregation, r <= R members).
      path: the file to write; ``path`` + ".json" gets the input spec.
      batch_size: N of the exported function.
      max_nnz: K, feature slots per point (rows are padded with value 0).
      k: classes returned per point.

    Returns:
      The written path.

    Raises:
      ValueError: ``batch_size`` or ``max_nnz`` below 1, or k outside [1, L].
    """
    num_labels = ensemble.info.num_labels
    for name, value in (("batch_size", batch_size), ("max_nnz", max_nnz)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    if not 1 <= k <= num_labels:
        raise ValueError(f"k={k}: must be between 1 and L={num_labels}, the number of classes")
    params, seeds = jax.device_get((ensemble.params, ensemble.seeds))  # constants, one device
    spec = dataclasses.replace(ensemble.spec, rep_shards=1)
    decoder = ensemble.decoder(approx=False)
    reranker = ensemble.reranker
    if reranker is not None:
        reranker = dataclasses.replace(reranker, params=jax.device_get(reranker.params))

    idf = ensemble.feature_idf

    def predict(feat_ids, feat_vals):
        feat_vals = transforms.apply_to_batch(feat_ids, feat_vals, ensemble.config.data.input_transform,
                                              None if idf is None else jnp.asarray(idf), xp=jnp)
        batch = {"feat_ids": feat_ids, "feat_vals": feat_vals}
        return step.predict_step(params, batch, seeds, decoder, reranker, spec=spec,
                                 aggregation=ensemble.config.eval.aggregation, k=k)

    exported = jax.export.export(jax.jit(predict))(
        jax.ShapeDtypeStruct((batch_size, max_nnz), jnp.int32),
        jax.ShapeDtypeStruct((batch_size, max_nnz), jnp.float32))
    path = Path(path)
    write_bytes_atomically(path, exported.serialize())
    spec = {"batch_size": batch_size, "max_nnz": max_nnz, "k": k,
            "num_features": ensemble.info.num_features, "num_labels": ensemble.info.num_labels}
    write_json_atomically(f"{path}.json", spec)
    return path


SERVING_DTYPES = ("float32", "bfloat16", "float16")


def export_params(target: str | Path, *workdirs: str | Path, dtype: str = "float32",
                  num_members: int | None = None) -> Path:
    """Writes the serving folder ``target`` of a trained run: its parameters without the moments.

    Args:
      target: a new folder (or an empty one); ``MachEnsemble.load(target)`` reads it.
      *workdirs: the trained run: one workdir, or its groups (as ``MachEnsemble.load`` takes them).
      dtype: how the members' tables are stored: "float32", or "bfloat16" / "float16" (half the
        bytes; ``MachEnsemble.load`` reads them back as float32, so only rounding changes).
      num_members: keep the first r <= R members (a count-min sketch with fewer rows, r / R of
        the size), or None for all R.

    Returns:
      ``target``.

    Raises:
      ValueError: an unknown ``dtype``, ``num_members`` outside [1, R], or a parameter too large
        for float16.
      WorkdirError: ``target`` already holds a run or checkpoints, or the run cannot be read.
    """
    if dtype not in SERVING_DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {SERVING_DTYPES}")
    target = Path(target)
    if any((target / name).exists() for name in (run_file.CONFIG_FILE, checkpoints.CHECKPOINT_DIR,
                                                 rerank_store.RERANK_DIR)):
        raise WorkdirError(f"{target}: already holds a run; export to a new folder")
    members = restore_members(*workdirs)
    config, info = members.config, members.info
    config, params = _served(config, members.params, dtype, num_members)
    served = {"params": params}
    if members.label_table is not None:  # the learned class -> bucket table of the members kept
        served["label_table"] = members.label_table[:config.model.num_repetitions]
    source = members.groups[0].path
    fingerprint = run_file.read_run_file(source).data_fingerprint
    final_step = checkpoints.training_progress(source).final_step
    _save_params(target, members.step, served, wd.identity(config, info, fingerprint), final_step)
    reranker = load_reranker(Path(workdirs[0]), info.num_features, info.num_labels, config.eval.rerank_mix)
    if reranker is not None:  # the re-ranker's parameters too, with its record
        _save_params(rerank_store.rerank_dir(target), members.step, {"params": reranker.params}, None, None)
        rerank_store.write_record(target, rerank_store.read_record(Path(workdirs[0])))
    # config.json last: it marks a complete folder (``workdir.write_run``).
    wd.write_run(target, config, info, wd.read_label_counts(source), wd.read_feature_idf(source), fingerprint)
    return target


def _served(config, params, dtype: str, num_members: int | None):
    """The config and parameters [r, ...] as served: the first r members, floats in ``dtype``."""
    total = jax.tree.leaves(params)[0].shape[0]
    if num_members is not None:
        if not 1 <= num_members <= total:
            raise ValueError(f"num_members={num_members}: must be between 1 and R={total}, the members trained")
        params = jax.tree.map(lambda leaf: leaf[:num_members], params)
        reps = min(config.eval.eval_repetitions, num_members) if config.eval.eval_repetitions else None
        config = config.replace(model={"num_repetitions": num_members}, eval={"eval_repetitions": reps})
    if dtype != "float32":
        target = jnp.dtype(dtype)
        largest = max(float(np.abs(np.asarray(leaf, np.float32)).max(initial=0.0))
                      for leaf in jax.tree.leaves(params))
        if largest > float(jnp.finfo(target).max):
            raise ValueError(f"dtype={dtype}: a parameter of magnitude {largest:.3g} does not fit; "
                             "use bfloat16 (float32's range)")
        params = jax.tree.map(lambda leaf: np.asarray(leaf).astype(target)
                              if np.issubdtype(np.asarray(leaf).dtype, np.floating) else leaf, params)
    return config, params


def _save_params(folder: Path, step_done: int, arrays: dict, identity: dict | None, final_step: int | None) -> None:
    """``folder/checkpoints/<step>`` holding ``{"params": [R, ...]}`` (and a learned
    ``"label_table"`` [R, L]) alone, on disk when it returns: ``checkpoints.restore_params``
    reads it as a training checkpoint; ``restore_latest`` refuses it."""
    with checkpoints.opened(folder, keep=1) as manager:
        checkpoints.save_state(manager, step_done, arrays, identity, final_step, params_only=True)
