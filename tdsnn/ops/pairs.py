"""The pair ops: ``torch.ops.tdsnn.pair_similarity`` (row dot products per pair) and
``pair_ccg`` (raw cross-correlogram per pair), with their PyTorch references, the dispatch of
:func:`pair_dot`, and the Python layer of the compiled ops (CPU implementations from the
reference, fake functions, autograd formulas).

:mod:`tdsnn.topo.similarity` builds Pearson and r_CCG on these. :func:`register` is called by
:func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tdsnn import ops
from tdsnn.errors import ConfigError

__all__ = [
    "PairDot",
    "lag_smooth",
    "pair_chunk",
    "pair_dot",
    "pair_dot_backward",
    "pair_dot_forward",
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


def pair_dot(x: Tensor, y: Tensor, pairs: Tensor) -> Tensor:
    """``[P]`` dot products ``Σ_m x[i, m]·y[j, m]`` of the rows of ``x, y [N, M]`` per pair.

    The one dispatch point of ``pair_similarity`` (DESIGN §9): the CUDA kernel
    ``torch.ops.tdsnn.pair_similarity`` when :func:`tdsnn.ops.use_kernels` says so, else the
    PyTorch path, whose memory stays ``O(N·M + P)``: the forward works in chunks of pairs and
    the backward scatter-adds (``index_add_``) chunk by chunk.
    """
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ConfigError(f"pairs must be a [P, 2] long tensor, got shape {tuple(pairs.shape)}")
    pairs = pairs.to(x.device, torch.long)
    if (
        ops.use_kernels(x, "pair_similarity")
        and x.dtype in (torch.float32, torch.float64)
        and y.dtype == x.dtype
    ):
        return torch.ops.tdsnn.pair_similarity(x, y, pairs)
    return PairDot.apply(x.contiguous(), y.contiguous(), pairs)


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


def _ccg_cpu(spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_reference(spikes, pairs, window)


def _ccg_backward_cpu(grad: Tensor, spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_backward_reference(grad, spikes, pairs, window)


# ----------------------------------------------------------------------------- fake functions


def _similarity_fake(x, y, pairs):
    return x.new_empty(pairs.shape[0])


def _similarity_backward_fake(grad, x, y, pairs):
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


def _ccg_setup(ctx, inputs, output) -> None:
    spikes, pairs, window = inputs
    ctx.window = window
    ctx.save_for_backward(spikes, pairs)


def _ccg_backward(ctx, grad: Tensor):
    spikes, pairs = ctx.saved_tensors
    return torch.ops.tdsnn.pair_ccg_backward(grad, spikes, pairs, ctx.window), None, None


_registered: list[bool] = []


def register() -> None:
    """Register the CPU implementations, fake functions and autograd formulas of the pair ops
    (once; after the compiled library has defined the schemas)."""
    if _registered:
        return
    lib = torch.library
    lib.register_kernel("tdsnn::pair_similarity", "cpu", _similarity_cpu)
    lib.register_kernel("tdsnn::pair_similarity_backward", "cpu", _similarity_backward_cpu)
    lib.register_kernel("tdsnn::pair_ccg", "cpu", _ccg_cpu)
    lib.register_kernel("tdsnn::pair_ccg_backward", "cpu", _ccg_backward_cpu)
    lib.register_fake("tdsnn::pair_similarity", _similarity_fake)
    lib.register_fake("tdsnn::pair_similarity_backward", _similarity_backward_fake)
    lib.register_fake("tdsnn::pair_ccg", _ccg_fake)
    lib.register_fake("tdsnn::pair_ccg_backward", _ccg_backward_fake)
    lib.register_autograd(
        "tdsnn::pair_similarity", _similarity_backward, setup_context=_similarity_setup
    )
    lib.register_autograd("tdsnn::pair_ccg", _ccg_backward, setup_context=_ccg_setup)
    _registered.append(True)
