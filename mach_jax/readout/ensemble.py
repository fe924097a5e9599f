"""A trained ensemble for notebooks and scripts: load a workdir, predict top-k, evaluate.

    ensemble = MachEnsemble.load("runs/bibtex")
    scores, ids = ensemble.predict(features_csr, k=5)     # [N, k] each, best first
    metrics = ensemble.evaluate(read_xc("test.txt"))      # P@k, nDCG@k, PSP@k
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from mach_jax.readout import approx_decode, metrics
from mach_jax.core import hashing, mesh as mesh_lib, model
from mach_jax.data import batches as input_pipeline
from mach_jax.training import step as steps
from mach_jax.storage import workdir as wd
from mach_jax.config import Config
from mach_jax.errors import ConfigError
from mach_jax.data.csr import CsrMatrix, XCDataset
from mach_jax.errors import DataFormatError
from mach_jax.errors import WorkdirError


def check_top_k(config: Config, num_labels: int) -> None:
    """P@5 needs at least 5 classes; refused before anything is trained or compiled."""
    if num_labels < config.eval.top_k:
        raise ConfigError(f"eval.top_k={config.eval.top_k}: the data has only L={num_labels} labels",
                          field="eval.top_k")


_DROPOUT_STREAM = 0x64726F70  # "drop": keeps the dropout seeds apart from other uses of train.seed


def member_seeds(config: Config, rep_ids, mesh) -> dict[str, jax.Array]:
    """Device seeds of the members ``rep_ids``: labels uint32 [R] (features [R] if hashed,
    dropout [R] with dropout).

    Buckets and hashed feature slots are computed from them on device (``hashing.hash_to_range``).
    """
    seeds = {"labels": hashing.repetition_seeds(config.model.label_hash_seed, np.asarray(rep_ids))}
    if config.model.feat_hash_dim:
        seeds["features"] = hashing.repetition_seeds(config.model.feature_hash_seed, np.asarray(rep_ids))
    if config.train.dropout:  # dropout masks: member r's stream depends on train.seed and r only
        seeds["dropout"] = hashing.murmur3_32_of_uint32(np.asarray(rep_ids, np.uint32),
                                                        np.uint32(config.train.seed ^ _DROPOUT_STREAM))
    return mesh_lib.put(seeds, mesh_lib.stacked(mesh))


def step_spec(config: Config, info: wd.RunInfo, mesh) -> steps.StepSpec:
    """The static side of the train/predict steps for this config, data and mesh."""
    return steps.StepSpec(
        rep_shards=mesh.shape[mesh_lib.REPS_AXIS],
        graphdef=model.member_graphdef(config.model, info.num_features, info.max_nnz),
        loss_name=config.train.loss, num_buckets=config.model.num_buckets,
        feat_hash_dim=config.model.feat_hash_dim, learning_rate=config.train.learning_rate,
        lazy_embedding=model.uses_lazy_update(config.model, config.train.embedding_update,
                                              info.num_features, info.max_nnz, config.train.batch_size,
                                              config.train.embedding_optimizer),
        embedding_optimizer=config.train.embedding_optimizer,
        embedding_learning_rate=config.train.resolved_embedding_learning_rate,
        lr_schedule=config.train.lr_schedule, warmup_steps=config.train.warmup_steps,
        total_steps=config.train.epochs * input_pipeline.num_batches(info.num_train_points,
                                                                     config.train.batch_size),
        dropout=config.train.dropout, weight_decay=config.train.weight_decay,
        label_smoothing=config.train.label_smoothing)


class MachEnsemble:
    """R trained members plus everything needed to read them out.

    Args:
      config: the run's config (its ``eval`` section sets the read-out).
      info: what the training data fixed (D, L, widths).
      params: stacked parameters, leaves [R, ...] (device or host arrays).
      label_counts: int [L] training label counts, for PSP@k.
      rep_ids: the repetition id of each member (default 0..R-1).

    Attributes:
      read_out: the static settings of ``steps.predict_step`` (spec, aggregation, L, chunk size).
    """

    def __init__(self, config: Config, info: wd.RunInfo, params: model.Params,
                 label_counts: np.ndarray, rep_ids: tuple[int, ...] | None = None):
        num_members = jax.tree.leaves(params)[0].shape[0]
        config.eval.validate(num_members)
        check_top_k(config, info.num_labels)
        self.config, self.info = config, info
        # The first r <= R members: a count-min sketch read with fewer rows.
        num_reps = config.eval.eval_repetitions or num_members
        self.rep_ids = tuple(rep_ids if rep_ids is not None else range(num_members))[:num_reps]
        self.mesh = mesh_lib.make_mesh(num_reps)
        params = jax.tree.map(lambda leaf: leaf[:num_reps], params)
        if all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params)):
            self.params = jax.device_put(params, mesh_lib.stacked(self.mesh))  # resharding on device
        else:
            self.params = mesh_lib.put(params, mesh_lib.stacked(self.mesh))
        self.seeds = member_seeds(config, self.rep_ids, self.mesh)
        self.inv_propensity = mesh_lib.put(metrics.inverse_propensity(
            label_counts, info.num_train_points, config.eval.propensity_a, config.eval.propensity_b),
            mesh_lib.replicated(self.mesh))
        self.read_out = read_out = dict(
            spec=step_spec(config, info, self.mesh), aggregation=config.eval.aggregation,
            num_labels=info.num_labels, chunk_size=config.eval.class_chunk_size)
        # Jitted once per ensemble: each batch shape (and k) compiles once, then is reused. Each
        # device reads out its members; the take-and-sum reduces over R into replicated results.
        everywhere = mesh_lib.replicated(self.mesh)
        self._predict_step = jax.jit(functools.partial(steps.predict_step, **read_out),
                                     static_argnames=("k", "approx"), out_shardings=everywhere)
        self._eval_step = jax.jit(functools.partial(steps.eval_step, k=config.eval.top_k, **read_out),
                                  static_argnames=("approx",), out_shardings=everywhere)
        self._label_counts = np.asarray(label_counts)
        self._index: tuple[dict[str, jax.Array], steps.ApproxReadOut] | None = None

    def approx_index(self) -> tuple[dict[str, jax.Array], steps.ApproxReadOut]:
        """The members' bucket -> classes index (built on first use) and the approx settings.

        The index is int32 [R, L] plus [R, B + 1] offsets, sharded over the members like the
        parameters (see ``approx_decode.build_inverse_index``).
        """
        if self._index is None:
            settings = self.config.eval
            seeds = hashing.repetition_seeds(self.config.model.label_hash_seed, np.asarray(self.rep_ids))
            index, shape = approx_decode.build_inverse_index(
                seeds, self.info.num_labels, self.config.model.num_buckets, self._label_counts,
                settings.bucket_cap)
            rank = index.pop("rank", None)
            index = mesh_lib.put(index, mesh_lib.stacked(self.mesh))
            if rank is not None:
                index["rank"] = mesh_lib.put(rank, mesh_lib.replicated(self.mesh))
            top_buckets = min(settings.top_buckets, self.config.model.num_buckets)
            self._index = index, steps.ApproxReadOut(top_buckets, shape.bucket_cap, settings.min_votes)
        return self._index

    def _decoder(self, approx: bool | None) -> tuple[dict[str, jax.Array] | None, steps.ApproxReadOut | None]:
        """``(index, approx settings)`` for the chosen decoder; (None, None) for exact decoding."""
        if approx is None:
            approx = self.config.eval.decoder == "approx"
        return self.approx_index() if approx else (None, None)

    @classmethod
    def load(cls, *workdirs: str | Path, **eval_overrides) -> "MachEnsemble":
        """Restores the newest checkpoints of one workdir, or merges independently trained groups.

        Args:
          *workdirs: one workdir, or several (groups trained on separate machines); a workdir
            may itself hold groups ``reps-START-STOP/`` (see ``workdir.find_groups``).
          **eval_overrides: fields of the eval section to change (e.g. ``eval_repetitions=4``).
        """
        config, info, groups = wd.find_groups([Path(w) for w in workdirs])
        config = config.replace(eval=eval_overrides) if eval_overrides else config
        restored = [_restore_params(group, config, info) for group in groups]
        steps_done = {group.path: step for group, (step, _) in zip(groups, restored)}
        if len(set(steps_done.values())) > 1:
            raise WorkdirError(f"the groups stopped at different steps {steps_done}: one is still "
                                  "training or was interrupted; finish it (re-run its command) first")
        parts = [params for _, params in restored]
        params = jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
        return cls(config, info, params, wd.read_label_counts(groups[0].path))

    def with_eval(self, **eval_overrides) -> "MachEnsemble":
        """The same members read out with other eval settings (e.g. ``eval_repetitions=r`` for
        the first r of them), from the parameters in memory rather than the checkpoint."""
        return MachEnsemble(self.config.replace(eval=eval_overrides), self.info, self.params,
                            self._label_counts, self.rep_ids)

    def _put(self, batch: input_pipeline.Batch) -> dict[str, jax.Array]:
        return mesh_lib.put(batch, mesh_lib.replicated(self.mesh))

    def _check_features(self, dataset_source: str, features: CsrMatrix) -> None:
        if features.num_cols != self.info.num_features:
            raise DataFormatError(dataset_source, 1, f"the data has D={features.num_cols} features, "
                                  f"the model was trained with D={self.info.num_features}")

    def _batch_shape(self, features: CsrMatrix, labels: CsrMatrix | None) -> input_pipeline.BatchShape:
        # Widths rounded up to a power of two: inputs of similar width reuse one compilation.
        widest = input_pipeline.widest_row(features)
        max_nnz = _next_power_of_two(widest)
        if self.config.data.max_nnz:
            max_nnz = min(max_nnz, self.config.data.max_nnz)
        max_labels = _next_power_of_two(input_pipeline.widest_row(labels)) if labels is not None else 1
        return input_pipeline.BatchShape(self.config.eval.eval_batch_size, max_nnz, max_labels)

    def _capped(self, features: CsrMatrix, source: str, width: int) -> CsrMatrix:
        return input_pipeline.cap_row_width(features, width, self.config.data.overflow,
                                            keep_largest=True, source=source, what="features")

    def predict(self, features: CsrMatrix, k: int = 5, source: str = "<features>",
                progress: bool = False, approx: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k classes of every row of a [N, D] CSR matrix.

        ``approx``: True for approximate decoding (``config.eval.top_buckets`` etc.), False for
        exact, None for ``config.eval.decoder``. Approximate decoding may return fewer than k
        classes for a point: the missing places have score -inf and id L.

        Returns:
          ``(scores, ids)``: float32 [N, k] and int32 [N, k], best first.
        """
        self._check_features(source, features)
        if features.num_rows == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
        shape = self._batch_shape(features, None)
        index, approx_settings = self._decoder(approx)
        dataset = XCDataset(self._capped(features, source, shape.max_nnz),
                            CsrMatrix(np.zeros(features.num_rows + 1, np.int64), np.zeros(0, np.int32),
                                      np.zeros(0, np.float32), self.info.num_labels), source)
        scores, ids = [], []
        for batch in tqdm(input_pipeline.eval_batches(dataset, shape), disable=not progress,
                          total=input_pipeline.num_batches(dataset.num_points, shape.batch_size),
                          desc="predict"):
            batch_scores, batch_ids = self._predict_step(self.params, self._put(batch), self.seeds, index,
                                                         k=k, approx=approx_settings)
            scores.append(batch_scores)
            ids.append(batch_ids)
        scores, ids = mesh_lib.fetch_replicated((scores, ids))
        return (np.concatenate(scores)[:dataset.num_points], np.concatenate(ids)[:dataset.num_points])

    def evaluate(self, dataset: XCDataset, progress: bool = True,
                 approx: bool | None = None) -> dict[str, float]:
        """P@k, nDCG@k and PSP@k (k = 1, 3, 5) of the ensemble on a labelled dataset.

        ``approx`` chooses the decoder as in ``predict``.
        """
        self._check_features(dataset.source, dataset.features)
        if dataset.num_labels != self.info.num_labels:
            raise DataFormatError(dataset.source, 1, f"the data has L={dataset.num_labels} labels, "
                                  f"the model was trained with L={self.info.num_labels}")
        if dataset.num_points == 0:
            raise DataFormatError(dataset.source, 1, "the header declares 0 points: nothing to evaluate")
        shape = self._batch_shape(dataset.features, dataset.labels)
        dataset = dataclasses.replace(dataset, features=self._capped(dataset.features, dataset.source,
                                                                     shape.max_nnz))
        index, approx_settings = self._decoder(approx)
        totals = None
        for batch in tqdm(input_pipeline.eval_batches(dataset, shape), disable=not progress,
                          total=input_pipeline.num_batches(dataset.num_points, shape.batch_size),
                          desc="evaluate"):
            sums = self._eval_step(self.params, self._put(batch), self.seeds, self.inv_propensity, index,
                                   approx=approx_settings)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        result = metrics.finalize(mesh_lib.fetch_replicated(totals))
        result["num_repetitions"] = int(jax.tree.leaves(self.params)[0].shape[0])
        result["aggregation"] = self.config.eval.aggregation
        result["decoder"] = "exact" if approx_settings is None else (
            f"approx (top_buckets={approx_settings.top_buckets}, min_votes={approx_settings.min_votes}, "
            f"bucket_cap={approx_settings.bucket_cap})")
        return result


