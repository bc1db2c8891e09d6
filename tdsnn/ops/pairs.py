"""The pair ops, with their PyTorch references, their dispatch and the Python layer of the
compiled ops (CPU implementations from the reference, fake functions, autograd formulas):

- ``torch.ops.tdsnn.pair_similarity``: row dot products per pair of a pair list ``[P, 2]``;
- ``pair_similarity_tiled`` and ``pair_moments``: the same dot products on a
  :class:`~tdsnn.ops.tiles.PairTiles` plan (pairs grouped into tiles of neighbouring units whose
  rows the CUDA kernel shares through shared memory); ``pair_moments`` returns only the sums a
  loss over the pairs needs (``Σ s``, ``Σ s²``, ``Σ w·s``), and its backward recomputes each
  ``s`` instead of storing it;
- ``pair_ccg``: the raw cross-correlogram per pair.

:mod:`tdsnn.topo.similarity` builds Pearson and r_CCG on these. :func:`register` is called by
:func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tdsnn import ops
from tdsnn.errors import ConfigError
from tdsnn.ops.tiles import PairTiles, check_pairs, check_tile_inputs, decode_tiles

__all__ = [
    "PairDot",
    "PairMoments",
    "lag_smooth",
    "pair_chunk",
    "pair_dot",
    "pair_dot_backward",
    "pair_dot_forward",
    "pair_moments",
    "pair_moments_backward",
    "pair_moments_forward",
    "raw_ccg_backward_reference",
    "raw_ccg_reference",
    "register",
]


# ----------------------------------------------------------------------------- pair dot


def pair_dot_forward(x: Tensor, y: Tensor, pairs: Tensor, chunk: int) -> Tensor:
    """``[P]`` row dot products in chunks of ``chunk`` pairs, never holding ``[P, M]`` gathers."""
    i, j = pairs[:, 0], pairs[:, 1]
    out = x.new_empty(pairs.shape[0])
    for s in range(0, pairs.shape[0], chunk):
        out[s : s + chunk] = (x[i[s : s + chunk]] * y[j[s : s + chunk]]).sum(1)
    return out


def pair_dot_backward(
    grad: Tensor, x: Tensor, y: Tensor, pairs: Tensor, chunk: int, need_x=True, need_y=True
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`pair_dot_forward` for ``x`` and ``y`` (``index_add_`` by chunks)."""
    i, j = pairs[:, 0], pairs[:, 1]
    gx = torch.zeros_like(x) if need_x else None
    gy = torch.zeros_like(y) if need_y else None
    for s in range(0, pairs.shape[0], chunk):
        g = grad[s : s + chunk, None]
        ic, jc = i[s : s + chunk], j[s : s + chunk]
        if gx is not None:
            gx.index_add_(0, ic, y[jc] * g)
        if gy is not None:
            gy.index_add_(0, jc, x[ic] * g)
    return gx, gy


