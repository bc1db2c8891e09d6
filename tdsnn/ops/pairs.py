"""Python layer of ``torch.ops.tdsnn.pair_similarity`` and ``pair_ccg``: CPU implementations
(the PyTorch reference of :mod:`tdsnn.topo.similarity`), fake functions and autograd formulas.

Imported by :func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdsnn.topo.similarity import ccg_smooth, pair_chunk, pair_dot_backward, pair_dot_forward

__all__ = ["raw_ccg_reference", "raw_ccg_backward_reference"]


def _rows(spikes: Tensor) -> tuple[Tensor, int]:
    """``[T, B, N]`` -> float rows ``[N, T·B]`` (float64 stays float64) and N."""
    dtype = torch.float64 if spikes.dtype == torch.float64 else torch.float32
    n = spikes.shape[-1]
    return spikes.to(dtype).reshape(-1, n).t(), n


def raw_ccg_reference(spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    """Unnormalised CCG of each pair from ``spikes [T, B, N]``: ``[P]``.

    ``CCG(i, j) = Σ_{b,t} S_i^b(t)·U_j^b(t)`` with ``U`` the lag-smoothed trains of
    :func:`~tdsnn.topo.similarity.ccg_smooth`.
    """
    s, n = _rows(spikes)
    u, _ = _rows(ccg_smooth(spikes.to(s.dtype), window))
    return pair_dot_forward(s, u, pairs, pair_chunk(s.shape[1]))


def raw_ccg_backward_reference(grad: Tensor, spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    """Gradient of :func:`raw_ccg_reference` for ``spikes``: ``[T, B, N]`` in their dtype.

    The smoothing ``S -> U`` is linear and symmetric, so the share through ``U`` is the
    smoothed gradient of the ``U`` rows.
    """
    s, n = _rows(spikes)
    u, _ = _rows(ccg_smooth(spikes.to(s.dtype), window))
    gs, gu = pair_dot_backward(grad.to(s.dtype), s, u, pairs, pair_chunk(s.shape[1]))
    shape = spikes.shape
    through_u = ccg_smooth(gu.t().reshape(shape), window)
    return (gs.t().reshape(shape) + through_u).to(spikes.dtype)


# ----------------------------------------------------------------------------- CPU (reference)


@torch.library.register_kernel("tdsnn::pair_similarity", "cpu")
def _similarity_cpu(x: Tensor, y: Tensor, pairs: Tensor) -> Tensor:
    return pair_dot_forward(x.contiguous(), y.contiguous(), pairs, pair_chunk(x.shape[1]))


@torch.library.register_kernel("tdsnn::pair_similarity_backward", "cpu")
def _similarity_backward_cpu(grad: Tensor, x: Tensor, y: Tensor, pairs: Tensor):
    return pair_dot_backward(grad.to(x.dtype), x, y, pairs, pair_chunk(x.shape[1]))


@torch.library.register_kernel("tdsnn::pair_ccg", "cpu")
def _ccg_cpu(spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_reference(spikes, pairs, window)


@torch.library.register_kernel("tdsnn::pair_ccg_backward", "cpu")
def _ccg_backward_cpu(grad: Tensor, spikes: Tensor, pairs: Tensor, window: int) -> Tensor:
    return raw_ccg_backward_reference(grad, spikes, pairs, window)


# ----------------------------------------------------------------------------- fake functions


@torch.library.register_fake("tdsnn::pair_similarity")
def _similarity_fake(x, y, pairs):
    return x.new_empty(pairs.shape[0])


@torch.library.register_fake("tdsnn::pair_similarity_backward")
def _similarity_backward_fake(grad, x, y, pairs):
    return torch.empty_like(x), torch.empty_like(y)


def _ccg_dtype(spikes: Tensor) -> torch.dtype:
    return torch.float64 if spikes.dtype == torch.float64 else torch.float32


@torch.library.register_fake("tdsnn::pair_ccg")
def _ccg_fake(spikes, pairs, window):
    return spikes.new_empty(pairs.shape[0], dtype=_ccg_dtype(spikes))


@torch.library.register_fake("tdsnn::pair_ccg_backward")
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


torch.library.register_autograd(
    "tdsnn::pair_similarity", _similarity_backward, setup_context=_similarity_setup
)
torch.library.register_autograd("tdsnn::pair_ccg", _ccg_backward, setup_context=_ccg_setup)
