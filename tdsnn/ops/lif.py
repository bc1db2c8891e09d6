"""Python layer of ``torch.ops.tdsnn.lif_forward`` / ``lif_backward``: fake functions and the
autograd formula. The kernels are compiled, for the CPU (``cuda_kernels/lif_cpu.cpp``) and for
CUDA (``lif.cu``); the PyTorch reference they are tested against is in :mod:`tdsnn.neurons`.

Imported by :func:`tdsnn.ops.load_kernels` once the compiled library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdsnn.neurons import SURROGATES, LIFParams, Surrogate

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


# ----------------------------------------------------------------------------- fake functions


def output_layout(x: Tensor) -> Tensor:
    """A tensor with the strides the kernels give their outputs for input ``x``: on the CPU,
    x's own when x is dense with time outermost (so channels-last runs without a copy), else
    contiguous; on CUDA, contiguous."""
    if x.device.type == "cpu" and time_major_dense(x):
        return x
    return x.new_empty(x.shape)


def time_major_dense(x: Tensor) -> bool:
    """Whether ``x [T, *]`` is dense and non-overlapping with the time dimension outermost
    (the test of ``lif_cpu.cpp``): its strides, inner to outer, those of a contiguous layout."""
    if x.dim() == 0:
        return False
    dims = sorted(
        (stride, size) for size, stride in zip(x.shape, x.stride(), strict=True) if size != 1
    )
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return x.shape[0] <= 1 or x.stride(0) == x.numel() // x.shape[0]


@torch.library.register_fake("tdsnn::lif_forward")
def _forward_fake(x, tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate,
                  alpha, full_membrane):  # fmt: skip
    torch._check(x.dim() >= 1, lambda: "lif_forward: x must be time-major [T, *]")
    like = output_layout(x)
    return torch.empty_like(like), torch.empty_like(
        like, dtype=membrane_dtype(x.dtype, full_membrane)
    )


@torch.library.register_fake("tdsnn::lif_backward")
def _backward_fake(grad_spikes, grad_membrane, membrane, tau, v_threshold, v_reset, soft_reset,
                   decay_input, detach_reset, surrogate, alpha, grad_dtype):  # fmt: skip
    return torch.empty_like(output_layout(membrane), dtype=grad_dtype)


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
