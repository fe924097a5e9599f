"""The ``rerank`` section: the optional shortlist re-ranker (``mach_jax.core.reranker``).

Off by default (``shortlist_size`` = 0). With K > 0, after the members are trained a second stage
trains one embedding per class, h = ``rerank_dim`` wide, on every training point's true classes
against the K-class shortlist of the count-min read-out plus ``sampled_negatives`` uniformly drawn
classes; at inference it re-scores the read-out's K best classes. How strongly the read-out's own
score counts in the final one is ``eval.rerank_mix``: with ``mix_holdout_frac`` > 0 it is chosen on
training points held out from the members and the re-ranker, and the members alone are kept where
no mix beats them there (``readout.rerank_mix``).
"""

from __future__ import annotations

import dataclasses

from mach_jax.config.sections import _require, may_change_on_resume

RERANK_UPDATES = ("dense", "lazy", "auto")


@dataclasses.dataclass(frozen=True)
class RerankConfig:
    """The re-ranker's shape and training (the second stage; the members are not changed by it).

    ``shortlist_size`` K: candidates re-scored per point (0: no re-ranker). ``rerank_dim`` h: the
    width of the class embeddings [L, h] and of the query. ``rerank_max_labels``: the true classes
    per training point it learns from (a point's labels after the first that many in the file
    are left out). ``mix_holdout_frac``: the share of the training points that neither the members
    nor the re-ranker train on, to choose the mix on (0: none held out; ``eval.rerank_mix`` or 1
    is used).
    ``rerank_update``: "dense" Adam on every weight each step, or "lazy": row-sparse Adam on the
    feature and class rows a step touches (``core.reranker_lazy``), for large D and L; "auto":
    lazy where a step touches at most a tenth of the D + L rows (``reranker_lazy.resolve_update``).
    ``max_epoch_work`` > 0: no re-ranker where (D + L)·N exceeds it (``config.sizing``): its
    dense Adam visits all D + L rows at each of an epoch's N / batch steps.
    Every field but ``mix_holdout_frac`` (which changes the members' training points) may change
    when the members' training is resumed; a re-ranker's own training resumes only with the
    settings it was started with.
    """

    shortlist_size: int = may_change_on_resume(0)
    rerank_dim: int = may_change_on_resume(256)
    rerank_epochs: int = may_change_on_resume(8)
    rerank_batch_size: int = may_change_on_resume(256)
    rerank_learning_rate: float = may_change_on_resume(3e-3)
    sampled_negatives: int = may_change_on_resume(1024)
    rerank_dropout: float = may_change_on_resume(0.5)
    rerank_max_labels: int = may_change_on_resume(32)
    mix_holdout_frac: float = 0.0  # the members train without these points: fixed for a run
    rerank_update: str = may_change_on_resume("dense")
    max_epoch_work: int = may_change_on_resume(0)

    @property
    def enabled(self) -> bool:
        return self.shortlist_size > 0

    def validate(self) -> None:
        _require(self.shortlist_size >= 0, "rerank.shortlist_size", self.shortlist_size,
                 "must be >= 0 (0: no re-ranker)")
        for name in ("rerank_dim", "rerank_epochs", "rerank_batch_size", "rerank_max_labels"):
            _require(getattr(self, name) >= 1, f"rerank.{name}", getattr(self, name), "must be >= 1")
        _require(self.max_epoch_work >= 0, "rerank.max_epoch_work", self.max_epoch_work, "must be >= 0 (0: no bound)")
        _require(self.sampled_negatives >= 0, "rerank.sampled_negatives", self.sampled_negatives, "must be >= 0")
        _require(0 < self.rerank_learning_rate < float("inf"), "rerank.rerank_learning_rate",
                 self.rerank_learning_rate, "must be > 0 and finite")
        _require(self.rerank_update in RERANK_UPDATES, "rerank.rerank_update", self.rerank_update,
                 f"must be one of {RERANK_UPDATES}")
        _require(0.0 <= self.mix_holdout_frac < 1.0, "rerank.mix_holdout_frac", self.mix_holdout_frac,
                 "must be in [0, 1)")
        _require(0.0 <= self.rerank_dropout < 1.0, "rerank.rerank_dropout", self.rerank_dropout,
                 "must be in [0, 1)")

    def training_fields(self) -> dict:
        """What a saved re-ranker must match to be resumed: every field but the sizing bound."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "max_epoch_work"}
