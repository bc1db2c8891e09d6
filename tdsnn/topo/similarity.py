"""Pairwise unit similarities, dense within a cluster (``[K, n, n]``) or for a pair list (``[P]``).

Conventions: *samples first* for features (``x [S, N]`` or ``x [S, K, n]``: ``S`` samples, ``N``
units, or ``K`` clusters of ``n`` units); spike trains are ``[T, B, N]`` / ``[T, B, K, n]``;
pair lists are ``[P, 2]`` long.

Zero-variance safety (DESIGN §8): a unit whose feature is constant over the samples (a unit that
never spikes, a flat trace) has z-score 0, hence correlation 0 with every unit and exactly zero
gradient, never NaN. The same holds for zero-norm vectors under cosine and zero-ACG spike trains
under r_CCG. Constancy is tested exactly (``max == min``), so rounding in the mean cannot turn a
constant column into noise.

The pair dot products (:func:`pair_dot`, re-exported here) and the lag smoothing of r_CCG are
ops of :mod:`tdsnn.ops.pairs`, with their compiled kernels; this module builds on them.

Similarities:

- Pearson over samples: ``r_ij = (1/S) Σ_s z_i(s) z_j(s)``, ``z`` the population z-score.
- r_CCG (TDSNN synchrony): ``CCG(i,j) = Σ_{τ=−W..W} 1/(B·(T−|τ|)) Σ_b Σ_t S_i^b(t)·S_j^b(t+τ)``
  (sum over the ``t`` where both indices lie in ``[0, T)``), ``ACG(i) = CCG(i,i)``,
  ``r_CCG = CCG(i,j) / √(ACG(i)·ACG(j))``; ``W`` defaults to ``⌊T/2⌋`` and is clipped to ``T−1``.
  Written as ``CCG(i,j) = Σ_{b,t} S_i^b(t)·U_j^b(t)`` with the lag-smoothed train
  ``U_j(t) = Σ_τ S_j(t+τ)/(B(T−|τ|))``, the dense form is one matmul for all lags.
- cosine ``w_i·w_j / (‖w_i‖‖w_j‖)`` and squared Euclidean ``‖w_i − w_j‖²`` for weight rows.

Distances between the rows of ``x [N, F]`` (:func:`distance_pairs`), named as in
``scipy.spatial.distance``: ``euclidean`` ``‖x_i − x_j‖₂``, ``sqeuclidean`` ``‖x_i − x_j‖²``,
``cosine`` ``1 − cos``, ``correlation`` ``1 − Pearson r`` (the cosine of the mean-centred rows).
A zero row (cosine) or constant row (correlation) has similarity 0, hence distance 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tdsnn import ops
from tdsnn.choices import SIMILARITY_METRICS
from tdsnn.errors import ConfigError
from tdsnn.ops.pairs import lag_smooth, pair_dot, pair_dot_backward, pair_dot_forward
from tdsnn.topo.features import as_float

__all__ = [
    "guarded_zscore",
    "guarded_normalize",
    "guarded_rsqrt",
    "pair_dot",
    "pair_dot_forward",
    "pair_dot_backward",
    "pearson_pairs",
    "ccg_factors",
    "gram",
    "pearson_dense",
    "resolve_ccg_window",
    "ccg_smooth",
    "ccg_pairs",
    "ccg_dense",
    "cosine_pairs",
    "sqeuclidean_pairs",
    "euclidean_pairs",
    "METRICS",
    "distance_pairs",
]

METRICS = SIMILARITY_METRICS


def guarded_rsqrt(a: Tensor, ok: Tensor | None = None) -> Tensor:
    """``1/√a`` where ``a > 0`` (and ``ok``), else 0 — with zero gradient there, never inf/NaN."""
    good = a > 0
    if ok is not None:
        good = good & ok
    tiny = torch.finfo(a.dtype).tiny
    return torch.where(good, a.clamp_min(tiny).rsqrt(), torch.zeros((), dtype=a.dtype))


def guarded_zscore(x: Tensor, dim: int = 0) -> Tensor:
    """Population z-score of ``x`` along ``dim``; 0 (zero gradient) where ``x`` is constant."""
    x = as_float(x)
    with torch.no_grad():
        varies = x.amax(dim, keepdim=True) > x.amin(dim, keepdim=True)
    xc = x - x.mean(dim, keepdim=True)
    var = xc.pow(2).mean(dim, keepdim=True)
    return xc * guarded_rsqrt(var, varies)


def guarded_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ‖x‖`` along ``dim``; 0 (zero gradient) for all-zero vectors."""
    x = as_float(x)
    return x * guarded_rsqrt(x.pow(2).sum(dim, keepdim=True))


