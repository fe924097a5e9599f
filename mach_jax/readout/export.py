"""Export a trained ensemble plus its decoder (and re-ranker, if any) as one serialized StableHLO
function (jax.export).

The file runs with nothing but JAX installed: parameters and hash seeds are baked in, and the
input is a fixed-shape batch (pad the last one):

    exported = jax.export.deserialize(bytearray(open("model.stablehlo", "rb").read()))
    scores, ids = exported.call(feat_ids, feat_vals)   # int32 [N, K], float32 [N, K] -> [N, k] each

A JSON file beside it records N, K, k, D and L. Both files are written to a temporary file beside
their target and renamed once complete, so an existing export is never left half overwritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from mach_jax.data.files import write_bytes_atomically, write_json_atomically
from mach_jax.data import transforms
from mach_jax.readout import step
from mach_jax.readout.ensemble import MachEnsemble


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
