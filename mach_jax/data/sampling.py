"""Vectorised sampling helpers of the synthetic generators: power laws, inverse-cdf draws (also
within groups, with one ``searchsorted`` for all of them), and sorted distinct values."""

from __future__ import annotations

import numpy as np


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Float64 [n] probabilities, a power law over a random order of the ids."""
    weights = (rng.permutation(n) + 1.0) ** -exponent
    return weights / weights.sum()


def sample(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ids drawn from a cumulative distribution, ``u`` uniform in [0, 1)."""
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


def sample_grouped(ptr: np.ndarray, cdf: np.ndarray, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Entry indices drawn within each group of a grouped cdf (one searchsorted for all)."""
    found = np.searchsorted(cdf, groups + u, side="right")
    return np.clip(found, ptr[groups], ptr[groups + 1] - 1)


def unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of non-negative ``keys`` (a plain sort: faster than np.unique here)."""
    keys = np.sort(keys)
    return keys[np.diff(keys, prepend=-1) != 0]


def group_ptr(groups: np.ndarray, num_groups: int) -> np.ndarray:
    """Int64 [G + 1]: group g holds entries ptr[g]:ptr[g + 1] of the sorted ``groups``."""
    ptr = np.zeros(num_groups + 1, np.int64)
    np.cumsum(np.bincount(groups, minlength=num_groups), out=ptr[1:])
    return ptr


def grouped_cdf(groups: np.ndarray, weights: np.ndarray, num_groups: int):
    """(ptr int64 [G + 1], cdf float64 [n]) for entries sorted by group; no group may be empty."""
    ptr = group_ptr(groups, num_groups)
    within = np.cumsum(weights)
    within -= np.repeat(np.concatenate([[0.0], within])[ptr[:-1]], np.diff(ptr))
    totals = within[ptr[1:] - 1]
    cdf = groups + within / np.repeat(totals, np.diff(ptr))
    cdf[ptr[1:] - 1] = np.arange(1, num_groups + 1)
    return ptr, cdf
