"""Re-scoring the read-out's shortlist with the re-ranker (``core.reranker``), and loading one.

The final score of a shortlisted class c of point x is a product of two experts:

    log_softmax over the shortlist of s(x, .) at c   +   mix * log P_mach(c | x),

where log P_mach is the read-out's own log-score: ``log(mean_r P_r)`` for ``aggregation="prob"``
(the count-min estimate), the mean over R of the summed scores otherwise (mean log P_r, or the
mean logit, which for a softmax member is log P_r up to a constant per point). ``mix`` = 0 ranks
by the re-ranker alone within the shortlist; a large ``mix`` keeps the read-out's order. The
mix may be chosen on held-out training points when the re-ranker is trained (``readout.rerank_mix``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding

from mach_jax.core import mesh as mesh_lib
from mach_jax.core import reranker
from mach_jax.errors import WorkdirError
from mach_jax.storage import checkpoints, rerank_store

log = logging.getLogger("mach_jax")
DEFAULT_MIX = 1.0  # where neither the config nor the re-ranker's record gives one


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["shortlist_size", "mix", "num_labels"])
@dataclasses.dataclass(frozen=True)
class Reranker:
    """A trained re-ranker with its read-out settings. ``params``: ``reranker.RerankParams``
    (class rows sharded over the devices); ``shortlist_size``: K; ``mix``: see the module."""

    params: reranker.RerankParams
    shortlist_size: int
    mix: float
    num_labels: int

    def shortlist_width(self, k: int) -> int:
        """How many classes the decoder hands over: K, at least k, at most L."""
        if k > self.num_labels:
            raise ValueError(f"top-k of k={k} asked for, but there are only L={self.num_labels} classes")
        return min(max(self.shortlist_size, k), self.num_labels)

    def rerank(self, batch: dict[str, jax.Array], shortlist_scores: jax.Array, shortlist_ids: jax.Array,
               k: int, *, num_members: int, aggregation: str) -> tuple[jax.Array, jax.Array]:
        """The k best of the shortlist by the mixed score.

        Args:
          batch: ``feat_ids``, ``feat_vals`` [N, K_nnz], transformed as the members saw them.
          shortlist_scores, shortlist_ids: [N, K] from the decoder (-inf / L in empty slots).
          k: classes to return; num_members: R read out; aggregation: ``eval.aggregation``.

        Returns:
          ``(scores, ids)``: [N, k] each, best first (-inf / L where the shortlist was empty).
        """
        present = jnp.isfinite(shortlist_scores) & (shortlist_ids < self.num_labels)
        mach = mach_log_score(shortlist_scores, num_members, aggregation)
        mixed = shortlist_log_softmax(self.params, batch, shortlist_ids, present) + self.mix * mach
        mixed = jnp.where(present, mixed, -jnp.inf)
        scores, positions = lax.top_k(mixed, k)
        return scores, jnp.take_along_axis(shortlist_ids, positions, axis=1)


def shortlist_log_softmax(params: reranker.RerankParams, batch: dict[str, jax.Array], shortlist_ids: jax.Array,
                          present: jax.Array) -> jax.Array:
    """The re-ranker's log-softmax over each point's shortlist: [N, K] from ``feat_ids``,
    ``feat_vals`` [N, K_nnz] and ``shortlist_ids`` [N, K]; slots not ``present`` (bool [N, K])
    take no share (their own values are -inf, or 0 throughout a row with none present)."""
    q = reranker.query(params, batch["feat_ids"], batch["feat_vals"])
    own = jnp.where(present, reranker.candidate_scores(params, q, shortlist_ids), -jnp.inf)
    own = jnp.where(present.any(axis=1, keepdims=True), own, 0.0)  # an empty row: no NaN
    return jax.nn.log_softmax(own, axis=1)


def mach_log_score(summed: jax.Array, num_members: int, aggregation: str) -> jax.Array:
    """The read-out's log-score from its summed scores over R members (see the module)."""
    if aggregation == "prob":
        return jnp.log(jnp.maximum(summed / num_members, jnp.finfo(summed.dtype).tiny))
    return summed / num_members


def param_shardings(params: reranker.RerankParams, mesh) -> dict[str, NamedSharding]:
    rows = reranker.class_row_sharding(mesh)
    return {name: rows if name.startswith("class_") else mesh_lib.replicated(mesh) for name in params}


def placed(reranker_: Reranker, mesh) -> Reranker:
    """The same re-ranker with its parameters laid out on ``mesh`` (see ``param_shardings``)."""
    shardings = param_shardings(reranker_.params, mesh)
    return dataclasses.replace(reranker_, params={name: jax.device_put(value, shardings[name])
                                                  for name, value in reranker_.params.items()})


def load_reranker(workdir: Path, num_features: int, num_labels: int, mix: float | None) -> Reranker | None:
    """The re-ranker saved in ``workdir/rerank/`` as host arrays (None when there is none or its
    training has not finished).

    ``mix`` None: the mix chosen on its held-out points (``readout.rerank_mix``), 1 where none was
    chosen; None is returned, with a line in the log, where the members alone were chosen.

    Raises:
      WorkdirError: its saved record does not fit this ensemble (D or L differ).
    """
    record = rerank_store.read_record(workdir)
    if record is None or not record.get("finished"):
        return None
    if (record["num_features"], record["num_labels"]) != (num_features, num_labels):
        raise WorkdirError(f"{rerank_store.record_path(workdir)}: the re-ranker was trained for D="
                           f"{record['num_features']}, L={record['num_labels']}; this ensemble has "
                           f"D={num_features}, L={num_labels}")
    if mix is None:
        chosen = recorded_mix(workdir, record)
        if chosen is None:
            log.info(f"{rerank_store.rerank_dir(workdir)}: the members alone did best on the re-ranker's "
                     f"{record['mix_choice'].get('num_points')} held-out training points; reading out without it "
                     "(--rerank-mix M uses it anyway)")
            return None
        mix = chosen
    settings = record["settings"]
    abstract = jax.eval_shape(functools.partial(reranker.init_params, num_features=num_features,
                                                num_labels=num_labels, dim=settings["rerank_dim"]),
                              jax.random.key(0))
    _, params, _ = checkpoints.restore_params(rerank_store.rerank_dir(workdir), abstract)
    return Reranker(params, settings["shortlist_size"], mix, num_labels)


def recorded_mix(workdir: Path, record: dict) -> float | None:
    """The mix chosen on held-out points, as the record keeps it (``readout.rerank_mix``):
    a number >= 0, None for the members alone; ``DEFAULT_MIX`` where no choice was made.

    Raises:
      WorkdirError: the record's choice is not one of those (a damaged or hand-edited file).
    """
    if "mix_choice" not in record:
        return DEFAULT_MIX
    chosen = record["mix_choice"]
    value = chosen.get("mix", DEFAULT_MIX) if isinstance(chosen, dict) else chosen
    if value is None and isinstance(chosen, dict):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    raise WorkdirError(f"{rerank_store.record_path(workdir)}: mix_choice holds {chosen!r}, not a chosen mix "
                       f"(a number >= 0, or null for the members alone); pass --rerank-mix M, or delete "
                       f"{rerank_store.rerank_dir(workdir)} to train the re-ranker again")
