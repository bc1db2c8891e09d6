"""Python layer of ``torch.ops.tdsnn.lif_forward`` / ``lif_backward``: the CPU implementation
(the PyTorch reference of :mod:`tdsnn.neurons`), fake functions and the autograd formula.

Imported by :func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdsnn.neurons import (
    SURROGATES,
    LIFParams,
    Surrogate,
    get_surrogate,
    lif_backward_reference,
    lif_forward_reference,
)

__all__ = ["kernel_supports", "lif_kernel", "membrane_dtype"]

_REDUCED = (torch.float16, torch.bfloat16)


def kernel_supports(surrogate: Surrogate) -> bool:
    """Whether the kernel computes this surrogate (the built-in classes; not user subclasses)."""
    return SURROGATES.get(surrogate.name) is type(surrogate)


def membrane_dtype(x_dtype: torch.dtype, full_membrane: bool) -> torch.dtype:
    """dtype of the op's H: x's for float16/bfloat16 unless ``full_membrane``, else the state's."""
    if x_dtype in _REDUCED and not full_membrane:
        return x_dtype
    return torch.promote_types(x_dtype, torch.float32)


def _op_args(p: LIFParams) -> tuple:
    soft = p.v_reset is None
    return (
        p.tau,
        p.v_threshold,
        0.0 if soft else p.v_reset,
        soft,
        p.decay_input,
        p.detach_reset,
        p.surrogate.name,
        p.surrogate.alpha,
    )


def _params(tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha):
    return LIFParams(
        tau=tau,
        v_threshold=v_threshold,
        v_reset=None if soft_reset else v_reset,
        decay_input=decay_input,
        detach_reset=detach_reset,
        surrogate=get_surrogate(surrogate, alpha),
    )


def store_membrane(h: Tensor, spikes: Tensor, v_threshold: float, dtype: torch.dtype) -> Tensor:
    """The op's saved membrane: ``h`` itself in float32/float64; in float16/bfloat16,
    ``h - v_threshold`` (fine resolution near the threshold, where the surrogate is steep)
    rounded towards the side of 0 it was on, so that ``stored >= 0`` is the spike (what the
    CUDA kernel stores)."""
    if dtype not in _REDUCED:
        return h.to(dtype)
    above = h - v_threshold
    stored = above.to(dtype)
    fired = spikes.bool()
    wrong = (stored >= 0) != fired
    if wrong.any():
        toward = torch.where(fired, torch.inf, -torch.inf).to(dtype)
        stored = torch.where(wrong, torch.nextafter(stored, toward), stored)
    return stored


def charged_potential(membrane: Tensor, v_threshold: float) -> Tensor:
    """H in the state dtype from the op's saved membrane (undoes :func:`store_membrane`)."""
    if membrane.dtype in _REDUCED:
        return membrane.float() + v_threshold
    return membrane


# ----------------------------------------------------------------------------- CPU (reference)


@torch.library.register_kernel("tdsnn::lif_forward", "cpu")
def _forward_cpu(x, tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate,
                 alpha, full_membrane):  # fmt: skip
    p = _params(tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha)
    spikes, h = lif_forward_reference(x, p)
    return spikes, store_membrane(h, spikes, v_threshold, membrane_dtype(x.dtype, full_membrane))


@torch.library.register_kernel("tdsnn::lif_backward", "cpu")
def _backward_cpu(grad_spikes, grad_membrane, membrane, tau, v_threshold, v_reset, soft_reset,
                  decay_input, detach_reset, surrogate, alpha, grad_dtype):  # fmt: skip
    p = _params(tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate, alpha)
    h = charged_potential(membrane, v_threshold)
    return lif_backward_reference(grad_spikes, grad_membrane, h, p, grad_dtype)


# ----------------------------------------------------------------------------- fake functions


@torch.library.register_fake("tdsnn::lif_forward")
def _forward_fake(x, tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate,
                  alpha, full_membrane):  # fmt: skip
    torch._check(x.dim() >= 1, lambda: "lif_forward: x must be time-major [T, *]")
    return torch.empty_like(x), x.new_empty(x.shape, dtype=membrane_dtype(x.dtype, full_membrane))


@torch.library.register_fake("tdsnn::lif_backward")
def _backward_fake(grad_spikes, grad_membrane, membrane, tau, v_threshold, v_reset, soft_reset,
                   decay_input, detach_reset, surrogate, alpha, grad_dtype):  # fmt: skip
    return membrane.new_empty(membrane.shape, dtype=grad_dtype)


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output) -> None:
    x, *args, full_membrane = inputs
    ctx.args = tuple(args)
    ctx.full_membrane = full_membrane
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_spikes: Tensor | None, grad_membrane: Tensor | None):
    (membrane,) = ctx.saved_tensors
    grad_x = torch.ops.tdsnn.lif_backward(
        grad_spikes,
        grad_membrane if ctx.full_membrane else None,
        membrane,
        *ctx.args,
        ctx.x_dtype,
    )
    return (grad_x,) + (None,) * 9


torch.library.register_autograd("tdsnn::lif_forward", _backward, setup_context=_setup_context)


def lif_kernel(x: Tensor, p: LIFParams, keep_membrane: bool) -> tuple[Tensor, Tensor | None]:
    """Run ``torch.ops.tdsnn.lif_forward``: (spikes ``[T, *]``, H ``[T, *]`` or None).

    H is float32 (float64 for float64 x) when ``keep_membrane``; otherwise the op saves
    H - V_th in x's precision for the backward (float16/bfloat16) and returns nothing.
    """
    spikes, membrane = torch.ops.tdsnn.lif_forward(x, *_op_args(p), keep_membrane)
    return spikes, (membrane if keep_membrane else None)
