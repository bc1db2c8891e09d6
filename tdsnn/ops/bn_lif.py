"""Fused batch-norm apply (+ residual shortcut) + multi-step LIF: ``torch.ops.tdsnn.bn_lif_forward``
/ ``bn_lif_backward``, their fake functions and autograd formula, the batch statistics the
caller passes in, the PyTorch composition that is their reference, and the one dispatch point.

For a convolution's output ``y [T, B, C, *]`` (channel dimension 2) and a ``BatchNorm2d``::

    z[t] = (y[t] - mean[c]) · invstd[c] · weight[c] + bias[c]  (+ shortcut[t])
    spikes, H = LIF(z)                     (the equations of tdsnn.neurons, from rest)

``mean``/``invstd`` are y's batch statistics over the T·B·H·W elements of each channel in
training (biased variance; the running estimates are updated as ``BatchNorm2d`` does, with
momentum and the unbiased variance), else the running estimates. The kernels (CPU:
``cuda_kernels/bn_lif_cpu.cpp``, CUDA: ``bn_lif.cu``) write spikes in one pass over ``y``; the
backward keeps only ``y`` (and the shortcut), recomputes z and H from them, and returns the
gradients of y (with the batch-norm term through the batch statistics in training:
``scale·(g - mean(g) - x_hat·mean(g·x_hat))``, g = dL/dz, x_hat the normalised y), of weight
and bias (``Σ g·x_hat`` and ``Σ g``) and of the shortcut (g).

Layout: on both devices a ``y`` whose steps are channels-last (or any dense layout with time
outermost) runs without a copy, the channel of each element taken from y's strides; the
outputs take y's strides and the shortcut and incoming gradients are brought to them (the fake
functions say the same, through :func:`tdsnn.ops.lif.output_layout`); other layouts are copied
to contiguous ones first.

Importable without the compiled library (the area stack calls :func:`bn_lif`);
:func:`tdsnn.ops.load_kernels` calls :func:`register` once the library has defined the schemas.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tdsnn import ops
from tdsnn.ops.lif import LIFParams, kernel_supports, lif_op_args

__all__ = [
    "batch_statistics",
    "bn_lif",
    "bn_lif_kernel",
    "fusable",
    "register",
]

_CHANNEL = 2  # y [T, B, C, *]


def _param_dtype(y_dtype: torch.dtype) -> torch.dtype:
    """dtype of the per-channel parameters for ``y``: float64 for float64, else float32."""
    return torch.float64 if y_dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- statistics


def batch_statistics(y: Tensor, bn: _BatchNorm) -> tuple[Tensor, Tensor, bool]:
    """``(mean [C], invstd [C], training)`` that ``bn`` normalises ``y [T, B, C, *]`` with, as
    :class:`torch.nn.BatchNorm2d` on ``y`` flattened to ``[T·B, C, *]`` would.

    In training (or without running estimates) the batch statistics over every dimension but
    the channel (biased variance), and, in training with ``track_running_stats``, the running
    estimates updated in place as BatchNorm2d does (momentum, or the cumulative average when it
    is None; unbiased variance; ``num_batches_tracked`` + 1). Else the running estimates.
    ``training`` says which, and whether the backward differentiates through the statistics.
    No autograd graph; float32 (float64 for float64 y).
    """
    dtype = _param_dtype(y.dtype)
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    with torch.no_grad():
        if not training:
            # a copy: the op saves it, and the buffer changes in place in the next training step
            mean = bn.running_mean.to(dtype, copy=True)
            return mean, torch.rsqrt(bn.running_var.to(dtype) + bn.eps), False
        count = y.numel() // max(y.shape[_CHANNEL], 1)
        if count <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{list(y.flatten(0, 1).shape)}"
            )
        if y.device.type == "cpu" and ops.loaded(cuda=False):
            mean, var = torch.ops.tdsnn.bn_lif_stats(y)  # one pass, float64 sums
        else:
            dims = [d for d in range(y.dim()) if d != _CHANNEL]
            var, mean = torch.var_mean(y.to(dtype), dim=dims, correction=0)
        if bn.training and bn.track_running_stats:
            _update_running_stats(bn, mean, var, count)
        return mean, torch.rsqrt(var + bn.eps), True


def _update_running_stats(bn: _BatchNorm, mean: Tensor, var: Tensor, count: int) -> None:
    """BatchNorm's running-estimate update from batch ``mean``/``var`` [C] over ``count``."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    if bn.running_mean is not None:
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    if bn.running_var is not None:
        unbiased = var * (count / (count - 1))
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


# ----------------------------------------------------------------------------- registration


def _forward_fake(y, mean, invstd, weight, bias, shortcut, training, tau, v_threshold, v_reset,
                  soft_reset, decay_input, detach_reset, surrogate, alpha,
                  full_membrane):  # fmt: skip
    from tdsnn.ops.lif import output_layout

    torch._check(y.dim() >= 3, lambda: "bn_lif_forward: y must be [T, B, C, *]")
    like = output_layout(y)
    dtype = _param_dtype(y.dtype)
    membrane = torch.empty_like(like, dtype=dtype) if full_membrane else y.new_empty(0, dtype=dtype)
    return torch.empty_like(like), membrane


