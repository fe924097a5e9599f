"""The compiled side of training: mesh, shardings, seeds, and the one jitted step for all R members.

``build_program(config, info, train_data)`` is built once per run (and by the benchmarks): the
state is created directly with its shardings (``jax.jit(init, out_shardings=...)``), and the
step is jitted once with donation and explicit in/out shardings, shared with any earlier run of
the process that had the same spec (``core.compiled``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.config import Config
from mach_jax.core import hashing, mesh as mesh_lib, model
from mach_jax.core.compiled import shared_jit
from mach_jax.core.ensemble_spec import member_seeds
from mach_jax.data.csr import XCDataset
from mach_jax.data.prepare import RunInfo
from mach_jax.training import lazy_caps, optimizer, step
from mach_jax.training.optimizer import State
from mach_jax.training.spec import StepSpec, step_spec


@dataclasses.dataclass(frozen=True)
class TrainingProgram:
    """Everything a training loop (or a benchmark) needs, built once per config and data.

    Attributes:
      mesh: the (reps, data) device mesh.
      rep_ids: the repetition ids of the R members trained here.
      abstract_state: the state's shapes, dtypes and shardings (for restoring checkpoints).
      create_state: () -> a freshly initialised state, created directly with its shardings.
      train_step: the jitted, donating ``step.train_step``: (state, batch, seeds) -> (state, metrics).
      batch_caps: (U, T) the step is compiled for (the lazy step, or a gathered bag's: see
        ``spec.StepSpec``), or None (the dense-matmul bag: nothing to cap).
      uncapped_train_step: the step for a batch past ``batch_caps`` (compiled if one comes).
      batch_sharding: where a host batch goes (split over ``data``, replicated over ``reps``).
      seeds: the members' hash seeds on device, uint32 [R] each.
      spec: the static side of the step (graphdef, loss, B, lazy embedding update, ...).
    """

    mesh: Any
    rep_ids: tuple[int, ...]
    abstract_state: Any
    create_state: Callable[[], State]
    train_step: Callable
    batch_sharding: Any
    seeds: dict[str, jax.Array]
    spec: StepSpec
    batch_caps: tuple[int, int] | None = None
    uncapped_train_step: Callable | None = None


def build_program(config: Config, info: RunInfo, train_data: XCDataset | None = None) -> TrainingProgram:
    """Builds the mesh, shardings, hash seeds and the one jitted step for all R members.

    With ``train_data`` (as prepared by ``prepare_train_data``) a gathered embedding bag and a
    lazy embedding update work on capped batch sizes measured from it (``lazy_caps.batch_caps``).
    """
    rep_ids = config.parallel.rep_ids(config.model.num_repetitions)
    mesh = mesh_lib.make_mesh(len(rep_ids), config.parallel.rep_devices, config.parallel.data_devices)
    spec = uncapped_spec = step_spec(config, info, mesh)
    caps = None
    if train_data is not None and (spec.lazy_embedding or not spec.member.dense_input):
        caps = lazy_caps.batch_caps(train_data.features, config.train.batch_size, config.train.seed)
        if not spec.lazy_embedding:  # the gathered bag is capped by T only: no batch is past U = N K
            caps = (config.train.batch_size * info.max_nnz, caps[1])
        spec = dataclasses.replace(spec, touched_rows_cap=caps[0], entries_cap=caps[1])
    init_bound = dict(config=config, num_features=info.num_features, rep_ids=rep_ids, spec=spec, mesh=mesh,
                      num_labels=info.num_labels if config.partition.learned else 0)
    abstract_state = _state_shapes(**init_bound)
    state_shardings = mesh_lib.tree_shardings(abstract_state, mesh)
    seeds = member_seeds(config, rep_ids, mesh)
    # Shared with earlier runs of this process that had the same spec and shardings (compiled.py).
    jit_step = functools.partial(
        shared_jit, step.train_step,
        in_shardings=(state_shardings, mesh_lib.batched(mesh), mesh_lib.tree_shardings(seeds, mesh)),
        out_shardings=(state_shardings, {"member_loss": mesh_lib.stacked(mesh)}), donate_argnums=0)
    train_step = jit_step({"spec": spec})
    return TrainingProgram(
        mesh=mesh,
        rep_ids=rep_ids,
        abstract_state=jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, state_shardings),
        create_state=shared_jit(_init_state, init_bound, out_shardings=state_shardings),
        train_step=train_step,
        batch_sharding=mesh_lib.batched(mesh),
        seeds=seeds,
        spec=spec,
        batch_caps=caps,
        uncapped_train_step=jit_step({"spec": uncapped_spec}) if caps else None)


@functools.lru_cache(maxsize=32)  # tracing the state's construction costs more than a small run
def _state_shapes(**init_bound) -> State:
    """The state's shapes and dtypes (``_init_state``'s), nothing allocated."""
    return jax.eval_shape(functools.partial(_init_state, **init_bound))


def _init_state(*, config: Config, num_features: int, rep_ids: tuple[int, ...],
                spec: StepSpec, mesh, num_labels: int) -> State:
    """Step 0: the members drawn, the moments at zero; with learned partitions (``num_labels`` L
    > 0) the class -> bucket table [R, L] starts as the members' hashes."""
    # Member by member on each device: XLA's temporaries hold one member's draws, not R's.
    params = model.init_params_by_member(config.model, num_features, jnp.asarray(rep_ids, jnp.int32),
                                         config.train.seed, mesh)
    state = optimizer.create_state(params, spec)
    if num_labels:
        seeds = hashing.repetition_seeds(config.model.label_hash_seed, np.asarray(rep_ids))
        state["label_table"] = hashing.hashed_table(jnp.asarray(seeds), num_labels, config.model.num_buckets, xp=jnp)
    return state
