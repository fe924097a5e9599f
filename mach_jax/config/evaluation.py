"""The ``eval`` section: the count-min read-out, its decoders and the metrics' conventions."""

from __future__ import annotations

import dataclasses

from mach_jax.config.sections import _require, may_change_on_resume

AGGREGATIONS = ("prob", "logit", "log_prob")
DECODERS = ("exact", "approx")
RERANKER_USES = ("auto", "off")
# PSP@k's (A, B) in the Extreme Classification Repository's tools for data sets it names no other for.
DEFAULT_PROPENSITY = (0.55, 1.5)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Count-min read-out and metrics. ``eval_repetitions``: use the first r <= R members (None: all).

    ``decoder``: "exact" scores all L classes; "approx" only the classes in each member's
    ``top_buckets`` best buckets, keeping those in at least ``min_votes`` members' top buckets
    (relaxed to reach k) and at most ``bucket_cap`` classes per bucket (None: all); see
    ``mach_jax.readout.approx_decode``. ``reranker``: "auto" re-scores the shortlist with the
    workdir's re-ranker when it has one, "off" reads out the members alone; ``rerank_mix``: the
    weight of the read-out's log-score beside the re-ranker's (``readout.rerank``); None: the one
    chosen on the re-ranker's held-out points (``rerank.mix_holdout_frac``), else 1.
    ``propensity_a``, ``propensity_b``: A and B of PSP@k's propensity model; None: the
    repository's convention for the training data (``data.known_datasets``), resolved and
    stored when training starts (0.55 / 1.5 for data the registry does not know).
    """

    aggregation: str = may_change_on_resume("prob")
    eval_repetitions: int | None = may_change_on_resume(None)
    eval_batch_size: int = may_change_on_resume(256)
    class_chunk_size: int = may_change_on_resume(4_096)
    propensity_a: float | None = may_change_on_resume(None)
    propensity_b: float | None = may_change_on_resume(None)
    decoder: str = may_change_on_resume("exact")
    top_buckets: int = may_change_on_resume(4)
    min_votes: int = may_change_on_resume(1)
    bucket_cap: int | None = may_change_on_resume(None)
    reranker: str = may_change_on_resume("auto")
    rerank_mix: float | None = may_change_on_resume(None)

    def validate(self, num_repetitions: int | None = None) -> None:
        _require(self.aggregation in AGGREGATIONS, "eval.aggregation", self.aggregation,
                 f"must be one of {AGGREGATIONS}")
        _require(self.eval_repetitions is None or self.eval_repetitions >= 1, "eval.eval_repetitions",
                 self.eval_repetitions, "must be >= 1 or None")
        if num_repetitions is not None and self.eval_repetitions is not None:
            _require(self.eval_repetitions <= num_repetitions, "eval.eval_repetitions",
                     self.eval_repetitions, f"must be <= the trained R = {num_repetitions}")
        _require(self.eval_batch_size >= 1, "eval.eval_batch_size", self.eval_batch_size, "must be >= 1")
        _require(self.class_chunk_size >= 1, "eval.class_chunk_size", self.class_chunk_size, "must be >= 1")
        _require(self.decoder in DECODERS, "eval.decoder", self.decoder, f"must be one of {DECODERS}")
        _require(self.top_buckets >= 1, "eval.top_buckets", self.top_buckets, "must be >= 1")
        _require(self.min_votes >= 1, "eval.min_votes", self.min_votes, "must be >= 1")
        _require(self.bucket_cap is None or self.bucket_cap >= 1, "eval.bucket_cap", self.bucket_cap,
                 "must be >= 1 or None (no cap)")
        _require(self.reranker in RERANKER_USES, "eval.reranker", self.reranker, f"must be one of {RERANKER_USES}")
        _require(self.rerank_mix is None or 0 <= self.rerank_mix < float("inf"), "eval.rerank_mix", self.rerank_mix,
                 "must be >= 0 and finite, or None (the re-ranker's chosen mix)")
        for name, low in (("propensity_a", "> 0"), ("propensity_b", ">= 0")):
            value = getattr(self, name)
            fine = isinstance(value, (int, float)) and (value > 0 if low == "> 0" else value >= 0)
            _require(value is None or (fine and value < float("inf")), f"eval.{name}", value,
                     f"must be {low} and finite, or None (the dataset's convention)")

    def propensity(self) -> tuple[float, float]:
        """(A, B) of PSP@k: the fields, the repository's default where one is still None."""
        a, b = self.propensity_a, self.propensity_b
        return (DEFAULT_PROPENSITY[0] if a is None else a, DEFAULT_PROPENSITY[1] if b is None else b)