def _backward_fake(grad_spikes, grad_membrane, y, mean, invstd, weight, bias, shortcut, training,
                   tau, v_threshold, v_reset, soft_reset, decay_input, detach_reset, surrogate,
                   alpha):  # fmt: skip
    from tdsnn.ops.lif import output_layout

    like = output_layout(y)
    dtype = _param_dtype(y.dtype)
    grad_shortcut = torch.empty_like(like) if shortcut is not None else y.new_empty(0)
    channels = y.shape[_CHANNEL]
    return (
        torch.empty_like(like),
        y.new_empty(channels, dtype=dtype),
        y.new_empty(channels, dtype=dtype),
        grad_shortcut,
    )


def _stats_fake(y):
    dtype = _param_dtype(y.dtype)
    channels = y.shape[_CHANNEL]
    return y.new_empty(channels, dtype=dtype), y.new_empty(channels, dtype=dtype)


def _setup_context(ctx, inputs, output) -> None:
    y, mean, invstd, weight, bias, shortcut, training, *lif_args, full_membrane = inputs
    ctx.training = training
    ctx.lif_args = tuple(lif_args)
    ctx.full_membrane = full_membrane
    ctx.save_for_backward(y, mean, invstd, weight, bias, shortcut)


def _backward(ctx, grad_spikes: Tensor | None, grad_membrane: Tensor | None):
    """Gradients of y, weight, bias and shortcut; mean and invstd get none (in training the op
    differentiates through them as y's batch statistics; else they are constants)."""
    y, mean, invstd, weight, bias, shortcut = ctx.saved_tensors
    grad_y, grad_weight, grad_bias, grad_shortcut = torch.ops.tdsnn.bn_lif_backward(
        grad_spikes,
        grad_membrane if ctx.full_membrane else None,
        y,
        mean,
        invstd,
        weight,
        bias,
        shortcut,
        ctx.training,
        *ctx.lif_args,
    )
    needs = ctx.needs_input_grad
    return (
        grad_y if needs[0] else None,
        None,
        None,
        grad_weight if weight is not None and needs[3] else None,
        grad_bias if bias is not None and needs[4] else None,
        grad_shortcut if shortcut is not None and needs[5] else None,
    ) + (None,) * 10


def register() -> None:
    """Register the fake functions and the autograd formula (after the schemas exist; called
    once, by :func:`tdsnn.ops.load_kernels`)."""
    torch.library.register_fake("tdsnn::bn_lif_forward", _forward_fake)
    torch.library.register_fake("tdsnn::bn_lif_backward", _backward_fake)
    torch.library.register_fake("tdsnn::bn_lif_stats", _stats_fake)
    torch.library.register_autograd(
        "tdsnn::bn_lif_forward", _backward, setup_context=_setup_context
    )


# ----------------------------------------------------------------------------- dispatch


def bn_lif_kernel(
    y: Tensor,
    bn: _BatchNorm,
    units: nn.Module,
    shortcut: Tensor | None,
    keep_membrane: bool,
) -> tuple[Tensor, Tensor | None]:
    """Run ``torch.ops.tdsnn.bn_lif_forward`` on ``y [T, B, C, *]``: (spikes, H or None)."""
    mean, invstd, training = batch_statistics(y, bn)
    dtype = mean.dtype
    weight = None if bn.weight is None else bn.weight.to(dtype)
    bias = None if bn.bias is None else bn.bias.to(dtype)
    if shortcut is not None and shortcut.dtype != y.dtype:
        shortcut = shortcut.to(y.dtype)  # e.g. float spikes beside a bfloat16 convolution
    spikes, membrane = torch.ops.tdsnn.bn_lif_forward(
        y, mean, invstd, weight, bias, shortcut, training, *lif_op_args(units.params), keep_membrane
    )
    return spikes, (membrane if keep_membrane else None)


def fusable(y: Tensor, bn: nn.Module, units: nn.Module) -> bool:
    """Whether the fused op can stand for :func:`bn_lif`'s composition here: LIF units with a
    built-in surrogate, a batch norm, a floating-point ``y [T, B, C, *]``, and the compiled
    op for y's device under the ``TDSNN_KERNELS`` policy."""
    params = getattr(units, "params", None)
    if not (
        isinstance(bn, _BatchNorm)
        and isinstance(params, LIFParams)
        and y.is_floating_point()
        and y.dim() >= 3
        and ops.use_kernels(y, "bn_lif")  # builds and registers the ops on first use
    ):
        return False
    return kernel_supports(params.surrogate)


def bn_lif(
    y: Tensor,
    bn: _BatchNorm,
    units: nn.Module,
    shortcut: Tensor | None = None,
    return_membrane: bool = False,
    *,
    reference: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``units(bn(y) + shortcut)`` for a convolution's output ``y [T, B, C, *]``: spikes
    ``[T, B, C, *]`` (and H, float32, with ``return_membrane``).

    The one dispatch point: the fused op where :func:`fusable` says so, else the composition
    (batch norm over ``y`` flattened to ``[T·B, C, *]``, then ``units``: ReLU units, user-defined
    surrogates, ``TDSNN_KERNELS=reference``, or ``reference=True``, the oracle the fused op is
    tested against). ``bn``'s running estimates are updated in training either way.
    """
    if reference or not fusable(y, bn, units):
        t, b = y.shape[:2]
        z = bn(y.flatten(0, 1)).unflatten(0, (t, b))
        if shortcut is not None:
            z = z + shortcut
        return units(z, return_membrane=return_membrane)
    spikes, membrane = bn_lif_kernel(y, bn, units, shortcut, return_membrane)
    return (spikes, membrane) if return_membrane else spikes
