"""Jitted steps shared by every run and read-out of one process that has the same static side.

``jax.jit`` caches what it traced, lowered and compiled on the function object it wraps. A run
that wraps its step afresh (``jax.jit(functools.partial(train_step, spec=spec))``) therefore
traces, lowers and compiles it again, even when an earlier run in the same process (a notebook's
second ``train_and_evaluate``, a sweep, ``MachEnsemble.load`` after training) compiled the very
same program. ``shared_jit`` returns one jitted function per (function, bound static arguments,
jit options), so the second run reuses the first's executables.

The static arguments are the frozen specs the steps read (``StepSpec``, ``MemberSpec``, ...):
equal specs trace to the same program, so sharing changes nothing but the time.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable

import jax

# About ten per configuration (init, step, uncapped step, multi-step calls, predict, eval, re-ranker):
# three or so configurations. The least recently used is dropped past it, with its executables (one
# per input shape it met); jax.clear_caches() frees every executable.
MAX_SHARED = 32

_shared: collections.OrderedDict[Any, Callable] = collections.OrderedDict()
_lock = threading.Lock()


def shared_jit(fun: Callable, bound: dict[str, Any], **jit_options: Any) -> Callable:
    """``jax.jit(functools.partial(fun, **bound), **jit_options)``, made once per process for
    equal arguments.

    Args:
      fun: a module-level function (compared by identity).
      bound: keyword arguments bound into ``fun``: hashable values compared by equality (frozen
        dataclasses, numbers, strings, tuples).
      jit_options: ``jax.jit``'s keyword options; pytrees (of shardings, say) are compared leaf
        by leaf.

    Returns:
      The jitted function, shared with every earlier call that had equal arguments.
    """
    key = (fun, _frozen(bound), _frozen(jit_options))
    with _lock:
        if key in _shared:
            _shared.move_to_end(key)
            return _shared[key]
        jitted = jax.jit(functools.partial(fun, **bound), **jit_options)
        _shared[key] = jitted
        if len(_shared) > MAX_SHARED:
            _shared.popitem(last=False)
        return jitted


def _frozen(tree: Any) -> tuple:
    """A hashable stand-in for a pytree: its structure and its leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(leaves)
