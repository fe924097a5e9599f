"""A trained ensemble for notebooks and scripts: load a workdir, predict top-k, evaluate.

    ensemble = MachEnsemble.load("runs/bibtex")
    scores, ids = ensemble.predict(features_csr, k=5)     # [N, k] each, best first
    metrics = ensemble.evaluate(read_xc("test.txt"))      # P@k, nDCG@k, PSP@k
    metrics = ensemble.evaluate(X, Y)                      # scipy.sparse / dense X, Y (data.in_memory)
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mach_jax.config import Config
from mach_jax.core import mesh as mesh_lib, model
from mach_jax.core.compiled import shared_jit
from mach_jax.core.ensemble_spec import member_seeds, member_spec
from mach_jax.data import batches, transforms
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.data.in_memory import as_features, as_labels
from mach_jax.data.prepare import RunInfo, check_enough_labels
from mach_jax.errors import DataFormatError
from mach_jax.readout import metrics, step
from mach_jax.readout.decoders import ApproxDecoder, ExactDecoder, build_approx_decoder
from mach_jax.readout.rerank import Reranker, load_reranker, placed
from mach_jax.readout.restore import restore_members
from mach_jax.storage import checkpoints, workdir as wd


class MachEnsemble:
    """R trained members plus everything needed to read them out.

    Args:
      config: the run's config (its ``eval`` section sets the read-out).
      info: what the training data fixed (D, L, widths).
      params: stacked parameters, leaves [R, ...] (device or host arrays).
      label_counts: int [L] training label counts, for PSP@k.
      rep_ids: the repetition id of each member (default 0..R-1).
      feature_idf: float32 [D], the training features' idf (``data.input_transform="tfidf_l2"``).
      reranker: the shortlist re-ranker (``readout.rerank``), or None; used unless
        ``eval.reranker`` is "off".
      label_table: the members' learned class -> bucket table, integer [R, L] (a run with
        ``partition.label_buckets`` "learned"), or None: the buckets are hashed.

    Attributes:
      spec: the members' forward pass (``ensemble_spec.MemberSpec``).
      params, seeds: the members' parameters [R, ...] and hash seeds [R] (their class -> bucket
        table [R, L] as ``seeds["labels"]`` when it is learned), sharded over ``mesh``.
    """

    def __init__(self, config: Config, info: RunInfo, params: model.Params,
                 label_counts: np.ndarray, rep_ids: tuple[int, ...] | None = None,
                 feature_idf: np.ndarray | None = None, reranker: Reranker | None = None,
                 label_table: np.ndarray | None = None):
        num_members = jax.tree.leaves(params)[0].shape[0]
        config.eval.validate(num_members)
        check_enough_labels(info.num_labels)
        self.config, self.info = config, info
        self.feature_idf = feature_idf
        # The first r <= R members: a count-min sketch read with fewer rows.
        num_reps = config.eval.eval_repetitions or num_members
        self.rep_ids = tuple(rep_ids if rep_ids is not None else range(num_members))[:num_reps]
        self.mesh = mesh_lib.make_mesh(num_reps)
        self.params = self._placed(params)
        self.label_table = None if label_table is None else np.asarray(label_table)[:num_reps]
        self.seeds = member_seeds(config, self.rep_ids, self.mesh, self._placed(self.label_table))
        self.inv_propensity = mesh_lib.put(metrics.inverse_propensity(
            label_counts, info.num_train_points, *config.eval.propensity()),
            mesh_lib.replicated(self.mesh))
        self.spec = member_spec(config, info.num_features, info.max_nnz, self.mesh, info.mean_nnz)
        read_out = dict(spec=self.spec, aggregation=config.eval.aggregation)
        # Jitted once per spec in this process (core.compiled): each batch shape, decoder and k
        # compiles once, then is reused, by this ensemble and by any other with the same spec.
        # Each device reads out its members; the take-and-sum reduces over R into replicated results.
        everywhere = mesh_lib.replicated(self.mesh)
        self._predict_step = shared_jit(step.predict_step, read_out, static_argnames=("k", "entries_cap"),
                                        out_shardings=everywhere)
        self._eval_step = shared_jit(step.eval_step, {**read_out, "k": metrics.top_k(info.num_labels)},
                                     static_argnames=("entries_cap",), out_shardings=everywhere)
        self._label_counts = np.asarray(label_counts)
        self._exact = ExactDecoder(info.num_labels, config.eval.class_chunk_size, self.spec.batched_forms)
        self.trained_reranker = reranker
        self.reranker = None
        if reranker is not None and config.eval.reranker != "off":
            mix = reranker.mix if config.eval.rerank_mix is None else config.eval.rerank_mix
            self.reranker = placed(dataclasses.replace(reranker, mix=mix), self.mesh)
        self._approx: ApproxDecoder | None = None
        self.checkpoint_step: int | None = None  # the members' training step, when loaded from a workdir
        self.recorded_final_step: int | None = None  # the run's last step, as its checkpoint records it

    def _placed(self, params: model.Params) -> model.Params:
        """The first r members' parameters [r, ...] (or table, or None), sharded over the read-out's mesh."""
        if params is None:
            return None
        params = jax.tree.map(lambda leaf: leaf[:len(self.rep_ids)], params)
        if all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params)):
            return jax.device_put(params, mesh_lib.stacked(self.mesh))  # resharding on device
        return mesh_lib.put(params, mesh_lib.stacked(self.mesh))

    def with_params(self, params: model.Params, label_table: np.ndarray | None = None) -> "MachEnsemble":
        """The same read-out over other parameters of the same members and shapes (the next
        epoch's, say), and their learned class -> bucket table [R, L] if they have one: its
        compiled steps are reused, so nothing recompiles (an approximate decoder is rebuilt for a
        new table)."""
        other = copy.copy(self)
        other.params = self._placed(params)
        if label_table is not None:
            other.label_table = np.asarray(label_table)[:len(self.rep_ids)]
            other.seeds = dict(self.seeds, labels=self._placed(other.label_table))
            other._approx = None
        return other

    def decoder(self, approx: bool | None = None) -> ExactDecoder | ApproxDecoder:
        """The exact decoder, or (``approx``) the approximate one, its index built on first use;
        None: the one ``config.eval.decoder`` names."""
        if approx is None:
            approx = self.config.eval.decoder == "approx"
        if not approx:
            return self._exact
        if self._approx is None:
            label_map = self.label_table if self.label_table is not None else jax.device_get(self.seeds["labels"])
            self._approx = build_approx_decoder(self.config, label_map, self.info.num_labels,
                                                self._label_counts, self.mesh)
        return self._approx

    @classmethod
    def load(cls, *workdirs: str | Path, **eval_overrides) -> "MachEnsemble":
        """Restores the newest checkpoints of one workdir, or merges independently trained groups.

        Args:
          *workdirs: one workdir, or several (groups trained on separate machines); a workdir
            may itself hold groups ``reps-START-STOP/`` (see ``workdir.find_groups``).
          **eval_overrides: fields of the eval section to change (e.g. ``eval_repetitions=4``).
        """
        members = restore_members(*workdirs)
        config, info, groups = members.config, members.info, members.groups
        config = config.replace(eval=eval_overrides) if eval_overrides else config
        reranker = None
        if config.eval.reranker != "off":
            reranker = load_reranker(Path(workdirs[0]), info.num_features, info.num_labels, config.eval.rerank_mix)
        ensemble = cls(config, info, members.params, wd.read_label_counts(groups[0].path),
                       feature_idf=wd.read_feature_idf(groups[0].path), reranker=reranker,
                       label_table=members.label_table)
        ensemble.checkpoint_step = members.step
        ensemble.recorded_final_step = checkpoints.training_progress(groups[0].path).final_step
        return ensemble

    @property
    def final_step(self) -> int:
        """The step the run ends at: as its newest checkpoint records it (a resume may have changed
        ``--epochs``), else epochs x ceil(N_train / batch_size) from its config and run_info."""
        if self.recorded_final_step is not None:
            return self.recorded_final_step
        return self.config.train.epochs * batches.num_batches(self.info.num_train_points,
                                                              self.config.train.batch_size)

    def with_eval(self, **eval_overrides) -> "MachEnsemble":
        """The same members read out with other eval settings (e.g. ``eval_repetitions=r`` for
        the first r of them), from the parameters in memory rather than the checkpoint."""
        return MachEnsemble(self.config.replace(eval=eval_overrides), self.info, self.params,
                            self._label_counts, self.rep_ids, self.feature_idf, self.trained_reranker,
                            self.label_table)

    def _put(self, batch: batches.Batch) -> dict[str, jax.Array]:
        return mesh_lib.put(batch, mesh_lib.replicated(self.mesh))

    def _check_features(self, dataset_source: str, features: CsrMatrix) -> None:
        if features.num_cols != self.info.num_features:
            raise DataFormatError(dataset_source, 1, f"the data has D={features.num_cols} features, "
                                  f"the model was trained with D={self.info.num_features}")

    def _batch_shape(self, features: CsrMatrix, labels: CsrMatrix | None) -> batches.BatchShape:
        # Widths rounded up to a power of two: inputs of similar width reuse one compilation.
        widest = batches.widest_row(features)
        max_nnz = batches.next_power_of_two(widest)
        if self.config.data.max_nnz:
            max_nnz = min(max_nnz, self.config.data.max_nnz)
        max_labels = batches.next_power_of_two(batches.widest_row(labels)) if labels is not None else 1
        return batches.BatchShape(self.config.eval.eval_batch_size, max_nnz, max_labels)

    def _entries_cap(self, features: CsrMatrix, shape: batches.BatchShape) -> int:
        """T of the gathered bag for the batches of these (capped) rows: their batches' most
        nonzero entries, rounded up to a power of two (similar inputs reuse one compilation); 0
        (the N x K padded slots) for the dense-matmul bag or where T would save nothing."""
        if self.spec.dense_input or not features.num_rows:
            return 0
        rows = np.repeat(np.arange(features.num_rows), features.row_nnz())
        per_row = np.bincount(rows[features.values != 0], minlength=features.num_rows)
        per_batch = np.add.reduceat(per_row, np.arange(0, features.num_rows, shape.batch_size))
        cap = batches.next_power_of_two(max(int(per_batch.max()), 1))
        return cap if cap < shape.batch_size * shape.max_nnz else 0

    def member_features(self, features: CsrMatrix, source: str) -> CsrMatrix:
        """[N, D] features as the members saw them in training: transformed, capped to their width."""
        return self._capped(features, source, self.info.max_nnz)

    def _capped(self, features: CsrMatrix, source: str, width: int) -> CsrMatrix:
        """The features as the members saw them in training: transformed, then capped to K."""
        features = transforms.apply(features, self.config.data.input_transform, self.feature_idf)
        return batches.cap_row_width(features, width, self.config.data.overflow,
                                     keep_largest=True, source=source, what="features")

    def predict(self, features, k: int = 5, source: str = "<features>",
                progress: bool = False, approx: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k classes of every row of [N, D] features: a CsrMatrix, scipy.sparse or dense array.

        ``approx``: True for approximate decoding (``config.eval.top_buckets`` etc.), False for
        exact, None for ``config.eval.decoder``. Approximate decoding may return fewer than k
        classes for a point: the missing places have score -inf and id L.

        Returns:
          ``(scores, ids)``: float32 [N, k] and int32 [N, k], best first.
        """
        if not 1 <= k <= self.info.num_labels:
            raise ValueError(f"k={k}: must be between 1 and L={self.info.num_labels}, the number of classes")
        features = as_features(features, what=source)
        self._check_features(source, features)
        if features.num_rows == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
        shape = self._batch_shape(features, None)
        decoder = self.decoder(approx)
        dataset = XCDataset(self._capped(features, source, shape.max_nnz),
                            CsrMatrix(np.zeros(features.num_rows + 1, np.int64), np.zeros(0, np.int32),
                                      np.zeros(0, np.float32), self.info.num_labels), source)
        scores, ids, entries_cap = [], [], self._entries_cap(dataset.features, shape)
        for batch in tqdm(batches.eval_batches(dataset, shape), disable=not progress,
                          total=batches.num_batches(dataset.num_points, shape.batch_size),
                          desc="predict"):
            batch_scores, batch_ids = self._predict_step(self.params, self._put(batch), self.seeds, decoder,
                                                         self.reranker, k=k, entries_cap=entries_cap)
            scores.append(batch_scores)
            ids.append(batch_ids)
        scores, ids = mesh_lib.fetch_replicated((scores, ids))
        return (np.concatenate(scores)[:dataset.num_points], np.concatenate(ids)[:dataset.num_points])

    def evaluate(self, dataset, labels=None, progress: bool = True,
                 approx: bool | None = None) -> dict[str, float]:
        """P@k, nDCG@k and PSP@k (k = 1, 3, 5, those <= L) of the ensemble on a labelled dataset.

        ``dataset``: an XCDataset, or features [N, D] (as ``predict`` takes them) with ``labels``
        [N, L] (a 0/1 indicator or one list of label ids per point). ``approx`` chooses the
        decoder as in ``predict``.
        """
        if not isinstance(dataset, XCDataset):
            features = as_features(dataset, what="features")
            if labels is None:
                raise TypeError("evaluate: labels are needed with features that are not an XCDataset")
            dataset = XCDataset(features, as_labels(labels, features.num_rows, self.info.num_labels, "labels"))
        self._check_features(dataset.source, dataset.features)
        if dataset.num_labels != self.info.num_labels:
            raise DataFormatError(dataset.source, 1, f"the data has L={dataset.num_labels} labels, "
                                  f"the model was trained with L={self.info.num_labels}")
        dataset.require_points("evaluate")
        shape = self._batch_shape(dataset.features, dataset.labels)
        dataset = dataclasses.replace(dataset, features=self._capped(dataset.features, dataset.source,
                                                                     shape.max_nnz))
        decoder, entries_cap = self.decoder(approx), self._entries_cap(dataset.features, shape)
        totals = None
        for batch in tqdm(batches.eval_batches(dataset, shape), disable=not progress,
                          total=batches.num_batches(dataset.num_points, shape.batch_size),
                          desc="evaluate"):
            sums = self._eval_step(self.params, self._put(batch), self.seeds, self.inv_propensity, decoder,
                                   self.reranker, entries_cap=entries_cap)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        result = metrics.finalize(mesh_lib.fetch_replicated(totals))
        result["num_repetitions"] = int(jax.tree.leaves(self.params)[0].shape[0])
        result["aggregation"] = self.config.eval.aggregation
        result["decoder"] = decoder.describe()
        result["propensity"] = dict(zip(("a", "b"), self.config.eval.propensity()))
        if self.reranker is not None:
            result["reranker"] = {"shortlist_size": self.reranker.shortlist_size, "mix": self.reranker.mix}
        return result
