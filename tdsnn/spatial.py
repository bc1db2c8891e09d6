"""Spatial statistics of values on a cortical sheet, shared by ``tdsnn analyze``
(:mod:`tdsnn.analysis`) and ``tdsnn evaluate`` (:mod:`tdsnn.evaluate.representation`).

``positions`` are ``[N, 2]`` cortical positions ``(x, y)`` in mm; neighbour ``pairs`` are
``[P, 2]`` unit indices, each unordered pair once. numpy and scipy only.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHUNK",
    "morans_i",
    "morans_i_pairs",
    "neighbour_pairs",
    "pair_adjacency",
    "pair_distances",
]

CHUNK = 4_000_000  # floats per temporary block in chunked pair computations


def pair_distances(positions: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Distances (mm) between the units ``i [P]`` and ``j [P]``: ``[P]``."""
    return np.hypot(*(positions[i] - positions[j]).T)


def neighbour_pairs(positions: np.ndarray, radius: float) -> np.ndarray:
    """The unordered pairs ``[P, 2]`` of units at ``positions [N, 2]`` (mm) with
    ``0 < d ≤ radius`` mm, found with a k-d tree (units at the same position are no pair)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(radius, output_type="ndarray")
    return pairs[pair_distances(positions, pairs[:, 0], pairs[:, 1]) > 0]


def morans_i(values: np.ndarray, positions: np.ndarray, *, radius: float) -> float:
    """Moran's I of ``values [N]`` with binary weights ``w_ij = 1`` for ``0 < d_ij ≤ radius`` mm.

    ``I = (N / W) · Σ_ij w_ij (x_i − x̄)(x_j − x̄) / Σ_i (x_i − x̄)²`` with ``W = Σ_ij w_ij``;
    units with NaN values are dropped. NaN when no pair is within ``radius`` or the values are
    constant. Neighbour pairs come from a k-d tree, so cost grows with the number of pairs.
    """
    x = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(x)
    x, pos = x[keep], np.asarray(positions, dtype=np.float64)[keep]
    return float(morans_i_pairs(x[None], neighbour_pairs(pos, radius))[0])


def pair_adjacency(pairs: np.ndarray, n: int):
    """The ``[n, n]`` scipy CSR matrix with ``A[i, j] = 1`` for each unordered pair ``(i, j)``
    of ``pairs [P, 2]`` (one entry per pair), for :func:`morans_i_pairs` over many batches."""
    from scipy.sparse import csr_matrix

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))


def morans_i_pairs(values: np.ndarray, pairs) -> np.ndarray:
    """Moran's I of each row of ``values [B, N]`` with ``w_ij = w_ji = 1`` for the unordered
    neighbour ``pairs [P, 2]`` (e.g. a grid's queen neighbours), or their
    :func:`pair_adjacency` (built once for many calls): ``[B]``, one map per row (per image,
    as Truong & Hasson average it). NaN for a constant row or without pairs."""
    from scipy.sparse import issparse

    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n = x.shape[1]
    adjacency = pairs if issparse(pairs) else pair_adjacency(pairs, n)
    count = float(adjacency.sum())  # P: a count of ones, exact
    dev = x - x.mean(axis=1, keepdims=True)
    denom = np.einsum("bn,bn->b", dev, dev)
    if count == 0:
        return np.full(x.shape[0], np.nan)
    # Σ_pairs d_i·d_j of each row as d · (A d): a sparse product, without the [B, P] gathers
    cross = 2.0 * np.einsum("bn,bn->b", dev, (adjacency @ dev.T).T)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = n / (2.0 * count) * cross / denom
    return np.where(denom > 0, out, np.nan)