# ----------------------------------------------------------------------------- Pearson


def pearson_pairs(x: Tensor, pairs: Tensor) -> Tensor:
    """Pearson over the samples of ``x [S, N]`` for each pair: ``[P]``."""
    z = guarded_zscore(x, 0).t()  # [N, S]
    return pair_dot(z, z, pairs) / x.shape[0]


class _Gram(torch.autograd.Function):
    """``G = A·Bᵀ`` per cluster where ``B = A·M`` for a fixed symmetric ``M`` (given as ``B``).

    Backward ``dA = (dG + dGᵀ)·B``: one batched matmul instead of autograd's two. ``B`` gets no
    gradient of its own (it is a function of ``A`` whose share is already in the formula).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(b)
        return torch.bmm(a, b.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (b,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), b), None


def gram(a: Tensor, b: Tensor | None = None) -> Tensor:
    """``[K, n, n] = A·Bᵀ`` for ``A [K, n, D]``, ``B = A·M`` (``M`` symmetric; None: ``B = A``).

    ``B`` must be computed from ``A`` by a fixed symmetric linear map (identity, or the CCG lag
    smoothing); its value is used, its autograd history ignored.
    """
    b = a.detach() if b is None else b.detach()
    return _Gram.apply(a, b)


def pearson_dense(x: Tensor) -> Tensor:
    """Pearson over the samples of ``x [K, n, S]`` for all unit pairs per cluster: ``[K, n, n]``.

    Constant units (e.g. zero padding) give all-zero rows and columns, diagonal included.
    """
    z = guarded_zscore(x, -1) * (1.0 / math.sqrt(x.shape[-1]))
    return gram(z)


# ----------------------------------------------------------------------------- r_CCG


def resolve_ccg_window(t_steps: int, window: int | None) -> int:
    """Lag window ``W``: ``⌊T/2⌋`` by default, clipped to ``T − 1``; negative is a ConfigError."""
    if window is None:
        window = t_steps // 2
    if isinstance(window, bool) or int(window) != window or window < 0:
        raise ConfigError(f"ccg window must be a non-negative integer or None, got {window!r}")
    return min(int(window), t_steps - 1)


def ccg_smooth(spikes: Tensor, window: int | None = None, time_dim: int = 0) -> Tensor:
    """Lag-smoothed trains ``U_j^b(t) = Σ_{τ=−W..W, 0≤t+τ<T} S_j^b(t+τ) / (B·(T−|τ|))``.

    ``spikes`` has time at ``time_dim`` and the batch right after it (``[T, B, N]`` with
    ``time_dim=0``, ``[K, n, T, B]`` with ``time_dim=2``). Then
    ``CCG(i, j) = Σ_b Σ_t S_i^b(t)·U_j^b(t)``: one product instead of one per lag. The map
    ``S → U`` is linear and symmetric (a Toeplitz matrix over time); computed by
    :func:`tdsnn.ops.pairs.lag_smooth` after the window is resolved.
    """
    s = as_float(spikes)
    return lag_smooth(s, resolve_ccg_window(s.shape[time_dim], window), time_dim)


def ccg_factors(spikes: Tensor, window: int | None, time_dim: int) -> tuple[Tensor, Tensor]:
    """``(S/√ACG, U/√ACG)`` per unit (0 where ACG <= 0), shaped like ``spikes``."""
    s = as_float(spikes)
    u = ccg_smooth(s, window, time_dim)
    acg = (s * u).sum((time_dim, time_dim + 1), keepdim=True)
    inv = guarded_rsqrt(acg)
    return s * inv, u * inv


def ccg_pairs(spikes: Tensor, pairs: Tensor, window: int | None = None) -> Tensor:
    """r_CCG of each pair from spike trains ``[T, B, N]``: ``[P]``.

    The one dispatch point of ``pair_ccg``: on CUDA with the kernels, the raw CCG of each pair
    and the ACG of each unit (``torch.ops.tdsnn.pair_ccg``), normalised here. Otherwise
    ``r_ij = Σ_{t,b} (S_i/√ACG_i)(U_j/√ACG_j)`` with ``U`` from :func:`ccg_smooth`: one
    :func:`pair_dot` over rows ``[N, T·B]``. Nothing of size ``P·T·B`` is materialised.
    """
    if ops.use_kernels(spikes, "pair_ccg"):
        return _ccg_pairs_kernel(spikes, pairs, window)
    a, b = ccg_factors(spikes, window, 0)
    n = a.shape[-1]
    return pair_dot(a.reshape(-1, n).t(), b.reshape(-1, n).t(), pairs)


def _ccg_pairs_kernel(spikes: Tensor, pairs: Tensor, window: int | None) -> Tensor:
    s = as_float(spikes)
    w = resolve_ccg_window(s.shape[0], window)
    pairs = pairs.to(s.device, torch.long)
    units = torch.arange(s.shape[-1], device=s.device)
    acg = torch.ops.tdsnn.pair_ccg(s, torch.stack([units, units], 1), w)
    inv = guarded_rsqrt(acg)
    ccg = torch.ops.tdsnn.pair_ccg(s, pairs, w)
    return ccg * inv[pairs[:, 0]] * inv[pairs[:, 1]]


def ccg_dense(spikes: Tensor, window: int | None = None) -> Tensor:
    """r_CCG of all unit pairs per cluster from spike trains ``[K, n, T, B]``: ``[K, n, n]``.

    One batched matmul ``[K, n, T·B] × [K, T·B, n]`` of the ACG-normalised trains and their
    lag-smoothed copies (:func:`ccg_smooth`), with a symmetric backward (:func:`gram`). Units
    with ``ACG = 0`` (silent, zero padding) give zero rows and columns.
    """
    a, b = ccg_factors(spikes, window, 2)
    k, n = a.shape[:2]
    return gram(a.reshape(k, n, -1), b.reshape(k, n, -1))


# ----------------------------------------------------------------------------- weights


def cosine_pairs(w: Tensor, pairs: Tensor) -> Tensor:
    """Cosine similarity of the rows of ``w [N, F]`` per pair: ``[P]`` (0 for zero rows)."""
    u = guarded_normalize(w, 1)
    return pair_dot(u, u, pairs)


def sqeuclidean_pairs(w: Tensor, pairs: Tensor) -> Tensor:
    """``‖w_i − w_j‖²`` of the rows of ``w [N, F]`` per pair: ``[P]`` (direct difference)."""
    w = as_float(w)
    pairs = pairs.to(w.device, torch.long)
    return (w[pairs[:, 0]] - w[pairs[:, 1]]).pow(2).sum(1)


def euclidean_pairs(w: Tensor, pairs: Tensor) -> Tensor:
    """``‖w_i − w_j‖₂`` of the rows of ``w [N, F]`` per pair: ``[P]``.

    The norm has no gradient at zero distance (identical rows); there it is given the
    subgradient 0 (the square root is taken only where the squared distance is > 0), so
    the value stays exact and the gradient finite, never ``0·∞ = NaN``.
    """
    sq = sqeuclidean_pairs(w, pairs)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, 1.0).sqrt(), 0.0)


def distance_pairs(x: Tensor, pairs: Tensor, metric: str = "correlation") -> Tensor:
    """Distance ``metric`` (one of :data:`METRICS`) between the rows of ``x [N, F]`` per pair.

    Returns ``[P]``: ``euclidean`` (:func:`euclidean_pairs`), ``sqeuclidean``, ``cosine``
    ``1 − cos`` (1 for a zero row) or ``correlation`` ``1 − Pearson`` over the ``F`` entries
    (1 for a constant row); each equals ``scipy.spatial.distance.<metric>`` where scipy's is
    defined.
    """
    if metric == "euclidean":
        return euclidean_pairs(x, pairs)
    if metric == "sqeuclidean":
        return sqeuclidean_pairs(x, pairs)
    if metric == "cosine":
        return 1.0 - cosine_pairs(x, pairs)
    if metric == "correlation":
        return 1.0 - pearson_pairs(x.t(), pairs)
    raise ConfigError(f"unknown distance metric {metric!r}; valid metrics: {', '.join(METRICS)}")