def _next_power_of_two(width: int) -> int:
    return 1 << max(int(width) - 1, 0).bit_length()


def _restore_params(group: wd.Group, config: Config, info: wd.RunInfo) -> tuple[int, model.Params]:
    """``(step, parameters)`` of a group's newest checkpoint (no optimizer state), as host arrays."""
    manager = wd.checkpoint_manager(group.path, read_only=True)
    try:
        return _restore_from(manager, group, config, info)
    finally:
        manager.close()


def _restore_from(manager, group: wd.Group, config: Config, info: wd.RunInfo) -> tuple[int, model.Params]:
    step = manager.latest_step()
    if step is None:
        raise WorkdirError(f"{group.path}: no checkpoint found under {wd.CHECKPOINT_DIR}/")
    abstract = {"params": jax.eval_shape(functools.partial(
        model.init_params, config.model, info.num_features, jnp.asarray(group.rep_ids), 0))}
    args = ocp.args.PyTreeRestore(
        item=abstract, partial_restore=True,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract))
    params = wd.restore_checkpoint(manager, step, args)["params"]
    expected = jax.tree.map(lambda leaf: leaf.shape, abstract["params"])
    found = jax.tree.map(lambda leaf: leaf.shape, params)
    if found != expected:
        raise WorkdirError(
            f"{manager.directory}/{step}: the checkpoint cannot be restored for this config: its "
            f"parameter shapes {found} differ from {expected}; was config.json edited?")
    return step, params
