"""The memory check of ``evaluate`` and ``predict``: a trained ensemble read out on new data.

Training checks its own evaluation data (``resource_check.require_fits``); a later ``evaluate
--test FILE`` or ``predict --input FILE`` may bring wider rows. Evaluation batches are padded to
the next power of two of the widest row (``readout.ensemble``), so one very wide point decides
every batch's size: refused here, in one line, before a batch is built, with the
``--eval-batch-size`` that fits.
"""

from __future__ import annotations

from mach_jax.config import Config
from mach_jax.data import batches
from mach_jax.data.csr import CsrMatrix
from mach_jax.data.prepare import RunInfo
from mach_jax.errors import ResourceError
from mach_jax.training import resources
from mach_jax.training.resource_check import FIT_FRACTION, Budget, _largest, _usage, memory_budget
from mach_jax.training.resources import Estimate, RunShape, format_bytes


def evaluation_shape(info: RunInfo, features: CsrMatrix, labels: CsrMatrix | None) -> RunShape:
    """The ``RunShape`` a read-out of these rows (features [N, D], labels [N, L] or None) depends on."""
    widths = features.row_nnz()
    return RunShape(num_features=info.num_features, num_labels=info.num_labels,
                    num_train_points=info.num_train_points, widest_features=info.max_nnz,
                    widest_labels=info.max_labels, widest_features_row=0,
                    eval_widest_features=int(widths.max(initial=0)),
                    eval_widest_labels=batches.widest_row(labels) if labels is not None else 1,
                    eval_widest_features_row=int(widths.argmax()) if widths.size else 0, train_bytes=0,
                    feature_entries=info.feature_entries)


def evaluation_estimate(config: Config, shape: RunShape, members: int) -> Estimate:
    """The read-out's peak beside the loaded ensemble: one batch of the widest rows of ``shape``,
    its activations, the decoder's buffers, the [L] arrays."""
    parts = resources._evaluation_parts(config, shape, members) + resources._label_parts(config, shape)
    return Estimate("evaluation", tuple(parts))


def require_evaluation_fits(config: Config, info: RunInfo, members: int, features: CsrMatrix,
                            labels: CsrMatrix | None, source: str, budget: Budget | None = None) -> None:
    """Refuses (ResourceError) reading out ``members`` members on these rows when it would not fit
    in the memory free now (the ensemble's parameters are already loaded, so already counted)."""
    budget = budget or memory_budget()
    shape = evaluation_shape(info, features, labels)

    def need(batch_size: int) -> int:
        estimate = evaluation_estimate(config.replace(eval={"eval_batch_size": batch_size}), shape, members)
        return _usage(estimate, budget)[0]

    peak, free, where = _usage(evaluation_estimate(config, shape, members), budget)
    if peak <= FIT_FRACTION * free:
        return
    fitting = _largest(lambda size: need(size) <= FIT_FRACTION * free, 1, config.eval.eval_batch_size)
    remedy = (f"it fits with --eval-batch-size {fitting}" if fitting else
              "no batch size fits: give the points fewer features (a training run's --max-nnz caps them)")
    raise ResourceError(f"not enough memory to read out {source}: about "
                        f"{format_bytes(peak)} at its peak, but {where} has "
                        f"{format_bytes(free)} free; its widest point has {shape.eval_widest_features:,} "
                        f"features (every batch is padded to it); {remedy}")

