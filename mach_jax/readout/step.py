"""The pure read-out steps: top-k classes of a batch, and the metric sums of a labelled batch.

Both run the members' forward pass (``ensemble_spec.logits``), turn the logits into the bucket
scores that the count-min sketch aggregates (``decode.bucket_scores_to_probs``), and hand them to
a decoder (``decoders``). They are jitted once per ensemble by ``ensemble.MachEnsemble``.
"""

from __future__ import annotations

import jax

from mach_jax.core import model
from mach_jax.core.ensemble_spec import Batch, MemberSpec, Seeds, logits
from mach_jax.readout import decode, metrics
from mach_jax.readout.decoders import ApproxDecoder, ExactDecoder
from mach_jax.readout.rerank import Reranker


def predict_step(params: model.Params, batch: Batch, seeds: Seeds, decoder: ExactDecoder | ApproxDecoder,
                 reranker: Reranker | None = None, *, spec: MemberSpec, aggregation: str,
                 k: int, entries_cap: int = 0) -> tuple[jax.Array, jax.Array]:
    """Top-k classes of a batch. Returns ``(scores, ids)``, [N, k] each, best first.

    With a ``reranker`` the decoder hands over its K-class shortlist and the re-ranker picks the
    k best of it (``readout.rerank``). ``entries_cap``: T of the gathered bag (``ensemble_spec.logits``)."""
    scores = decode.bucket_scores_to_probs(logits(params, batch, seeds, spec, entries_cap), spec.loss_name,
                                           aggregation)
    if reranker is None:
        return decoder(scores, seeds["labels"], k)
    shortlist_scores, shortlist_ids = decoder(scores, seeds["labels"], reranker.shortlist_width(k))
    return reranker.rerank(batch, shortlist_scores, shortlist_ids, k, num_members=scores.shape[0],
                           aggregation=aggregation)


def eval_step(params: model.Params, batch: Batch, seeds: Seeds, inv_propensity: jax.Array,
              decoder: ExactDecoder | ApproxDecoder, reranker: Reranker | None = None, *, spec: MemberSpec,
              aggregation: str, k: int = max(metrics.KS), entries_cap: int = 0) -> dict[str, jax.Array]:
    """Metric sums of a batch's [N, k] top classes (see ``metrics.metric_sums``); the host adds and
    divides. ``k``: ``metrics.top_k(L)`` = min(5, L) (a data set with L < 5 has no P@5)."""
    _, topk_ids = predict_step(params, batch, seeds, decoder, reranker, spec=spec, aggregation=aggregation, k=k,
                               entries_cap=entries_cap)
    return metrics.metric_sums(topk_ids, batch["label_ids"], batch["label_mask"],
                               batch["point_mask"], inv_propensity)
