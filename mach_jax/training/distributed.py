"""Multi-process (multi-host) runs through JAX's own distributed runtime.

One ensemble can span the devices of several processes: every process runs the same command
with ``--num-processes N --process-id I --coordinator-address HOST:PORT`` (or ``--distributed``
where JAX detects the cluster itself: Cloud TPU pods, SLURM, Open MPI, Kubernetes; the flags are
``mach_jax.train``'s, which calls ``initialize``). The mesh then
covers every process's devices; members are split over them and train with no communication.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger("mach_jax")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts JAX's distributed runtime; must run before any JAX computation.

    On CPU the cross-process collectives (used only by evaluation's take-and-sum over R and by
    checkpoint barriers) go through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    log.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
