"""Backend-specific performance choices, in one place.

Every threshold that picks one implementation over another was measured on one backend; this
module names each, with the backend it was measured on and how, so that other backends can get
their own numbers without touching the model or the training step. A backend with no
measurement of its own uses the CPU's figures.
"""

from __future__ import annotations

import jax

# A member's embedding bag runs as a dense [N, D] x [D, H] matmul when D <= this ratio times the
# mean training row's nonzeros; otherwise it gathers the rows of the batch's T nonzero entries
# (``training.step``, T capped by ``lazy_caps.batch_caps``). CPU (2-core AMD EPYC, real data, the
# presets' R = 32, H = 256, N = 128, dense Adam; step times of both forms alternated twice while
# another job ran): corel5k (D = 499, mean 8.2, D / mean = 61): the gathered bag 1.3-1.45x as
# fast; bibtex (D = 1,836, mean 68.5, D / mean = 27): equal within the noise (252-289 ms against
# 256-302 ms).
_DENSE_INPUT_RATIO = {"cpu": 28}

# Row-sparse ("lazy") embedding updates pay off when the table has at least this many times the
# nonzero entries a typical batch holds (N times the mean row's nonzeros): what a batch touches,
# where the padded width K of the widest row is what it could touch. CPU (``scripts/bench.py
# --only train``, N = 256, mean row 73 nonzeros, N x mean = 18,700): dense/lazy step time was
# 0.95x at D = 30,000 and 2.15x at D = 100,000, equal near D = 33,000 = 1.75 N x mean, since a
# gathered row costs several streamed ones.
_LAZY_MIN_RATIO = {"cpu": 1.75}


def current_backend() -> str:
    """The default JAX backend's platform name: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def _measured(table: dict[str, float], backend: str | None) -> float:
    return table.get(backend or current_backend(), table["cpu"])


def dense_input_pays_off(num_rows: int, mean_nnz: float | None, max_nnz: int,
                         backend: str | None = None) -> bool:
    """Whether a [num_rows, H] table's bag is faster as a dense matmul than as a row gather, for
    training rows of ``mean_nnz`` nonzeros on average (None: unknown, the widest row's ``max_nnz``
    stands for it)."""
    return num_rows <= _measured(_DENSE_INPUT_RATIO, backend) * (max_nnz if mean_nnz is None else mean_nnz)


def lazy_update_pays_off(num_rows: int, batch_size: int, mean_nnz: float | None, max_nnz: int,
                         backend: str | None = None) -> bool:
    """Whether row-sparse updates of a [num_rows, H] table beat dense Adam for batches of N =
    ``batch_size`` rows of ``mean_nnz`` nonzeros on average (None: unknown, the widest row's
    ``max_nnz`` stands for it)."""
    typical = max_nnz if mean_nnz is None else mean_nnz
    return num_rows >= _measured(_LAZY_MIN_RATIO, backend) * batch_size * typical


# Grain's 2 threads built batches of 1,024 Amazon-670K-shaped rows 1.41-1.53x as fast as our one
# prefetch thread on a quiet 2-core CPU host, and 0.86-1.03x as fast while the cores were busy,
# as they are when the CPU itself trains (docs/host_loader.md). So Grain pays off where an
# accelerator leaves the host's cores free; measured on the CPU host only.
_GRAIN_PAYS_OFF = {"cpu": False, "gpu": True, "tpu": True}


def grain_pays_off(backend: str | None = None) -> bool:
    """Whether ``data.host_loader="auto"`` should build the host batches with Grain."""
    return _GRAIN_PAYS_OFF.get(backend or current_backend(), False)


def default_steps_per_call(backend: str | None = None) -> int:
    """S of ``train.steps_per_call=0``: train steps per jitted call with device-resident data.

    CPU, measured (tiny preset, 400 steps, median over 18 windows of 64 steps on a busy 2-core
    host): 1,107 steps/s at S = 8, 1,019 at S = 32, 692 at S = 1, 1,043 on host batches; the CPU
    step is compute-bound, so 8 is as good as more. GPU and TPU: reasoned, not measured: a call
    costs the host some 50-100 us to dispatch, about a small model's step on device, so 16 steps
    a call hide the host while calls still end often (at most ``train.log_every_steps`` steps).
    """
    return {"cpu": 8}.get(backend or current_backend(), 16)


# How the loops over the R members compile (``model.kernel_forms``): "loop" runs them member by
# member (``lax.map`` / ``lax.fori_loop``: the embedding bag, the lazy updates, the decoders'
# take-and-sum), "batched" as one batched kernel over all R (``jax.vmap`` / advanced indexing).
# CPU (2-core EPYC, shared; ``scripts/bench.py --only train`` and ``--only decode``, cpu preset;
# the read-out's logits at the same sizes timed alone): the loop forms were faster where it
# counts: the lazy Adam step 2.2x, the row-wise Adagrad step 1.9x, the read-out's bag 1.8x and
# the exact decoder about 20x (XLA's CPU gather and reduce over [R, C, N] are slow where the
# loop's row gathers are memcpys). The one exception: the step with dense Adam updates was 1.2x
# faster batched at D = 100,000 (the gradient of the per-member bag scan costs more than one
# batched scatter), and no faster on the bibtex preset's dense input (2 epochs: 54-60 s either
# way); CPU runs of large D train lazily ("auto"), so the loop is kept.
# GPU and TPU: batched, a reasoned choice, not a measurement (nothing has been measured on an
# accelerator yet): a loop over R costs R rounds of small kernel launches and a while loop's
# control flow, where the batched form is one fused gather or scatter over all R members.
_BATCHED_FORMS = {"cpu": False, "gpu": True, "tpu": True}


def batched_forms(kernel_forms: str = "auto", backend: str | None = None) -> bool:
    """Whether the members' loops compile batched over R (True) or member by member (False).

    Args:
      kernel_forms: ``model.kernel_forms``: "loop", "batched", or "auto" (per backend, above).
      backend: the platform to resolve "auto" for (default: the current one).
    """
    if kernel_forms != "auto":
        return kernel_forms == "batched"
    return _BATCHED_FORMS.get(backend or current_backend(), False)


def describe_forms(batched: bool) -> str:
    """'batched' or 'loop': the kernel forms' name in logs and benchmark records."""
    return "batched" if batched else "loop"
