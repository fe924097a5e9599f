"""Decoders: one object with one call, ``decoder(bucket_scores, label_map, k) -> (scores, ids)``.

``ExactDecoder`` scores all L classes (``decode.decode_topk``); ``ApproxDecoder`` only the
classes in each member's top buckets (``approx_decode.approx_decode_topk``). Both are pytrees
(their settings are static, the approximate decoder's inverse index is data), so a jitted
read-out takes either as an argument and compiles once per decoder kind and settings. A new
decoder is a class here with the same call and ``describe()``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from mach_jax.config import Config
from mach_jax.core import backend
from mach_jax.core import mesh as mesh_lib
from mach_jax.readout import approx_decode, decode


@functools.partial(jax.tree_util.register_dataclass, data_fields=[],
                   meta_fields=["num_labels", "chunk_size", "batched"])
@dataclasses.dataclass(frozen=True)
class ExactDecoder:
    """Every class scored by the take-and-sum, C classes per scan step; ``batched``: its kernel
    form, one gather over all R (True) or a loop over R (False, ``backend.batched_forms``)."""

    num_labels: int
    chunk_size: int
    batched: bool = False

    def __call__(self, bucket_scores: jax.Array, label_map: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """Args: bucket_scores [R, N, B]; label_map: hash seeds uint32 [R] or a learned table [R, L]
        (``hashing.class_buckets``). Returns: [N, k] scores, ids."""
        return decode.decode_topk(bucket_scores, label_map, self.num_labels, k, self.chunk_size, self.batched)

    def describe(self) -> str:
        return "exact"


@functools.partial(jax.tree_util.register_dataclass, data_fields=["index"],
                   meta_fields=["top_buckets", "bucket_cap", "min_votes", "batched"])
@dataclasses.dataclass(frozen=True)
class ApproxDecoder:
    """Only the candidates of each member's m top buckets scored (see ``approx_decode``).

    Attributes:
      index: the members' inverse index (``approx_decode.build_inverse_index``), on device.
      top_buckets: m; bucket_cap: candidate slots per top bucket; min_votes: see ``approx_decode``.
      batched: the kernel form of the take-and-sum over R (``backend.batched_forms``).
    """

    index: approx_decode.InverseIndex
    top_buckets: int
    bucket_cap: int
    min_votes: int = 1
    batched: bool = False

    def __call__(self, bucket_scores: jax.Array, label_map: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """Args: bucket_scores [R, N, B]; label_map uint32 [R] or [R, L]. Returns: [N, k] scores, ids
        (a point with fewer than k candidates gets score -inf and id L in the missing places)."""
        return approx_decode.approx_decode_topk(bucket_scores, label_map, self.index, k=k,
                                                top_buckets=self.top_buckets, bucket_cap=self.bucket_cap,
                                                min_votes=self.min_votes, batched=self.batched)

    def describe(self) -> str:
        return (f"approx (top_buckets={self.top_buckets}, min_votes={self.min_votes}, "
                f"bucket_cap={self.bucket_cap})")


def build_approx_decoder(config: Config, label_map: np.ndarray, num_labels: int,
                         label_counts: np.ndarray, mesh) -> ApproxDecoder:
    """The approximate decoder of these members: their inverse index (int32 [R, L] classes plus
    [R, B + 1] offsets) built from their class -> bucket map (hash seeds [R] or a learned table
    [R, L], on the host), sharded over the members like the parameters, ``config.eval``'s
    settings and the backend's kernel form (``model.kernel_forms``)."""
    settings = config.eval
    index, shape = approx_decode.build_inverse_index(label_map, num_labels, config.model.num_buckets,
                                                     label_counts, settings.bucket_cap)
    rank = index.pop("rank", None)
    index = mesh_lib.put(index, mesh_lib.stacked(mesh))
    if rank is not None:
        index["rank"] = mesh_lib.put(rank, mesh_lib.replicated(mesh))
    top_buckets = min(settings.top_buckets, config.model.num_buckets)
    return ApproxDecoder(index, top_buckets, shape.bucket_cap, settings.min_votes,
                         backend.batched_forms(config.model.kernel_forms))
