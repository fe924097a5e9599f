"""The ``partition`` section: how classes map to each member's buckets (``core.label_partition``).

"hashed" (the default) is MACH's: class c of member r sits in bucket h_r(c), a murmurhash, for
the whole run. "learned" starts from the same hashes and re-assigns the classes every
``repartition_every_epochs`` epochs, up to the end of epoch ``repartition_last_epoch`` (0: the
one before the last), from the member's own predictions on the training points; the table
becomes part of the training state (int16 [R, L] where B <= 32,768: R x L x 2 bytes, 32 MB at
R = 16 and L = 10^6) and of every checkpoint and export.
"""

from __future__ import annotations

import dataclasses

from mach_jax.config.sections import _require, may_change_on_resume

LABEL_BUCKETS = ("hashed", "learned")


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """The class -> bucket map and, when learned, its re-assignments.

    ``bucket_choices`` K: how many of its best buckets a class may move to. ``bucket_load_cap``:
    the most classes a bucket takes, as a multiple of the mean L / B (>= 1). ``affinity_buckets``
    m: the buckets of each training point whose probabilities count (the affinity is kept sparse,
    O(nnz(Y) x m) entries, never [L, B]). Only ``label_buckets`` fixes the state's shape; the
    rest may change when a run is resumed.
    """

    label_buckets: str = "hashed"
    repartition_every_epochs: int = may_change_on_resume(1)
    repartition_last_epoch: int = may_change_on_resume(0)
    bucket_choices: int = may_change_on_resume(4)
    bucket_load_cap: float = may_change_on_resume(2.0)
    affinity_buckets: int = may_change_on_resume(32)

    @property
    def learned(self) -> bool:
        return self.label_buckets == "learned"

    def last_epoch(self, epochs: int) -> int:
        """The last epoch whose end re-assigns the classes (``repartition_last_epoch``, 0: epochs - 1)."""
        return self.repartition_last_epoch or epochs - 1

    def validate(self) -> None:
        _require(self.label_buckets in LABEL_BUCKETS, "partition.label_buckets", self.label_buckets,
                 f"must be one of {LABEL_BUCKETS}")
        for name in ("repartition_every_epochs", "bucket_choices", "affinity_buckets"):
            _require(getattr(self, name) >= 1, f"partition.{name}", getattr(self, name), "must be >= 1")
        _require(self.repartition_last_epoch >= 0, "partition.repartition_last_epoch",
                 self.repartition_last_epoch, "must be >= 0 (0: the epoch before the last)")
        _require(1.0 <= self.bucket_load_cap < float("inf"), "partition.bucket_load_cap", self.bucket_load_cap,
                 "must be >= 1 and finite (the B buckets must hold all L classes)")