def pair_chunk(m: int) -> int:
    """Pairs per chunk so that a chunk's gathers hold about 2 M values."""
    return max(256, (1 << 21) // max(1, m))


class PairDot(torch.autograd.Function):
    """``out_p = Σ_m x[i_p, m] · y[j_p, m]``: the PyTorch path of :func:`pair_dot`."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, pairs: Tensor) -> Tensor:
        ctx.save_for_backward(x, y, pairs)
        return pair_dot_forward(x, y, pairs, pair_chunk(x.shape[1]))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, pairs = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        gx, gy = pair_dot_backward(grad, x, y, pairs, pair_chunk(x.shape[1]), need_x, need_y)
        return gx, gy, None


def pair_dot(x: Tensor, y: Tensor, pairs: Tensor | PairTiles) -> Tensor:
    """``[P]`` dot products ``Σ_m x[i, m]·y[j, m]`` of the rows of ``x, y [N, M]`` per pair.

    The one dispatch point of ``pair_similarity`` (DESIGN §9): when :func:`tdsnn.ops.use_kernels`
    says so, the CUDA kernel ``torch.ops.tdsnn.pair_similarity_tiled`` for a :class:`PairTiles`
    plan and ``pair_similarity`` for a pair list; else the PyTorch path, whose memory stays
    ``O(N·M + P)``: the forward works in chunks of pairs and the backward scatter-adds
    (``index_add_``) chunk by chunk.
    """
    if isinstance(pairs, PairTiles) and _kernel_rows(x, y, "pair_similarity"):
        out = torch.ops.tdsnn.pair_similarity_tiled(x, y, pairs.units, pairs.local, pairs.offsets)
        return pairs.in_given_order(out)
    pairs = check_pairs(_as_pair_list(pairs)).to(x.device)
    if _kernel_rows(x, y, "pair_similarity"):
        return torch.ops.tdsnn.pair_similarity(x, y, pairs)
    return PairDot.apply(x.contiguous(), y.contiguous(), pairs)


def _as_pair_list(pairs: Tensor | PairTiles) -> Tensor:
    return pairs.pairs if isinstance(pairs, PairTiles) else pairs


def _kernel_rows(x: Tensor, y: Tensor, op: str) -> bool:
    """Whether rows ``x, y`` go to the compiled op ``op`` (float32/float64, one dtype)."""
    floats = x.dtype in (torch.float32, torch.float64) and y.dtype == x.dtype
    return floats and ops.use_kernels(x, op)


# ----------------------------------------------------------------------------- pair moments


def _moments(s: Tensor, weights: Tensor | None) -> Tensor:
    s = s.double()
    ws = s.new_zeros(()) if weights is None else (weights.double() * s).sum()
    return torch.stack([s.sum(), s.pow(2).sum(), ws])


def pair_moments_forward(
    x: Tensor, y: Tensor, pairs: Tensor, weights: Tensor | None, chunk: int
) -> Tensor:
    """``[Σ s, Σ s², Σ w·s]`` (float64) of the dot products ``s`` of :func:`pair_dot_forward`."""
    return _moments(pair_dot_forward(x, y, pairs, chunk), weights)


def pair_moments_backward(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    pairs: Tensor,
    weights: Tensor | None,
    chunk: int,
    s: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients for ``x, y`` of :func:`pair_moments_forward` given ``grad [3]``: the pairs'
    own gradients ``g₀ + 2·g₁·s + g₂·w`` (``s`` recomputed unless given), scattered as in
    :func:`pair_dot_backward`."""
    s = pair_dot_forward(x, y, pairs, chunk) if s is None else s
    g = grad.to(s.dtype)
    per_pair = g[0] + 2.0 * g[1] * s
    if weights is not None:
        per_pair = per_pair + g[2] * weights.to(s.dtype)
    return pair_dot_backward(per_pair, x, y, pairs, chunk)


class PairMoments(torch.autograd.Function):
    """``[Σ s, Σ s², Σ w·s]`` of ``s_p = x[i_p]·y[j_p]``: the PyTorch path of
    :func:`pair_moments` (it keeps the ``[P]`` similarities for its backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, pairs: Tensor, weights: Tensor | None) -> Tensor:
        s = pair_dot_forward(x, y, pairs, pair_chunk(x.shape[1]))
        ctx.save_for_backward(x, y, pairs, weights, s)
        return _moments(s, weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, pairs, weights, s = ctx.saved_tensors
        chunk = pair_chunk(x.shape[1])
        gx, gy = pair_moments_backward(grad, x, y, pairs, weights, chunk, s)
        return gx, gy, None, None


def pair_moments(
    x: Tensor, y: Tensor, pairs: Tensor | PairTiles, weights: Tensor | None = None
) -> Tensor:
    """``[Σ s, Σ s², Σ w·s]`` in float64 over the pairs, ``s_p = Σ_m x[i_p, m]·y[j_p, m]``.

    What a Pearson alignment or a mean over the pairs needs, without the ``[P]`` similarities:
    on CUDA with a :class:`PairTiles` plan, ``torch.ops.tdsnn.pair_moments`` reduces the tiles'
    dot products in the kernel and its backward recomputes them; otherwise the PyTorch path.

    Args:
        x, y: rows ``[N, M]``.
        pairs: ``[P, 2]`` or their :class:`PairTiles`.
        weights: ``[P]`` per-pair weights ``w`` in the list's order (``None``: ``Σ w·s = 0``).
    """
    if weights is not None and weights.shape != (len(_as_pair_list(pairs)),):
        raise ConfigError(
            f"weights must be [P] = [{len(_as_pair_list(pairs))}], got {tuple(weights.shape)}"
        )
    if isinstance(pairs, PairTiles) and _kernel_rows(x, y, "pair_similarity"):
        w = None if weights is None else pairs.in_tile_order(weights.to(x.dtype)).contiguous()
        return torch.ops.tdsnn.pair_moments(x, y, pairs.units, pairs.local, pairs.offsets, w)
    pair_list = check_pairs(_as_pair_list(pairs)).to(x.device)
    w = None if weights is None else weights.to(x.device, x.dtype)
    return PairMoments.apply(x.contiguous(), y.contiguous(), pair_list, w)


# ----------------------------------------------------------------------------- raw CCG


def lag_smooth(s: Tensor, window: int, time_dim: int = 0) -> Tensor:
    """Lag-smoothed trains ``U_j^b(t) = Σ_{τ=−W..W, 0≤t+τ<T} S_j^b(t+τ) / (B·(T−|τ|))`` of float
    spikes ``s`` with time at ``time_dim`` and the batch right after it; ``W = min(window, T−1)``.

    ``CCG(i, j) = Σ_b Σ_t S_i^b(t)·U_j^b(t)``; the map ``S → U`` is linear and symmetric.
    """
    s = s.movedim(time_dim, 0)
    t_steps, batch = s.shape[0], s.shape[1]
    u = s * (1.0 / (batch * t_steps))
    for tau in range(1, min(window, t_steps - 1) + 1):
        wt = 1.0 / (batch * (t_steps - tau))
        zero = torch.zeros_like(s[:tau])
        later = torch.cat([s[tau:], zero])  # S(t+τ)
        earlier = torch.cat([zero, s[: t_steps - tau]])  # S(t−τ)
        u = u + (later + earlier) * wt
    return u.movedim(0, time_dim)


def _rows(spikes: Tensor) -> tuple[Tensor, int]:
    """``[T, B, N]`` -> float rows ``[N, T·B]`` (float64 stays float64) and N."""
    dtype = torch.float64 if spikes.dtype == torch.float64 else torch.float32
    n = spikes.shape[-1]
    return spikes.to(dtype).reshape(-1, n).t(), n


def raw_ccg_reference(spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    """Unnormalised CCG of each pair from ``spikes [T, B, N]``: ``[P]``.

    ``CCG(i, j) = Σ_{b,t} S_i^b(t)·U_j^b(t)`` with ``U`` the lag-smoothed trains of
    :func:`lag_smooth`.
    """
    s, n = _rows(spikes)
    u, _ = _rows(lag_smooth(spikes.to(s.dtype), window))
    return pair_dot_forward(s, u, pairs, pair_chunk(s.shape[1]))


def raw_ccg_backward_reference(grad: Tensor, spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    """Gradient of :func:`raw_ccg_reference` for ``spikes``: ``[T, B, N]`` in their dtype.

    The smoothing ``S -> U`` is linear and symmetric, so the share through ``U`` is the
    smoothed gradient of the ``U`` rows.
    """
    s, n = _rows(spikes)
    u, _ = _rows(lag_smooth(spikes.to(s.dtype), window))
    gs, gu = pair_dot_backward(grad.to(s.dtype), s, u, pairs, pair_chunk(s.shape[1]))
    shape = spikes.shape
    through_u = lag_smooth(gu.t().reshape(shape), window)
    return (gs.t().reshape(shape) + through_u).to(spikes.dtype)


# ----------------------------------------------------------------------------- CPU (reference)


def _similarity_cpu(x: Tensor, y: Tensor, pairs: Tensor) -> Tensor:
    return pair_dot_forward(x.contiguous(), y.contiguous(), pairs, pair_chunk(x.shape[1]))


def _similarity_backward_cpu(grad: Tensor, x: Tensor, y: Tensor, pairs: Tensor):
    return pair_dot_backward(grad.to(x.dtype), x, y, pairs, pair_chunk(x.shape[1]))


def _similarity_tiled_cpu(x, y, units, local, offsets) -> Tensor:
    check_tile_inputs("pair_similarity_tiled", x, y, units, local, offsets)
    return _similarity_cpu(x, y, decode_tiles(units, local, offsets))


def _similarity_tiled_backward_cpu(grad, x, y, units, local, offsets):
    check_tile_inputs("pair_similarity_tiled_backward", x, y, units, local, offsets)
    return _similarity_backward_cpu(grad, x, y, decode_tiles(units, local, offsets))


def _moments_cpu(x, y, units, local, offsets, weights) -> Tensor:
    check_tile_inputs("pair_moments", x, y, units, local, offsets, weights)
    pairs = decode_tiles(units, local, offsets)
    return pair_moments_forward(
        x.contiguous(), y.contiguous(), pairs, weights, pair_chunk(x.shape[1])
    )


def _moments_backward_cpu(grad, x, y, units, local, offsets, weights):
    check_tile_inputs("pair_moments_backward", x, y, units, local, offsets, weights)
    pairs = decode_tiles(units, local, offsets)
    x, y = x.contiguous(), y.contiguous()
    return pair_moments_backward(grad, x, y, pairs, weights, pair_chunk(x.shape[1]))


def _ccg_cpu(spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_reference(spikes, pairs, window)


def _ccg_backward_cpu(grad: Tensor, spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_backward_reference(grad, spikes, pairs, window)


# ----------------------------------------------------------------------------- fake functions


def _similarity_fake(x, y, pairs):
    return x.new_empty(pairs.shape[0])


def _similarity_backward_fake(grad, x, y, pairs):
    return torch.empty_like(x), torch.empty_like(y)


def _similarity_tiled_fake(x, y, units, local, offsets):
    return x.new_empty(local.shape[0])


def _similarity_tiled_backward_fake(grad, x, y, units, local, offsets):
    return torch.empty_like(x), torch.empty_like(y)


def _moments_fake(x, y, units, local, offsets, weights):
    return x.new_empty(3, dtype=torch.float64)


def _moments_backward_fake(grad, x, y, units, local, offsets, weights):
    return torch.empty_like(x), torch.empty_like(y)


def _ccg_dtype(spikes: Tensor) -> torch.dtype:
    return torch.float64 if spikes.dtype == torch.float64 else torch.float32


def _ccg_fake(spikes, pairs, window):
    return spikes.new_empty(pairs.shape[0], dtype=_ccg_dtype(spikes))


def _ccg_backward_fake(grad, spikes, pairs, window):
    return torch.empty_like(spikes)


# ----------------------------------------------------------------------------- autograd


def _similarity_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _similarity_backward(ctx, grad: Tensor):
    x, y, pairs = ctx.saved_tensors
    grad_x, grad_y = torch.ops.tdsnn.pair_similarity_backward(grad, x, y, pairs)
    return grad_x, grad_y, None


def _tiled_backward(ctx, grad: Tensor):
    x, y, units, local, offsets = ctx.saved_tensors
    grad_x, grad_y = torch.ops.tdsnn.pair_similarity_tiled_backward(
        grad, x, y, units, local, offsets
    )
    return grad_x, grad_y, None, None, None


def _moments_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _moments_backward(ctx, grad: Tensor):
    x, y, units, local, offsets, weights = ctx.saved_tensors
    grad_x, grad_y = torch.ops.tdsnn.pair_moments_backward(
        grad, x, y, units, local, offsets, weights
    )
    return grad_x, grad_y, None, None, None, None


def _ccg_setup(ctx, inputs, output) -> None:
    spikes, pairs, window = inputs
    ctx.window = window
    ctx.save_for_backward(spikes, pairs)


def _ccg_backward(ctx, grad: Tensor):
    spikes, pairs = ctx.saved_tensors
    return torch.ops.tdsnn.pair_ccg_backward(grad, spikes, pairs, ctx.window), None, None


def register() -> None:
    """Register the CPU implementations, fake functions and autograd formulas of the pair ops
    (after the compiled library has defined the schemas; called once, by
    :func:`tdsnn.ops.load_kernels`)."""
    lib = torch.library
    lib.register_kernel("tdsnn::pair_similarity", "cpu", _similarity_cpu)
    lib.register_kernel("tdsnn::pair_similarity_backward", "cpu", _similarity_backward_cpu)
    lib.register_kernel("tdsnn::pair_similarity_tiled", "cpu", _similarity_tiled_cpu)
    lib.register_kernel(
        "tdsnn::pair_similarity_tiled_backward", "cpu", _similarity_tiled_backward_cpu
    )
    lib.register_kernel("tdsnn::pair_moments", "cpu", _moments_cpu)
    lib.register_kernel("tdsnn::pair_moments_backward", "cpu", _moments_backward_cpu)
    lib.register_kernel("tdsnn::pair_ccg", "cpu", _ccg_cpu)
    lib.register_kernel("tdsnn::pair_ccg_backward", "cpu", _ccg_backward_cpu)
    lib.register_fake("tdsnn::pair_similarity", _similarity_fake)
    lib.register_fake("tdsnn::pair_similarity_backward", _similarity_backward_fake)
    lib.register_fake("tdsnn::pair_similarity_tiled", _similarity_tiled_fake)
    lib.register_fake("tdsnn::pair_similarity_tiled_backward", _similarity_tiled_backward_fake)
    lib.register_fake("tdsnn::pair_moments", _moments_fake)
    lib.register_fake("tdsnn::pair_moments_backward", _moments_backward_fake)
    lib.register_fake("tdsnn::pair_ccg", _ccg_fake)
    lib.register_fake("tdsnn::pair_ccg_backward", _ccg_backward_fake)
    lib.register_autograd(
        "tdsnn::pair_similarity", _similarity_backward, setup_context=_similarity_setup
    )
    lib.register_autograd(
        "tdsnn::pair_similarity_tiled", _tiled_backward, setup_context=_similarity_setup
    )
    lib.register_autograd("tdsnn::pair_moments", _moments_backward, setup_context=_moments_setup)
    lib.register_autograd("tdsnn::pair_ccg", _ccg_backward, setup_context=_ccg_setup)
