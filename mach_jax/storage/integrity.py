"""Content checks: digests of a state's arrays and the fingerprint of the training data.

A digest is two 32-bit sums over an array's words (the bytes read as uint32, each weighed by its
position): ``sum(w_i * (2i + 1))``, which any change of one word alters, and ``sum(fmix(w_i ^
i * golden))``, a mixed sum against changes that cancel in the first. Sums mod 2**32 do not depend
on the order they are added in, so the same digest comes from the device (one jitted pass over
the sharded state when a checkpoint is saved: no copy to the host) and from numpy (restored host
arrays, a block at a time). It is a check against damage, not against an adversary.

The data fingerprint is a sha256 of the training set's CSR arrays: a resumed run must train on
the same points, not only on data of the same shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax.data.csr import XCDataset

_GOLDEN = 0x9E3779B9
_BLOCK = 1 << 22  # words per host block: 16 MiB of uint32 at a time
_DEVICE_BLOCK = 1 << 22  # words per slab of a device leaf (``_leaf_sums``)


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """What one array holds: its digest (16 hex digits) and whether its values are all finite."""

    digest: str
    finite: bool


def leaf_name(path: tuple) -> str:
    """A pytree path as ``params/output/kernel``: the same for a dict, a namedtuple or a list."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def check_tree(tree: Any) -> dict[str, LeafCheck]:
    """``{leaf name: LeafCheck}`` of every array in ``tree``: on device for jax arrays (one
    jitted pass), with numpy for host arrays. Both give the same digests."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if leaves and all(isinstance(leaf, np.ndarray) for _, leaf in leaves):
        return {leaf_name(path): _host_check(leaf) for path, leaf in leaves}
    named = {leaf_name(path): leaf for path, leaf in leaves}
    sums = jax.device_get(_device_sums(named))
    return {name: LeafCheck(_hex(int(h1), int(h2)), bool(finite)) for name, (h1, h2, finite) in sums.items()}


def _hex(h1: int, h2: int) -> str:
    return f"{h1 & 0xFFFFFFFF:08x}{h2 & 0xFFFFFFFF:08x}"


@jax.jit
def _device_sums(named: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """uint32 [3] per leaf: the two sums and 1 when every value is finite."""
    out = {}
    for name, leaf in named.items():
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[name] = _leaf_sums(leaf)
    return out


def _leaf_sums(leaf: jax.Array) -> jax.Array:
    """uint32 [3] of one leaf, a slab of at most ``_DEVICE_BLOCK`` words at a time.

    XLA's CPU backend does not fuse the words' products into the sums (it rewrites a large
    reduction into a tree of reduce-windows), so a whole leaf at once holds three leaf-sized
    temporaries, and the one jitted pass over the state holds those of every leaf: 2.5 GiB for a
    1.1 GiB state. Slabs are cut along axis 1, never the leading R axis, which the mesh may split.
    """
    shape = jax.eval_shape(_device_words, leaf).shape
    size = math.prod(shape)
    if leaf.ndim < 2 or size <= _DEVICE_BLOCK:
        return _slab_sums(leaf, shape, 0)
    rows = max(1, _DEVICE_BLOCK // (size // shape[1]))  # the slab's extent along axis 1
    full, rest = divmod(shape[1], rows)

    def add_slab(i, sums):
        start = i * rows
        return _combine(sums, _slab_sums(jax.lax.dynamic_slice_in_dim(leaf, start, rows, axis=1), shape, start))

    sums = jax.lax.fori_loop(0, full, add_slab, jnp.array([0, 0, 1], jnp.uint32))
    if rest:
        sums = _combine(sums, _slab_sums(jax.lax.slice_in_dim(leaf, full * rows, None, axis=1), shape, full * rows))
    return sums


def _combine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Two slabs' [h1, h2, finite] as one: the sums added (mod 2**32), finite where both are."""
    return jnp.stack([a[0] + b[0], a[1] + b[1], a[2] & b[2]])


def _slab_sums(values: jax.Array, leaf_shape: tuple[int, ...], start) -> jax.Array:
    """[h1, h2, finite] of a slab of a leaf, starting at ``start`` along axis 1 (0: the whole
    leaf); ``leaf_shape`` is the whole leaf's words' shape. Each word is weighed by its row-major
    position in the whole leaf (mod 2**32)."""
    words = _device_words(values)  # of the slab only: the bitcast is a copy on the CPU
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the row-major position, without a reshape
        coordinate = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        if axis == 1:
            coordinate = coordinate + jnp.asarray(start, jnp.uint32)
        index = index + coordinate * jnp.uint32(stride % 2**32)
        stride *= leaf_shape[axis]
    h1 = jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    h2 = jnp.sum(_fmix(words ^ (index * jnp.uint32(_GOLDEN))), dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(values)) if jnp.issubdtype(values.dtype, jnp.inexact) else True
    return jnp.stack([h1, h2, jnp.asarray(finite, jnp.uint32)])


def _device_words(leaf: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words, shape kept (8-byte items: a trailing axis of 2)."""
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    size = leaf.dtype.itemsize
    if size == 4 or size == 8:
        return jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    return jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)


def _host_words(leaf: np.ndarray) -> np.ndarray:
    """``_device_words`` in numpy, flattened row-major: uint32 [n]."""
    leaf = np.ascontiguousarray(leaf)
    if leaf.dtype == np.bool_:
        return leaf.astype(np.uint32).ravel()
    size = leaf.dtype.itemsize
    if size in (4, 8):
        return leaf.view(np.uint32).ravel()
    return leaf.view(np.dtype(f"uint{8 * size}")).astype(np.uint32).ravel()


def _fmix(x):
    """MurmurHash3's 32-bit finaliser (numpy or jax uint32 arrays; products wrap mod 2**32)."""
    x = x ^ (x >> 16)
    x = x * x.dtype.type(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * x.dtype.type(0xC2B2AE35)
    return x ^ (x >> 16)


def _host_check(leaf: np.ndarray) -> LeafCheck:
    words = _host_words(leaf)
    h1 = h2 = 0
    for start in range(0, words.size, _BLOCK):
        block = words[start:start + _BLOCK]
        index = (np.arange(start, start + block.size, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
        h1 += int(np.sum(block * (index * np.uint32(2) + np.uint32(1)), dtype=np.uint32))
        h2 += int(np.sum(_fmix(block ^ (index * np.uint32(_GOLDEN))), dtype=np.uint32))
    finite = bool(np.isfinite(leaf).all()) if np.issubdtype(leaf.dtype, np.inexact) else True
    return LeafCheck(_hex(h1, h2), finite)


def data_fingerprint(dataset: XCDataset) -> str:
    """``sha256:<hex>`` of the dataset's content: D, L and the features' and labels' CSR arrays
    (the file name is left out: a moved file is the same data)."""
    digest = hashlib.sha256()
    digest.update(np.asarray([dataset.num_features, dataset.num_labels], np.int64).tobytes())
    for matrix in (dataset.features, dataset.labels):
        for array in (matrix.indptr, matrix.indices, matrix.values):
            digest.update(np.ascontiguousarray(array).data)
    return f"sha256:{digest.hexdigest()}"
